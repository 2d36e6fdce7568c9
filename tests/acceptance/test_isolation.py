"""Environments are isolated (DESIGN decision 9), only routed services join traefik-public,
and what has no login of its own is not routed on a public host name."""

from __future__ import annotations

import contextlib

import pytest
import requests
import yaml

from infra.catalog import CORE_PORTS, ENVIRONMENTS, MONITORING_NETWORK, STACKS, TRAEFIK_NETWORK
from infra.settings import STACKS_DIR

# --- one environment cannot reach another -----------------------------------------------

# (from, to): a probe on <from>_backend, where that environment's applications run.
DIRECTIONS = [("dev", "prod"), ("prod", "dev")]


def _task_addresses(platform, service: str) -> list[str]:
    """Every address of the service's running task, on every network it joins."""
    tasks = platform.client.services.get(service).tasks(filters={"desired-state": "running"})
    return [
        address.split("/")[0]
        for task in tasks
        if task["Status"]["State"] == "running"
        for attachment in task.get("NetworksAttachments") or []
        for address in attachment.get("Addresses") or []
    ]


# Each check prints `<name>=0` when Postgres or Redis itself answered: pg_isready exits 0
# (accepting) or 1 (rejecting) only when a server spoke its protocol, and Redis replies to
# PING with +PONG or -NOAUTH. A bare TCP connect would not do: packets to an address that is
# not on the probe's overlay leave through docker_gwbridge, where anything may accept them.
PROBE_FUNCTIONS = r"""
check() { name=$1; shift; "$@" >/dev/null 2>&1; echo "$name=$?"; }
postgres_answers() { pg_isready -q -h "$1" -p 5432 -t 5; [ $? -le 1 ]; }
redis_answers() {
  timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/6379" && printf "PING\r\n" >&3 &&
    read -r reply <&3 && case $reply in +PONG*|-NOAUTH*) exit 0;; esac; exit 1' "$1"
}
"""


def _probe_script(own: str, other: str, addresses: dict[str, list[str]]) -> str:
    lines = [
        PROBE_FUNCTIONS,
        f"check own-postgres-resolves getent hosts tasks.{own}_postgres",
        f"check own-postgres-answers postgres_answers tasks.{own}_postgres",
        f"check own-redis-answers redis_answers tasks.{own}_redis",
        f"check other-postgres-resolves getent hosts tasks.{other}_postgres",
        f"check other-redis-resolves getent hosts tasks.{other}_redis",
    ]
    lines += [f"check other-postgres-at-{ip} postgres_answers {ip}" for ip in addresses["postgres"]]
    lines += [f"check other-redis-at-{ip} redis_answers {ip}" for ip in addresses["redis"]]
    return "\n".join(lines)


@contextlib.contextmanager
def _kept_inside_the_node(platform, addresses: list[str]):
    """Refuse, on the node, what the probe sends to these addresses through docker_gwbridge
    (its default route, which leads out of the swarm): test traffic never leaves the
    machine. The overlay path, the one isolation is about, is not touched."""
    rules = [f"FORWARD -i docker_gwbridge -d {ip} -j REJECT" for ip in addresses]
    node = platform.node()
    for rule in rules:
        node.check_output(f"iptables -I {rule}")
    try:
        yield
    finally:
        for rule in rules:
            node.run(f"iptables -D {rule}")


def _run_probe(platform, image: str, script: str, network: str, blocked: list[str]) -> dict:
    """Run the probe script in a container on `network`, with traffic to `blocked` kept
    inside the node; the exit code of each check, by name."""
    with _kept_inside_the_node(platform, blocked):
        container = platform.client.containers.run(
            image,
            entrypoint=["bash", "-c"],
            command=[script],
            network=network,
            labels={"org.nextcandle.acceptance": "isolation-probe"},
            detach=True,
        )
        try:
            container.wait(timeout=300)
            output = container.logs().decode()
        finally:
            container.remove(force=True)
    results = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    return {name: int(code) for name, code in results.items()}


