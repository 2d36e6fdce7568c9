"""Host firewall for the published ports: iptables rules in Docker's DOCKER-USER chain.

Why: Swarm publishes a port on every interface of the node (it cannot bind to 127.0.0.1:
"Swarm services are always exposed on the 0.0.0.0 network interface", Docker docs, Port
publishing and mapping). Rules in the INPUT chain (ufw's) do not see that traffic: Docker
rewrites the destination (DNAT, nat PREROUTING) to the container's address, so the packet is
forwarded, through the FORWARD chain, where Docker's own chains accept it. DOCKER-USER is the
chain Docker reserves for the operator's rules, processed before its own (Docker docs,
Packet filtering and firewalls: "Add iptables policies before Docker's rules").

What arrives in DOCKER-USER, and what the rules do with it:
- A client on another machine connecting to a published port: DNAT in PREROUTING, then
  FORWARD. Because DNAT happened first, the packet already carries the container's address
  and port; the published port is matched on the connection's original destination with the
  conntrack extension, `--ctorigdstport PORT --ctdir ORIGINAL` (the documented way: "Match
  the original IP and ports for requests"). `--ctstate DNAT` narrows the match to connections
  whose destination Docker rewrote, i.e. to published ports: without it, a container's own
  outgoing connection to some remote port 443 would match `--ctorigdstport 443` too.
  Such a connection is dropped unless its source is in FIREWALL_ALLOW.
- Connections from this machine (127.0.0.1, or the node's own addresses): never forwarded.
  Docker's userland proxy answers on the host (INPUT), or the nat OUTPUT chain rewrites them
  and they leave through OUTPUT; either way FORWARD, and so DOCKER-USER, never sees them.
  Loopback therefore needs no rule and is always allowed.
- Containers on this machine's Docker bridges (docker0, docker_gwbridge, br-<id>) reaching a
  published port through a host address: forwarded from the bridge. They are local, like
  loopback, and Docker allows them by default; the chain returns for traffic coming in on
  `docker+` and `br-+`, which is the inverse of the docs' example that restricts only traffic
  coming in on the external interface (`-i ext_if`), without having to know its name.
- Packets of connections already accepted (ESTABLISHED, RELATED) return first: the docs'
  recommendation, and cheap, since only a connection's first packet needs the checks.
- Swarm overlay traffic between nodes is VXLAN to the node itself (INPUT), not forwarded.

The chain only ever drops or returns, never accepts: it can narrow what Docker and other
rules in DOCKER-USER allow, never widen it. It lives in a chain of its own (NEXTCANDLE) that
DOCKER-USER jumps to once, so applying again flushes and refills that chain and inserts the
jump only when it is missing; no other rule is touched. Between the flush and the last rule
(milliseconds) the ports are as open as without the firewall.

A service in the node's own network namespace (node-exporter, on the `host` network) is
different: nothing is published or rewritten, the process itself listens on every interface
of the node, so connections to it arrive in INPUT, never in FORWARD, and DOCKER-USER never
sees them. Its ports (catalog.HOST_NETWORK_PORTS, one table) are guarded by a second chain,
NEXTCANDLE-INPUT, that INPUT jumps to first: established packets, loopback (this node),
Docker's bridges (Prometheus on this node reaches the node's address from its container,
through docker_gwbridge) and FIREWALL_ALLOW return; new TCP connections to those ports are
dropped. Prometheus on another node of the swarm comes from that node's own address (its
container's traffic leaves masqueraded): with several nodes, FIREWALL_ALLOW must hold the
nodes' network, on every node. Such a listener also answers on the node's IPv6 addresses
(Go listens dual-stack on `:port`), where no Docker proxy and no ufw rule is implied, so the
same chain, without FIREWALL_ALLOW (IPv4 only), is put into ip6tables' INPUT too, wherever
the kernel has IPv6.

Limits: IPv4 only for published ports. Docker's userland proxy maps the host's IPv6
addresses to an IPv4-only container (Docker docs, Port publishing: "Ports on the host's IPv6
addresses will map to the container's IPv4 address ..."); that traffic reaches the proxy
through the ordinary ip6tables INPUT chain, where the host's own firewall (ufw) does apply.
The rules are in the kernel only: they are lost at reboot, and Docker recreates DOCKER-USER
empty when it restarts; run `invoke firewall.apply` again after either (or from a boot unit,
after docker.service). They protect the node they are applied on: run it on every node that
publishes ports, and on every node node-exporter runs on (all).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from infra import catalog
from infra.errors import FirewallError
from infra.plan import published_ports
from infra.settings import Settings

CHAIN = "NEXTCANDLE"
PARENT = "DOCKER-USER"
INPUT_CHAIN = "NEXTCANDLE-INPUT"
INPUT = "INPUT"
IPTABLES = "iptables"
IP6TABLES = "ip6tables"
IPV6_PROC = "/proc/net/if_inet6"  # exists while the kernel has IPv6
# Interfaces of Docker's own bridges: docker0 and docker_gwbridge, and br-<id> of
# user-defined bridge networks. Traffic coming in on them is from containers on this node.
LOCAL_BRIDGES = ("docker+", "br-+")

Run = Callable[[Sequence[str]], subprocess.CompletedProcess]


@dataclass(frozen=True)
class ProtectedPort:
    port: int
    stack: str
    name: str

    def __str__(self) -> str:
        return f"{self.port} ({self.stack} {self.name})"


@dataclass(frozen=True)
class Step:
    """One iptables command; `only_if` says when it runs, for a plan made without root."""

    command: tuple[str, ...]
    only_if: str = ""


@dataclass(frozen=True)
class FirewallPlan:
    allow: tuple[str, ...]
    ports: tuple[ProtectedPort, ...]
    steps: tuple[Step, ...]
    state_known: bool  # the steps were chosen from the live `iptables -S`
    parent_exists: bool = True  # as far as is known
    host_network_ports: tuple[ProtectedPort, ...] = ()

    def commands(self) -> list[list[str]]:
        return [list(step.command) for step in self.steps]


@dataclass(frozen=True)
class Guard:
    """One chain of ours, in one table, and the chain that jumps to it."""

    binary: str
    parent: str
    chain: str

    def rules(self, settings: Settings) -> list[list[str]]:
        if self.parent == PARENT:
            return chain_rules(settings)
        return input_rules(settings, ipv6=self.binary == IP6TABLES)


GUARDS = (
    Guard(IPTABLES, PARENT, CHAIN),
    Guard(IPTABLES, INPUT, INPUT_CHAIN),
    Guard(IP6TABLES, INPUT, INPUT_CHAIN),
)


def protected_ports(settings: Settings) -> tuple[ProtectedPort, ...]:
    """Every port the platform publishes with these settings (core's, and each environment's
    while its host ports are on), by port number."""
    found = {
        port: ProtectedPort(port, stack, name)
        for stack in catalog.STACKS
        for name, port in published_ports(stack, settings).items()
    }
    return tuple(found[port] for port in sorted(found))


def host_network_ports() -> tuple[ProtectedPort, ...]:
    """The ports of services on the node's own network (catalog.HOST_NETWORK_PORTS)."""
    return tuple(
        ProtectedPort(port, catalog.SHARED, name)
        for name, port in sorted(catalog.HOST_NETWORK_PORTS.items(), key=lambda item: item[1])
    )


