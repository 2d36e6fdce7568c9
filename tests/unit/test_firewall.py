"""The firewall: DOCKER-USER for published ports, INPUT (iptables and ip6tables) for the ports
of services on the node's own network; the rules planned for given settings, idempotence
read from `iptables -S`, FIREWALL_ALLOW validation, and (as root) the real thing in a
throwaway network namespace, never in the machine's own rules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from infra import catalog, firewall
from infra.catalog import CORE_PORTS, ENVIRONMENTS
from infra.errors import SettingsError
from infra.settings import REPO_ROOT, load_settings
from tests.as_another_user import readable_copy

DOCKER_ONLY = "-P INPUT ACCEPT\n-P FORWARD DROP\n-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n"
ESTABLISHED = "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"


def _drop(port: int) -> str:
    return f"-p tcp -m conntrack --ctstate DNAT --ctorigdstport {port} --ctdir ORIGINAL -j DROP"


NODE_EXPORTER = "-p tcp -m tcp --dport 9100 -j DROP"
INPUT_RULES = [ESTABLISHED, "-i lo -j RETURN", "-i docker+ -j RETURN", "-i br-+ -j RETURN"]


def _settings(environ, **values):
    return load_settings(REPO_ROOT, {**environ, **values})


def _lines(commands) -> list[str]:
    return [" ".join(command) for command in commands]


def test_rules_for_the_default_settings_are_exact(environ):
    plan = firewall.plan(_settings(environ), DOCKER_ONLY)
    assert _lines(plan.commands()) == [
        "iptables -w -N NEXTCANDLE",
        "iptables -w -F NEXTCANDLE",
        f"iptables -w -A NEXTCANDLE {ESTABLISHED}",
        "iptables -w -A NEXTCANDLE -i docker+ -j RETURN",
        "iptables -w -A NEXTCANDLE -i br-+ -j RETURN",
        f"iptables -w -A NEXTCANDLE {_drop(80)}",
        f"iptables -w -A NEXTCANDLE {_drop(443)}",
        f"iptables -w -A NEXTCANDLE {_drop(5432)}",
        f"iptables -w -A NEXTCANDLE {_drop(6379)}",
        f"iptables -w -A NEXTCANDLE {_drop(8080)}",
        "iptables -w -I DOCKER-USER 1 -j NEXTCANDLE",
        "iptables -w -N NEXTCANDLE-INPUT",
        "iptables -w -F NEXTCANDLE-INPUT",
        *(f"iptables -w -A NEXTCANDLE-INPUT {rule}" for rule in INPUT_RULES),
        f"iptables -w -A NEXTCANDLE-INPUT {NODE_EXPORTER}",
        "iptables -w -I INPUT 1 -j NEXTCANDLE-INPUT",
    ]


def test_the_host_network_port_comes_from_the_one_port_table(environ, monkeypatch):
    monkeypatch.setitem(catalog.HOST_NETWORK_PORTS, "node-exporter", 9200)
    rules = [" ".join(rule) for rule in firewall.input_rules(_settings(environ))]
    assert rules[-1] == "-p tcp -m tcp --dport 9200 -j DROP"
    assert catalog.port_variables()["NODE_EXPORTER_PORT"] == "9200"


def test_input_rules_allow_the_node_its_containers_and_allowed_networks_only(environ):
    settings = _settings(environ, FIREWALL_ALLOW="10.0.0.0/8,192.0.2.7")
    ipv4 = [" ".join(rule) for rule in firewall.input_rules(settings)]
    ipv6 = [" ".join(rule) for rule in firewall.input_rules(settings, ipv6=True)]
    allowed = ["-s 10.0.0.0/8 -j RETURN", "-s 192.0.2.7/32 -j RETURN"]
    assert ipv4 == [*INPUT_RULES, *allowed, NODE_EXPORTER]
    assert ipv6 == [*INPUT_RULES, NODE_EXPORTER]  # FIREWALL_ALLOW holds IPv4 networks only


def test_the_ipv6_chain_is_planned_when_ip6tables_was_read(environ):
    ip6 = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
    commands = _lines(
        firewall.plan(_settings(environ), {"iptables": DOCKER_ONLY, "ip6tables": ip6}).commands()
    )
    assert [c for c in commands if c.startswith("ip6tables")] == [
        "ip6tables -w -N NEXTCANDLE-INPUT",
        "ip6tables -w -F NEXTCANDLE-INPUT",
        *(f"ip6tables -w -A NEXTCANDLE-INPUT {rule}" for rule in INPUT_RULES),
        f"ip6tables -w -A NEXTCANDLE-INPUT {NODE_EXPORTER}",
        "ip6tables -w -I INPUT 1 -j NEXTCANDLE-INPUT",
    ]


def test_allowed_networks_return_before_the_drops(environ):
    settings = _settings(environ, FIREWALL_ALLOW="10.0.0.0/8, 192.0.2.7,10.0.0.0/8")
    rules = [" ".join(rule) for rule in firewall.chain_rules(settings)]
    assert rules[3:5] == ["-s 10.0.0.0/8 -j RETURN", "-s 192.0.2.7/32 -j RETURN"]
    assert all(rule.endswith("-j DROP") for rule in rules[5:])


@pytest.mark.parametrize(
    ("values", "ports"),
    [
        ({}, {80, 443, 8080, 5432, 6379}),
        ({"DEV_HOST_PORTS": "off"}, {80, 443, 8080}),
        ({"STG_HOST_PORTS": "on"}, {80, 443, 8080, 5432, 6379, 5433}),
        (
            {e.host_ports_variable: "on" for e in ENVIRONMENTS.values()},
            {80, 443, 8080, 5432, 6379, 5433, 5434, 6381},
        ),
    ],
    ids=["defaults", "dev-off", "stg-on", "all-on"],
)
def test_protected_ports_are_the_published_ones(environ, values, ports):
    protected = firewall.protected_ports(_settings(environ, **values))
    assert {p.port for p in protected} == ports
    assert set(CORE_PORTS.values()) <= ports


def test_plan_without_the_current_rules_marks_the_conditional_steps(environ):
    plan = firewall.plan(_settings(environ))
    conditional = {" ".join(s.command): s.only_if for s in plan.steps if s.only_if}
    assert conditional == {
        "iptables -w -N NEXTCANDLE": "the chain is missing",
        "iptables -w -I DOCKER-USER 1 -j NEXTCANDLE": "DOCKER-USER does not jump to NEXTCANDLE yet",
        "iptables -w -N NEXTCANDLE-INPUT": "NEXTCANDLE-INPUT is missing",
        "iptables -w -I INPUT 1 -j NEXTCANDLE-INPUT": "INPUT does not jump to NEXTCANDLE-INPUT yet",
        "ip6tables -w -N NEXTCANDLE-INPUT": "ip6tables: NEXTCANDLE-INPUT is missing",
        "ip6tables -w -I INPUT 1 -j NEXTCANDLE-INPUT": (
            "ip6tables: INPUT does not jump to NEXTCANDLE-INPUT yet"
        ),
    }
    text = firewall.format_plan(plan)
    assert "# only if the chain is missing:\niptables -w -N NEXTCANDLE\n" in text
    assert "# 9100 (shared node-exporter). With several swarm nodes," in text


def _applied(settings, extra: str = "") -> str:
    """`iptables -S` as it reads after our rules were applied (and other rules, `extra`)."""
    rules = "".join(f"-A NEXTCANDLE {' '.join(rule)}\n" for rule in firewall.chain_rules(settings))
    inputs = "".join(
        f"-A NEXTCANDLE-INPUT {' '.join(rule)}\n" for rule in firewall.input_rules(settings)
    )
    return (
        "-P INPUT ACCEPT\n-P FORWARD DROP\n-N DOCKER-USER\n-N NEXTCANDLE\n-N NEXTCANDLE-INPUT\n"
        "-A INPUT -j NEXTCANDLE-INPUT\n"
        f"-A DOCKER-USER -j NEXTCANDLE\n{extra}-A DOCKER-USER -j RETURN\n{rules}{inputs}"
    )


def test_applied_rules_verify_and_a_second_plan_keeps_the_jump(environ):
    settings = _settings(environ)
    current = _applied(settings, extra="-A DOCKER-USER -s 203.0.113.9/32 -j DROP\n")
    assert firewall.verify(settings, current) == []
    commands = _lines(firewall.plan(settings, current).commands())
    assert "iptables -w -N NEXTCANDLE" not in commands
    assert not [c for c in commands if "DOCKER-USER" in c]
    assert commands[0] == "iptables -w -F NEXTCANDLE"


def test_state_lists_in_another_order_still_verify(environ):
    settings = _settings(environ)
    current = _applied(settings).replace("RELATED,ESTABLISHED", "ESTABLISHED,RELATED")
    assert firewall.verify(settings, current) == []


def test_changed_settings_do_not_verify(environ):
    before = _applied(_settings(environ))
    after = _settings(environ, FIREWALL_ALLOW="10.0.0.0/8")
    assert firewall.verify(after, before) == [
        "NEXTCANDLE holds 8 rules, not the 9 planned",
        "NEXTCANDLE-INPUT holds 5 rules, not the 6 planned",
    ]


def test_a_missing_input_chain_is_planned_and_reported(environ):
    settings = _settings(environ)
    current = "\n".join(
        line for line in _applied(settings).splitlines() if "NEXTCANDLE-INPUT" not in line
    )
    assert firewall.verify(settings, current) == [
        "chain NEXTCANDLE-INPUT is missing",
        "INPUT does not jump to NEXTCANDLE-INPUT",
    ]
    commands = _lines(firewall.plan(settings, current).commands())
    assert commands[0] == "iptables -w -F NEXTCANDLE"
    start = commands.index("iptables -w -N NEXTCANDLE-INPUT")
    assert commands[start:] == [
        "iptables -w -N NEXTCANDLE-INPUT",
        "iptables -w -F NEXTCANDLE-INPUT",
        *(f"iptables -w -A NEXTCANDLE-INPUT {rule}" for rule in INPUT_RULES),
        f"iptables -w -A NEXTCANDLE-INPUT {NODE_EXPORTER}",
        "iptables -w -I INPUT 1 -j NEXTCANDLE-INPUT",
    ]


def test_a_missing_jump_is_planned_and_reported(environ):
    settings = _settings(environ)
    current = _applied(settings).replace("-A DOCKER-USER -j NEXTCANDLE\n", "")
    assert firewall.verify(settings, current) == ["DOCKER-USER does not jump to NEXTCANDLE"]
    commands = _lines(firewall.plan(settings, current).commands())
    assert [c for c in commands if "DOCKER-USER" in c] == [
        "iptables -w -I DOCKER-USER 1 -j NEXTCANDLE"
    ]
    assert "iptables -w -N NEXTCANDLE" not in commands
    assert not [c for c in commands if c.startswith("iptables -w -I INPUT")]


def test_state_parsing_ignores_rules_that_only_mention_the_chain():
    text = (
        DOCKER_ONLY + "-N NEXTCANDLE\n-A DOCKER-USER -j NEXTCANDLE\n"
        "-A DOCKER-USER -i eth1 -j NEXTCANDLE\n-A NEXTCANDLE-OLD -j RETURN\n"
    )
    state = firewall.ChainState.parse(text)
    assert (state.parent_exists, state.chain_exists, state.jumps, state.rules) == (
        True,
        True,
        1,
        (),
    )


def test_removal_takes_out_every_jump_then_the_chain(environ):
    current = _applied(_settings(environ)) + "-A DOCKER-USER -j NEXTCANDLE\n"
    assert _lines(firewall.removal(current)) == [
        "iptables -w -D DOCKER-USER -j NEXTCANDLE",
        "iptables -w -D DOCKER-USER -j NEXTCANDLE",
        "iptables -w -F NEXTCANDLE",
        "iptables -w -X NEXTCANDLE",
        "iptables -w -D INPUT -j NEXTCANDLE-INPUT",
        "iptables -w -F NEXTCANDLE-INPUT",
        "iptables -w -X NEXTCANDLE-INPUT",
    ]
    assert firewall.removal(DOCKER_ONLY) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.1/8", "FIREWALL_ALLOW has '10.0.0.1/8', which has host bits set. "
         "Did you mean 10.0.0.0/8?"),
        ("office", "FIREWALL_ALLOW has 'office', which is not a network. Write networks like "
         "10.0.0.0/8 or addresses like 192.0.2.7, separated by commas."),
        ("10.0.0.0/33", "FIREWALL_ALLOW has '10.0.0.0/33', which is not a network. Write "
         "networks like 10.0.0.0/8 or addresses like 192.0.2.7, separated by commas."),
        ("2001:db8::/32", "FIREWALL_ALLOW has '2001:db8::/32', an IPv6 network: the firewall "
         "filters IPv4 only (see README, Host ports and the firewall). Remove it."),
    ],
    ids=["host-bits", "word", "prefix-too-long", "ipv6"],
)  # fmt: skip
def test_firewall_allow_is_validated_with_a_message_that_says_how_to_fix_it(
    environ, value, message
):
    with pytest.raises(SettingsError) as error:
        load_settings(REPO_ROOT, {**environ, "FIREWALL_ALLOW": f"192.0.2.0/24,{value}"})
    assert str(error.value) == message


def test_firewall_allow_names_the_env_file_it_came_from(environ):
    with open(environ["ENV_FILE"], "w", encoding="utf-8") as env_file:
        env_file.write("FIREWALL_ALLOW=10.0.0.1/8\n")
    with pytest.raises(SettingsError, match=f"in {environ['ENV_FILE']} or the environment"):
        load_settings(REPO_ROOT, environ)


# The real thing, as root, in network namespaces of its own (`unshare --net`): the machine's
# own DOCKER-USER chain, used by its Docker engine, is never touched.

NETNS_TOOLS = ("unshare", "nsenter", "iptables", "ip")
needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(tool) is None for tool in NETNS_TOOLS),
    reason=f"needs root and {', '.join(NETNS_TOOLS)} to use a throwaway network namespace",
)
INVOKE = f"{sys.executable} -m invoke --search-root {REPO_ROOT}"


def in_netns(script: str, environ: dict[str, str]) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], **environ}
    return subprocess.run(
        ["unshare", "--net", "bash", "-euo", "pipefail", "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


# Two network namespaces, $CTR (a container) and $REMOTE (another machine), ready for veths.
TWO_NAMESPACES = """unshare --net sleep 100 & CTR=$!
        unshare --net sleep 100 & REMOTE=$!
        for pid in $CTR $REMOTE; do
            while [ "$(readlink /proc/$pid/ns/net)" = "$(readlink /proc/$$/ns/net)" ]; do
                sleep 0.05
            done
        done"""


@needs_netns
def test_apply_twice_in_a_fresh_namespace_adds_one_jump_and_leaves_other_rules(environ):
    result = in_netns(
        f"""
        iptables -N DOCKER-USER
        iptables -A DOCKER-USER -s 203.0.113.9/32 -j DROP
        iptables -A DOCKER-USER -j RETURN
        {INVOKE} firewall.apply
        echo "--- second"
        {INVOKE} firewall.apply
        echo "--- rules"
        iptables -S
        echo "--- ip6"
        ip6tables -S
        """,
        {**environ, "FIREWALL_ALLOW": "10.0.0.0/8"},
    )
    assert result.returncode == 0, result.stderr
    first, rest = result.stdout.split("--- second\n")
    second, rest = rest.split("--- rules\n")
    rules, ip6 = rest.split("--- ip6\n")
    # 12 in DOCKER-USER's chain, 9 in INPUT's, 8 in ip6tables' INPUT's (no FIREWALL_ALLOW).
    assert "firewall: applied (29 iptables commands)" in first
    assert second == "firewall: NEXTCANDLE and NEXTCANDLE-INPUT are up to date, nothing changed\n"
    assert [line for line in rules.splitlines() if "NEXTCANDLE-INPUT" in line] == [
        "-N NEXTCANDLE-INPUT",
        "-A INPUT -j NEXTCANDLE-INPUT",
        *(f"-A NEXTCANDLE-INPUT {rule}" for rule in INPUT_RULES),
        "-A NEXTCANDLE-INPUT -s 10.0.0.0/8 -j RETURN",
        f"-A NEXTCANDLE-INPUT {NODE_EXPORTER}",
    ]
    assert [line for line in ip6.splitlines() if "NEXTCANDLE" in line] == [
        "-N NEXTCANDLE-INPUT",
        "-A INPUT -j NEXTCANDLE-INPUT",
        *(f"-A NEXTCANDLE-INPUT {rule}" for rule in INPUT_RULES),
        f"-A NEXTCANDLE-INPUT {NODE_EXPORTER}",
    ]
    docker_user = [line for line in rules.splitlines() if line.startswith("-A DOCKER-USER")]
    assert docker_user == [
        "-A DOCKER-USER -j NEXTCANDLE",
        "-A DOCKER-USER -s 203.0.113.9/32 -j DROP",
        "-A DOCKER-USER -j RETURN",
    ]
    ours = [line for line in rules.splitlines() if line.startswith("-A NEXTCANDLE ")]
    assert ours == [
        f"-A NEXTCANDLE {ESTABLISHED}",
        "-A NEXTCANDLE -i docker+ -j RETURN",
        "-A NEXTCANDLE -i br-+ -j RETURN",
        "-A NEXTCANDLE -s 10.0.0.0/8 -j RETURN",
        *(f"-A NEXTCANDLE {_drop(port)}" for port in (80, 443, 5432, 6379, 8080)),
    ]


@needs_netns
def test_changed_settings_refill_the_chain_and_remove_restores_docker_user(environ):
    result = in_netns(
        f"""
        iptables -N DOCKER-USER
        iptables -A DOCKER-USER -j RETURN
        {INVOKE} firewall.apply
        FIREWALL_ALLOW=192.0.2.0/24 PROD_HOST_PORTS=on {INVOKE} firewall.apply
        echo "--- changed"
        iptables -S
        {INVOKE} firewall.remove
        echo "--- removed"
        iptables -S
        echo "--- removed6"
        ip6tables -S
        """,
        environ,
    )
    assert result.returncode == 0, result.stderr
    changed, removed = result.stdout.split("--- changed\n")[1].split("--- removed\n")
    removed, removed6 = removed.split("--- removed6\n")
    assert changed.count("-A DOCKER-USER -j NEXTCANDLE") == 1
    assert changed.count("-A INPUT -j NEXTCANDLE-INPUT") == 1
    assert "-A NEXTCANDLE-INPUT -s 192.0.2.0/24 -j RETURN" in changed
    assert removed6.splitlines() == ["-P INPUT ACCEPT", "-P FORWARD ACCEPT", "-P OUTPUT ACCEPT"]
    assert "-A NEXTCANDLE -s 192.0.2.0/24 -j RETURN" in changed
    assert f"-A NEXTCANDLE {_drop(5434)}" in changed
    assert removed.splitlines() == [
        "-P INPUT ACCEPT",
        "-P FORWARD ACCEPT",
        "-P OUTPUT ACCEPT",
        "-N DOCKER-USER",
        "-A DOCKER-USER -j RETURN",
    ]


@needs_netns
def test_apply_without_docker_user_is_one_line_and_changes_nothing(environ):
    result = in_netns(f"{INVOKE} firewall.apply || echo rc=$?; iptables -S", environ)
    assert result.stderr.strip() == (
        "error: there is no DOCKER-USER chain: Docker is not running on this machine, or runs "
        "with iptables disabled. Start Docker (it creates the chain) and retry."
    )
    assert "rc=1" in result.stdout
    assert "NEXTCANDLE" not in result.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the task as an unprivileged user",
)
def test_apply_as_an_ordinary_user_is_one_line():
    # Neither pytest's tmp_path nor, maybe, this checkout and its venv (root's home is 0700)
    # can be read by the user: the task runs from a copy it can read, in a home it can enter.
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        copy = readable_copy(Path(scratch))
        home = Path(scratch) / "home"
        home.mkdir(mode=0o777)  # noqa: S103 - the unprivileged user writes nothing, may cd
        result = subprocess.run(
            copy.invoke("firewall.apply"),
            env={"PATH": os.environ["PATH"], "HOME": str(home), "ENV_FILE": f"{home}/env",
                 **copy.environ},
            capture_output=True, text=True, check=False, cwd=home,
        )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.strip() == (
        "error: changing iptables rules needs root. Run it as root (sudo), or see the rules "
        "with `invoke firewall.plan`."
    )


# Packets, not just rules: a node namespace forwards a published port to a "container"
# namespace the way Docker does (DNAT in nat PREROUTING, FORWARD jumps to DOCKER-USER), and a
# "remote" namespace with two addresses connects to it, one allowed and one not.
PROBE = """
import socket, sys
source, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.bind((source, 0))
s.settimeout(3)
try:
    s.connect((host, port))
    print(f"{source}->{host}:{port} " + s.recv(2).decode())