@pytest.fixture(scope="module", params=DIRECTIONS, ids=lambda d: f"{d[0]}-to-{d[1]}")
def probe(request, platform):
    """Exit codes of the checks, run by a container on <own>_backend: {check: code}."""
    own, other = request.param
    image = platform.require("POSTGRES_IMAGE")  # has pg_isready, getent, bash and timeout
    platform.require("REDIS_IMAGE")
    for env in (own, other):
        platform.deploy(env)
    addresses = {
        kind: _task_addresses(platform, f"{other}_{kind}") for kind in ("postgres", "redis")
    }
    assert addresses["postgres"] and addresses["redis"], addresses
    script = _probe_script(own, other, addresses)
    blocked = addresses["postgres"] + addresses["redis"]
    return own, other, _run_probe(platform, image, script, f"{own}_backend", blocked)


def test_probe_reaches_its_own_environment(probe):
    """The positive control: the probe can reach what it should, so a failure below is
    isolation and not a broken probe."""
    _, _, results = probe
    assert results["own-postgres-resolves"] == 0, results
    assert results["own-postgres-answers"] == 0, results
    assert results["own-redis-answers"] == 0, results


def test_other_environment_names_do_not_resolve(probe):
    _, _, results = probe
    assert results["other-postgres-resolves"] != 0, results
    assert results["other-redis-resolves"] != 0, results


def test_other_environment_addresses_are_unreachable(probe):
    _, _, results = probe
    by_address = {name: code for name, code in results.items() if "-at-" in name}
    assert by_address, results
    reached = [name for name, code in by_address.items() if code == 0]
    assert not reached, results


# --- nothing on `monitoring` reaches a database -------------------------------------------
# `monitoring` carries n8n (which runs user-written workflows), Grafana and every collector.
# Only each environment's exporters join it (DESIGN decision 9); the databases do not.

EXPORTER_FUNCTION = r"""
exporter_answers() {
  timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 &&
    grep -q "^$2" <&3' "$1" "$2" "$3"
}
"""


def _monitoring_probe_script(addresses: dict[str, list[str]]) -> str:
    lines = [PROBE_FUNCTIONS, EXPORTER_FUNCTION]
    for env in ENVIRONMENTS:
        lines += [
            f"check {env}-postgres-resolves getent hosts tasks.{env}_postgres",
            f"check {env}-redis-resolves getent hosts tasks.{env}_redis",
            f"check {env}-redis-exporter-answers "
            f"exporter_answers tasks.{env}_redis-exporter 9121 redis_up",
            f"check {env}-postgres-exporter-answers "
            f"exporter_answers tasks.{env}_postgres-exporter 9187 pg_up",
        ]
        lines += [
            f"check {env}-postgres-at-{ip} postgres_answers {ip}"
            for ip in addresses[f"{env}_postgres"]
        ]
        lines += [
            f"check {env}-redis-at-{ip} redis_answers {ip}" for ip in addresses[f"{env}_redis"]
        ]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def monitoring_probe(platform):
    """Exit codes of the checks, run by a container on `monitoring` (standing in for n8n)."""
    image = platform.require("POSTGRES_IMAGE")  # has pg_isready, getent, bash and timeout
    for variable in ("REDIS_IMAGE", "POSTGRES_EXPORTER_IMAGE", "REDIS_EXPORTER_IMAGE"):
        platform.require(variable)
    for env in ENVIRONMENTS:
        platform.deploy(env)
    addresses = {
        f"{env}_{kind}": _task_addresses(platform, f"{env}_{kind}")
        for env in ENVIRONMENTS
        for kind in ("postgres", "redis")
    }
    assert all(addresses.values()), addresses
    every = [ip for ips in addresses.values() for ip in ips]
    script = _monitoring_probe_script(addresses)
    return _run_probe(platform, image, script, MONITORING_NETWORK, every)


def test_a_probe_on_monitoring_reaches_every_exporter(monitoring_probe):
    """The positive control: the exporters answer it, with the metrics of their database."""
    answers = {n: c for n, c in monitoring_probe.items() if n.endswith("-exporter-answers")}
    assert len(answers) == 2 * len(ENVIRONMENTS), monitoring_probe
    assert all(code == 0 for code in answers.values()), monitoring_probe


def test_a_probe_on_monitoring_cannot_resolve_any_database(monitoring_probe):
    resolved = [n for n, c in monitoring_probe.items() if n.endswith("-resolves") and c == 0]
    assert not resolved, monitoring_probe