def input_rules(settings: Settings, ipv6: bool = False) -> list[list[str]]:
    """The rules of our INPUT chain, as `iptables -S` prints them: only this node, its
    containers and FIREWALL_ALLOW (IPv4 only) reach the host-network ports."""
    rules = [["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"]]
    rules += [["-i", "lo", "-j", "RETURN"]]
    rules += [["-i", interface, "-j", "RETURN"] for interface in LOCAL_BRIDGES]
    if not ipv6:
        rules += [["-s", str(network), "-j", "RETURN"] for network in settings.firewall_allow]
    drop = "-p tcp -m tcp --dport {} -j DROP"
    rules += [drop.format(p.port).split() for p in host_network_ports()]
    return rules


def chain_rules(settings: Settings) -> list[list[str]]:
    """The rules of our chain, in order, as `iptables -S` prints them (without `-A CHAIN`)."""
    rules = [["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"]]
    rules += [["-i", interface, "-j", "RETURN"] for interface in LOCAL_BRIDGES]
    rules += [["-s", str(network), "-j", "RETURN"] for network in settings.firewall_allow]
    drop = "-p tcp -m conntrack --ctstate DNAT --ctorigdstport {} --ctdir ORIGINAL -j DROP"
    rules += [drop.format(p.port).split() for p in protected_ports(settings)]
    return rules


@dataclass(frozen=True)
class ChainState:
    """What `iptables -S` (filter table) says about DOCKER-USER and our chain."""

    parent_exists: bool
    chain_exists: bool
    jumps: int  # rules in DOCKER-USER that jump to our chain
    rules: tuple[tuple[str, ...], ...]  # our chain's rules, normalised

    @classmethod
    def parse(cls, text: str, parent_name: str = PARENT, chain_name: str = CHAIN) -> ChainState:
        # Built-in chains (INPUT) are printed as `-P INPUT <policy>`, never `-N`.
        parent = parent_name == INPUT
        chain = False
        jumps = 0
        rules = []
        for line in text.splitlines():
            words = line.split()
            if words[:2] == ["-N", parent_name]:
                parent = True
            elif words[:2] == ["-N", chain_name]:
                chain = True
            elif words[:2] == ["-A", parent_name] and words[2:] == ["-j", chain_name]:
                jumps += 1
            elif words[:2] == ["-A", chain_name]:
                rules.append(normalise(words[2:]))
        return cls(parent, chain, jumps, tuple(rules))