except OSError as exc:
    print(f"{source}->{host}:{port} blocked ({exc.__class__.__name__})")
"""
SERVE = """
import socket, sys
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
while True:
    conn, _ = s.accept()
    conn.sendall(b"ok")
    conn.close()
"""


@needs_netns
def test_only_allowed_sources_reach_a_published_port_and_containers_still_go_out(environ):
    python = sys.executable
    result = in_netns(
        f"""
        cleanup() {{ kill $CTR $REMOTE 2>/dev/null || true; }}
        trap cleanup EXIT
        ip link set lo up
        sysctl -qw net.ipv4.ip_forward=1
        {TWO_NAMESPACES}
        # ctr0 is deliberately not named like a Docker bridge: only --ctstate DNAT keeps the
        # container's own outgoing connection to port 443 from matching the port 443 rule.
        ip link add ctr0 type veth peer name eth0 netns $CTR
        ip link add ext0 type veth peer name eth0 netns $REMOTE
        ip addr add 172.31.0.1/24 dev ctr0 && ip link set ctr0 up
        ip addr add 10.9.0.1/24 dev ext0 && ip link set ext0 up
        nsenter -t $CTR -n sh -ec 'ip link set lo up; ip addr add 172.31.0.2/24 dev eth0
            ip link set eth0 up; ip route add default via 172.31.0.1'
        nsenter -t $REMOTE -n sh -ec 'ip link set lo up; ip link set eth0 up
            ip addr add 10.9.0.2/24 dev eth0; ip addr add 10.9.0.3/24 dev eth0'
        iptables -t nat -A PREROUTING -p tcp --dport 5432 -j DNAT --to-destination 172.31.0.2
        iptables -t nat -A POSTROUTING -s 172.31.0.0/24 -o ext0 -j MASQUERADE
        iptables -N DOCKER-USER && iptables -A DOCKER-USER -j RETURN
        iptables -A FORWARD -j DOCKER-USER
        nsenter -t $CTR -n {python} -c '{SERVE}' 5432 & CTR_SERVER=$!
        nsenter -t $REMOTE -n {python} -c '{SERVE}' 443 & REMOTE_SERVER=$!
        trap 'kill $CTR_SERVER $REMOTE_SERVER; cleanup' EXIT
        sleep 1
        probe() {{ nsenter -t $1 -n {python} -c '{PROBE}' $2 $3 $4; }}
        echo "--- open"
        probe $REMOTE 10.9.0.2 10.9.0.1 5432
        probe $REMOTE 10.9.0.3 10.9.0.1 5432
        {INVOKE} firewall.apply >/dev/null
        echo "--- firewalled"
        probe $REMOTE 10.9.0.2 10.9.0.1 5432
        probe $REMOTE 10.9.0.3 10.9.0.1 5432
        probe $CTR 172.31.0.2 10.9.0.3 443
        """,
        {**environ, "FIREWALL_ALLOW": "10.9.0.2"},
    )
    assert result.returncode == 0, result.stderr
    open_, firewalled = result.stdout.split("--- open\n")[1].split("--- firewalled\n")
    assert open_.splitlines() == ["10.9.0.2->10.9.0.1:5432 ok", "10.9.0.3->10.9.0.1:5432 ok"]
    assert firewalled.splitlines() == [
        "10.9.0.2->10.9.0.1:5432 ok",
        "10.9.0.3->10.9.0.1:5432 blocked (TimeoutError)",
        "172.31.0.2->10.9.0.3:443 ok",
    ]


@needs_netns
def test_only_the_node_its_containers_and_allowed_sources_reach_a_host_network_port(environ):
    """node-exporter on the host network: the node itself listens (no DNAT, INPUT). A remote
    with an allowed and a disallowed address, over IPv4 and IPv6, and a container behind a
    Docker bridge (named like docker_gwbridge) connect to it; loopback too."""
    python = sys.executable
    serve6 = SERVE.replace("create_server((\"0.0.0.0\", int(sys.argv[1])))",
                           "create_server((\"::\", int(sys.argv[1])), family=socket.AF_INET6, "
                           "dualstack_ipv6=True)")  # fmt: skip
    probe6 = PROBE.replace("s = socket.socket()", "s = socket.socket(socket.AF_INET "
                           "if \".\" in source else socket.AF_INET6)")  # fmt: skip
    result = in_netns(
        f"""
        cleanup() {{ kill $CTR $REMOTE 2>/dev/null || true; }}
        trap cleanup EXIT
        ip link set lo up
        {TWO_NAMESPACES}
        ip link add docker_gwb0 type veth peer name eth0 netns $CTR
        ip link add ext0 type veth peer name eth0 netns $REMOTE
        ip addr add 172.31.0.1/24 dev docker_gwb0 && ip link set docker_gwb0 up
        ip addr add 10.9.0.1/24 dev ext0 && ip addr add fd00:9::1/64 dev ext0 nodad
        ip link set ext0 up
        nsenter -t $CTR -n sh -ec 'ip link set lo up; ip addr add 172.31.0.2/24 dev eth0
            ip link set eth0 up'
        nsenter -t $REMOTE -n sh -ec 'ip link set lo up; ip link set eth0 up
            ip addr add 10.9.0.2/24 dev eth0; ip addr add 10.9.0.3/24 dev eth0
            ip addr add fd00:9::3/64 dev eth0 nodad'
        iptables -N DOCKER-USER
        {python} -c '{serve6}' 9100 & SERVER=$!
        trap 'kill $SERVER; cleanup' EXIT
        sleep 1
        probe() {{ nsenter -t $1 -n {python} -c '{probe6}' $2 $3 9100; }}
        {INVOKE} firewall.apply >/dev/null
        probe $REMOTE 10.9.0.2 10.9.0.1
        probe $REMOTE 10.9.0.3 10.9.0.1
        probe $REMOTE fd00:9::3 fd00:9::1
        probe $CTR 172.31.0.2 172.31.0.1
        probe $$ 127.0.0.1 127.0.0.1
        """,
        {**environ, "FIREWALL_ALLOW": "10.9.0.2"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "10.9.0.2->10.9.0.1:9100 ok",
        "10.9.0.3->10.9.0.1:9100 blocked (TimeoutError)",
        "fd00:9::3->fd00:9::1:9100 blocked (TimeoutError)",
        "172.31.0.2->172.31.0.1:9100 ok",
        "127.0.0.1->127.0.0.1:9100 ok",
    ]
