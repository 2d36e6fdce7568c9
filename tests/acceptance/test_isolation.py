"""Environments are isolated (DESIGN decision 9), only routed services join traefik-public,
and what has no login of its own is not routed on a public host name."""

from __future__ import annotations

import shlex

import pytest
import requests
import yaml

from infra.catalog import CORE_PORTS, ENVIRONMENTS, STACKS, TRAEFIK_NETWORK
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


def _probe_script(own: str, other: str, addresses: dict[str, list[str]]) -> str:
    """Shell lines printing `<check>=<exit code>` for each check."""
    lines = [
        'check() { name=$1; shift; "$@" >/dev/null 2>&1; echo "$name=$?"; }',
        f"check own-postgres-resolves getent hosts tasks.{own}_postgres",
        f"check own-postgres-answers pg_isready -q -h tasks.{own}_postgres -p 5432 -t 10",
        f"check own-redis-answers timeout 10 bash -c 'exec 3<>/dev/tcp/tasks.{own}_redis/6379'",
        f"check other-postgres-resolves getent hosts tasks.{other}_postgres",
        f"check other-redis-resolves getent hosts tasks.{other}_redis",
    ]
    for ip in addresses["postgres"]:
        lines.append(f"check other-postgres-at-{ip} pg_isready -q -h {ip} -p 5432 -t 5")
    for ip in addresses["redis"]:
        tcp = shlex.quote(f"exec 3<>/dev/tcp/{ip}/6379")
        lines.append(f"check other-redis-at-{ip} timeout 5 bash -c {tcp}")
    return "\n".join(lines)


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
    container = platform.client.containers.run(
        image,
        entrypoint=["bash", "-c"],
        command=[_probe_script(own, other, addresses)],
        network=f"{own}_backend",
        labels={"org.nextcandle.acceptance": "isolation-probe"},
        detach=True,
    )
    try:
        container.wait(timeout=300)
        output = container.logs().decode()
    finally:
        container.remove(force=True)
    results = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    return own, other, {name: int(code) for name, code in results.items()}


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


def test_prometheus_answers_on_its_local_host_name(routed):
    """The positive control for the 404s below: the route exists."""
    routed.require("PROMETHEUS_IMAGE")
    response = routed.wait_for(
        lambda: (r := routed.web("prometheus.localhost", "/-/healthy")).status_code == 200 and r,
        what="Traefik to route prometheus.localhost",
    )
    assert "Healthy" in response.text


def test_prometheus_is_not_routed_on_any_public_domain(routed):
    routed.require("PROMETHEUS_IMAGE")
    for domain in _public_domains(routed):
        for host in (f"prometheus.{domain}", domain):
            assert routed.web(host, "/-/healthy").status_code == 404, host


def test_dashboard_answers_on_its_own_port_behind_basic_auth(routed):
    """The positive control: the dashboard exists, on the `traefik` entry point only."""
    url = f"http://127.0.0.1:{routed.port(CORE_PORTS['dashboard'])}/api/overview"
    assert requests.get(url, timeout=10).status_code == 401


@pytest.mark.parametrize("path", ["/dashboard/", "/api/overview", "/api/rawdata"])
def test_dashboard_is_not_routed_on_any_public_domain(routed, path):
    for domain in _public_domains(routed):
        for host in (f"traefik.{domain}", domain, "localhost"):
            assert routed.web(host, path).status_code == 404, host