def test_a_probe_on_monitoring_cannot_reach_any_database_address(monitoring_probe):
    by_address = {n: c for n, c in monitoring_probe.items() if "-at-" in n}
    assert len(by_address) >= 2 * len(ENVIRONMENTS), monitoring_probe
    assert not [n for n, c in by_address.items() if c == 0], monitoring_probe


# --- traefik-public ---------------------------------------------------------------------

# Traefik itself, and the tunnel that forwards to it: on traefik-public without being routed.
EDGE = {"core_traefik", "core_cloudflared"}


def _routed_services() -> set[str]:
    """`<stack>_<service>` of every service whose stack file labels it traefik.enable=true."""
    routed = set()
    for path in STACKS_DIR.glob("*.yml"):
        file_stem = path.stem.split(".")[0]
        stacks = list(ENVIRONMENTS) if file_stem == "env" else [file_stem]
        for name, spec in (yaml.safe_load(path.read_text()).get("services") or {}).items():
            labels = (spec.get("deploy") or {}).get("labels") or {}
            if isinstance(labels, list):
                labels = dict(label.split("=", 1) for label in labels)
            if str(labels.get("traefik.enable", "")).lower() == "true":
                routed |= {f"{stack}_{name}" for stack in stacks}
    return routed


def test_only_routed_services_join_traefik_public(platform):
    platform.require("TRAEFIK_IMAGE")
    for stack in ("core", "shared", *ENVIRONMENTS):
        platform.deploy(stack)
    network = platform.client.networks.get(TRAEFIK_NETWORK)
    ours = [
        service
        for service in platform.client.services.list()
        if (service.attrs["Spec"].get("Labels") or {}).get("com.docker.stack.namespace") in STACKS
    ]
    joined = {
        service.name
        for service in ours
        if any(
            target.get("Target") in (network.id, network.name)
            for target in service.attrs["Spec"]["TaskTemplate"].get("Networks") or []
        )
    }
    allowed = (_routed_services() | EDGE) & {service.name for service in ours}
    assert "core_traefik" in joined
    assert joined == allowed


# --- what is not routed publicly --------------------------------------------------------


@pytest.fixture(scope="module")
def routed(platform):
    platform.require("TRAEFIK_IMAGE")
    platform.deploy("core")
    platform.deploy("shared")
    return platform


def _public_domains(platform) -> list[str]:
    return sorted({platform.settings.domain(env) for env in ENVIRONMENTS})


# What has no login of its own: on its *.localhost name only. (name, image, health path, text)
UNAUTHENTICATED = [
    ("prometheus", "PROMETHEUS_IMAGE", "/-/healthy", "Healthy"),
    ("alertmanager", "ALERTMANAGER_IMAGE", "/-/healthy", "OK"),
]


@pytest.mark.parametrize(
    ("name", "image", "path", "text"), UNAUTHENTICATED, ids=[u[0] for u in UNAUTHENTICATED]
)
def test_a_service_without_login_answers_on_its_local_host_name(routed, name, image, path, text):
    """The positive control for the 404s below: the route exists."""
    routed.require(image)
    response = routed.wait_for(
        lambda: (r := routed.web(f"{name}.localhost", path)).status_code == 200 and r,
        what=f"Traefik to route {name}.localhost",
    )
    assert text in response.text


@pytest.mark.parametrize(
    ("name", "image", "path", "text"), UNAUTHENTICATED, ids=[u[0] for u in UNAUTHENTICATED]
)
def test_a_service_without_login_is_not_routed_on_any_public_domain(
    routed, name, image, path, text
):
    routed.require(image)
    for domain in _public_domains(routed):
        for host in (f"{name}.{domain}", domain):
            assert routed.web(host, path).status_code == 404, host


def test_dashboard_answers_on_its_own_port_behind_basic_auth(routed):
    """The positive control: the dashboard exists, on the `traefik` entry point only."""
    url = f"http://127.0.0.1:{routed.port(CORE_PORTS['dashboard'])}/api/overview"
    assert requests.get(url, timeout=10).status_code == 401


@pytest.mark.parametrize("path", ["/dashboard/", "/api/overview", "/api/rawdata"])
def test_dashboard_is_not_routed_on_any_public_domain(routed, path):
    for domain in _public_domains(routed):
        for host in (f"traefik.{domain}", domain, "localhost"):
            assert routed.web(host, path).status_code == 404, host