def normalise(rule: Sequence[str]) -> tuple[str, ...]:
    """A rule's words with comma lists sorted: iptables variants print state lists in
    different orders."""
    return tuple(",".join(sorted(word.split(","))) if "," in word else word for word in rule)


Tables = Mapping[str, str]  # binary -> its `-S` output, for the tables that were read


def _guards(current: Tables | None) -> tuple[Guard, ...]:
    """Every guard without the live rules; with them, those of the tables that were read
    (no ip6tables where the kernel has no IPv6)."""
    return GUARDS if current is None else tuple(g for g in GUARDS if g.binary in current)


def _state(guard: Guard, current: Tables) -> ChainState:
    return ChainState.parse(current[guard.binary], guard.parent, guard.chain)


def plan(settings: Settings, current: Tables | str | None = None) -> FirewallPlan:
    """The commands that make our chains hold exactly their rules. With `current` (each
    table's `-S`; a string is iptables' alone), only those needed; without, every one, the
    conditional ones marked."""
    if isinstance(current, str):
        current = {IPTABLES: current}
    steps: list[Step] = []
    for guard in _guards(current):
        state = _state(guard, current) if current is not None else None
        if state is None:
            steps.append(Step(_iptables("-N", guard.chain, binary=guard.binary), _missing(guard)))
        elif not state.chain_exists:
            steps.append(Step(_iptables("-N", guard.chain, binary=guard.binary)))
        steps.append(Step(_iptables("-F", guard.chain, binary=guard.binary)))
        steps += [
            Step(_iptables("-A", guard.chain, *rule, binary=guard.binary))
            for rule in guard.rules(settings)
        ]
        jump = _iptables("-I", guard.parent, "1", "-j", guard.chain, binary=guard.binary)
        if state is None:
            steps.append(
                Step(jump, f"{_table(guard)}{guard.parent} does not jump to {guard.chain} yet")
            )
        elif state.jumps == 0:
            steps.append(Step(jump))
    parent = ChainState.parse(current[IPTABLES]) if current is not None else None
    return FirewallPlan(
        allow=tuple(str(n) for n in settings.firewall_allow),
        ports=protected_ports(settings),
        steps=tuple(steps),
        state_known=current is not None,
        parent_exists=parent is None or parent.parent_exists,
        host_network_ports=host_network_ports(),
    )


def _table(guard: Guard) -> str:
    return "" if guard.binary == IPTABLES else f"{guard.binary}: "


def _missing(guard: Guard) -> str:
    if guard.binary == IPTABLES and guard.chain == CHAIN:
        return "the chain is missing"
    return f"{_table(guard)}{guard.chain} is missing"


def removal(current: Tables | str) -> list[list[str]]:
    """Commands that take our chains out: every jump to them, then the chains themselves."""
    if isinstance(current, str):
        current = {IPTABLES: current}
    commands = []
    for guard in _guards(current):
        state = _state(guard, current)
        jump = _iptables("-D", guard.parent, "-j", guard.chain, binary=guard.binary)
        commands += [list(jump) for _ in range(state.jumps)]
        if state.chain_exists:
            commands += [
                list(_iptables("-F", guard.chain, binary=guard.binary)),
                list(_iptables("-X", guard.chain, binary=guard.binary)),
            ]
    return commands


def verify(settings: Settings, current: Tables | str) -> list[str]:
    """What differs between the live rules and the plan; empty when the firewall is in
    place."""
    if isinstance(current, str):
        current = {IPTABLES: current}
    problems = []
    for guard in _guards(current):
        state = _state(guard, current)
        table = _table(guard)
        if not state.chain_exists:
            problems.append(f"{table}chain {guard.chain} is missing")
        if state.jumps == 0:
            problems.append(f"{table}{guard.parent} does not jump to {guard.chain}")
        wanted = tuple(normalise(rule) for rule in guard.rules(settings))
        if state.chain_exists and state.rules != wanted:
            problems.append(
                f"{table}{guard.chain} holds {len(state.rules)} rules, not the "
                f"{len(wanted)} planned"
            )
    return problems


def _iptables(*arguments: str, binary: str = IPTABLES) -> tuple[str, ...]:
    # -w: wait for the xtables lock instead of failing while Docker changes its rules.
    return (binary, "-w", *arguments)


def _run(command: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


def check_can_apply() -> None:
    """Linux, iptables installed, root: or one line saying which is missing."""
    if not sys.platform.startswith("linux"):
        raise FirewallError(
            f"the firewall uses Linux iptables; this is {sys.platform}. "
            "Run `invoke firewall.plan` to see the rules."
        )
    if shutil.which(IPTABLES) is None:
        raise FirewallError(
            "the iptables command is not installed. Install it (apt-get install iptables) "
            "and retry."
        )
    if os.geteuid() != 0:
        raise FirewallError(
            "changing iptables rules needs root. Run it as root (sudo), or see the rules "
            "with `invoke firewall.plan`."
        )


def read_rules(run: Run = _run) -> dict[str, str]:
    """`iptables -S`, and `ip6tables -S` while the kernel has IPv6."""
    binaries = [IPTABLES] + ([IP6TABLES] if os.path.exists(IPV6_PROC) else [])
    tables = {}
    for binary in binaries:
        if binary == IP6TABLES and shutil.which(IP6TABLES) is None:
            raise FirewallError(
                "this node has IPv6 but no ip6tables command: the host-network ports would "
                "stay open over IPv6. Install it (apt-get install iptables) and retry."
            )
        result = run(_iptables("-S", binary=binary))
        if result.returncode != 0:
            raise FirewallError(f"`{binary} -S` failed: {_first_line(result.stderr)}")
        tables[binary] = result.stdout
    return tables


def current_rules_if_readable() -> dict[str, str] | None:
    """`iptables -S` when this process may read it (root on Linux), else None."""
    try:
        check_can_apply()
        return read_rules()
    except FirewallError:
        return None


def apply(settings: Settings, run: Run = _run, report: Callable[[str], None] = print) -> int:
    """Bring our chain to the plan, then read the rules back. Returns the count of commands
    run: 0 when the rules were already in place."""
    check_can_apply()
    current = read_rules(run)
    if not ChainState.parse(current[IPTABLES]).parent_exists:
        raise FirewallError(
            f"there is no {PARENT} chain: Docker is not running on this machine, or runs "
            "with iptables disabled. Start Docker (it creates the chain) and retry."
        )
    if not verify(settings, current):
        report(f"firewall: {CHAIN} and {INPUT_CHAIN} are up to date, nothing changed")
        return 0
    steps = plan(settings, current).commands()
    _run_all(steps, run)
    problems = verify(settings, read_rules(run))
    if problems:
        raise FirewallError(
            f"the rules did not take: {'; '.join(problems)}. See `iptables -S {CHAIN}`."
        )
    report(
        f"firewall: {CHAIN} holds {len(chain_rules(settings))} rules, jumped to from {PARENT}; "
        f"{INPUT_CHAIN} holds {len(input_rules(settings))}, jumped to from {INPUT}"
        + (f" (and ip6tables' {INPUT})" if IP6TABLES in current else "")
    )
    return len(steps)


def remove(run: Run = _run) -> int:
    """Take our chain and its jump out; Docker's and others' rules stay. Returns the count of
    commands run (0: nothing was there)."""
    check_can_apply()
    commands = removal(read_rules(run))
    _run_all(commands, run)
    after = read_rules(run)
    for guard in _guards(after):
        state = _state(guard, after)
        if state.chain_exists or state.jumps:
            raise FirewallError(f"{guard.chain} is still there. See `{guard.binary} -S`.")
    return len(commands)


def _run_all(commands: Sequence[Sequence[str]], run: Run) -> None:
    for command in commands:
        result = run(command)
        if result.returncode != 0:
            raise FirewallError(f"`{shlex.join(command)}` failed: {_first_line(result.stderr)}")


def _first_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def format_plan(firewall: FirewallPlan) -> str:
    allow = ", ".join(firewall.allow) or "no other network (FIREWALL_ALLOW is empty)"
    lines = [
        f"# {PARENT} -> {CHAIN}: the platform's published ports, reachable from this machine,",
        f"# its containers and {allow}; dropped for everyone else.",
        f"# ports: {', '.join(str(p) for p in firewall.ports)}",
        f"# {INPUT} -> {INPUT_CHAIN} (iptables, and ip6tables without FIREWALL_ALLOW): the",
        "# ports of services on the node's own network, the same way:",
        f"# {', '.join(str(p) for p in firewall.host_network_ports)}. With several swarm nodes,",
        "# put the nodes' network in FIREWALL_ALLOW: Prometheus scrapes the others from its own.",
    ]
    if not firewall.state_known:
        lines.append("# (current rules not read: needs root; conditional steps are marked)")
    if not firewall.parent_exists:
        lines.append(f"# {PARENT} is missing: start Docker first, or firewall.apply refuses")
    for step in firewall.steps:
        if step.only_if:
            lines.append(f"# only if {step.only_if}:")
        lines.append(shlex.join(step.command))
    return "\n".join(lines)
