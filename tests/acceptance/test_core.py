"""Core stack: Traefik's health, its dashboard behind basic auth, routing by host name, and
the read-only Docker API proxy Traefik reads the swarm through."""

from __future__ import annotations

import re

import pytest
import requests

from infra.catalog import CORE_PORTS, TRAEFIK_NETWORK

PROXY = "tasks.core_docker-proxy"

PROBE_HOST = "probe.acceptance.test"


@pytest.fixture(scope="module")
def core(platform):
    platform.require("TRAEFIK_IMAGE")
    platform.deploy("core")
    return platform


def test_traefik_health_check_passes(core):
    service = core.client.services.get("core_traefik")
    tasks = [t for t in service.tasks() if t["Status"]["State"] == "running"]
    assert tasks, "no running Traefik task"
    container_id = tasks[0]["Status"]["ContainerStatus"]["ContainerID"]
    container = core.client.containers.get(container_id)
    assert container.attrs["State"]["Health"]["Status"] == "healthy"
    exit_code, output = container.exec_run(["traefik", "healthcheck"])
    assert exit_code == 0, output.decode()


def _dashboard(core, **kwargs) -> requests.Response:
    url = f"http://127.0.0.1:{core.port(CORE_PORTS['dashboard'])}/api/overview"
    return requests.get(url, timeout=10, **kwargs)


def test_dashboard_refuses_requests_without_credentials(core):
    assert _dashboard(core).status_code == 401


def test_dashboard_refuses_a_wrong_password(core):
    user = core.secrets()["traefik_dashboard_user"]
    assert _dashboard(core, auth=(user, "not-the-password")).status_code == 401


def test_dashboard_answers_with_the_generated_credentials(core):
    values = core.secrets()
    response = _dashboard(
        core, auth=(values["traefik_dashboard_user"], values["traefik_dashboard_password"])
    )
    assert response.status_code == 200
    assert "http" in response.json()


def test_dashboard_is_not_routed_on_the_web_entry_point(core):
    response = core.web("localhost", "/dashboard/")
    assert response.status_code == 404


@pytest.fixture(scope="module")
def probe_service(core):
    """A routed service on traefik-public, labelled as our stack files label theirs."""
    core.require("DOCKER_PROXY_IMAGE")  # Traefik reads the swarm through it
    image = core.require("PROMETHEUS_IMAGE")  # any image serving HTTP: Prometheus on 9090
    service = core.client.services.create(
        image,
        name="acceptance-probe",
        networks=[TRAEFIK_NETWORK],
        labels={
            "traefik.enable": "true",
            "traefik.swarm.network": TRAEFIK_NETWORK,
            "traefik.http.routers.probe.rule": f"Host(`{PROBE_HOST}`)",
            "traefik.http.routers.probe.entrypoints": "web",
            "traefik.http.services.probe.loadbalancer.server.port": "9090",
        },
    )
    yield service
    service.remove()


def test_host_header_routes_to_the_service(core, probe_service):
    response = core.wait_for(
        lambda: (r := core.web(PROBE_HOST, "/-/healthy")).status_code == 200 and r,
        what=f"Traefik to route {PROBE_HOST}",
    )
    assert "Healthy" in response.text


def test_unknown_host_is_not_routed(core, probe_service):
    assert core.web("nothing-here.acceptance.test", "/-/healthy").status_code == 404


# --- the Docker API proxy ------------------------------------------------------------------


def _traefik_container(core):
    service = core.client.services.get("core_traefik")
    tasks = [t for t in service.tasks() if t["Status"]["State"] == "running"]
    assert tasks, "no running Traefik task"
    return core.client.containers.get(tasks[0]["Status"]["ContainerStatus"]["ContainerID"])


def _through_the_proxy(core, method: str, path: str) -> int:
    """The status the proxy answers a request from inside Traefik's container, where a
    Traefik flaw would send it from; raw HTTP through the image's busybox nc."""
    length = "" if method == "GET" else "Content-Length: 0\r\n"  # a GET with a body gets 413
    request = f"{method} {path} HTTP/1.0\r\nHost: docker\r\n{length}\r\n"
    command = ["sh", "-c", 'printf "$1" | busybox nc -w 10 "$2" 2375', "probe", request, PROXY]

    def answer() -> int:
        code, output = _traefik_container(core).exec_run(command)
        status = re.match(rb"HTTP/1\.[01] (\d{3})", output)
        assert status, f"no HTTP answer from {PROXY} (exit {code}): {output[:300]!r}"
        return int(status.group(1))

    # Under the suite's load a probe can go unanswered (busybox nc gives up after 10 s with
    # exit 0, or meets the proxy's task as it is replaced): it asks again until an answer
    # comes. Which answer it is, the caller asserts.
    return core.wait_for(answer, timeout=60, interval=2, what=f"an answer to {method} {path}")


def test_traefik_has_no_docker_socket(core):
    spec = core.client.services.get("core_traefik").attrs["Spec"]["TaskTemplate"]
    assert not spec["ContainerSpec"].get("Mounts"), spec["ContainerSpec"].get("Mounts")
    mounts = [m["Destination"] for m in _traefik_container(core).attrs["Mounts"]]
    assert not [m for m in mounts if m.endswith("docker.sock")], mounts


@pytest.mark.parametrize(
    "path", ["/_ping", "/version", "/services", "/tasks", "/networks", "/nodes"], ids=str
)
def test_the_proxy_answers_what_the_swarm_provider_reads(core, path):
    core.require("DOCKER_PROXY_IMAGE")
    assert _through_the_proxy(core, "GET", f"/v1.41{path}") == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1.41/services/create"),
        ("DELETE", "/v1.41/services/core_traefik"),
        ("POST", "/v1.41/services/core_traefik/update"),
        ("DELETE", "/v1.41/networks/traefik-public"),
        ("POST", "/v1.41/containers/create"),
        ("GET", "/v1.41/containers/json"),
        ("GET", "/v1.41/secrets"),
        ("GET", "/v1.41/configs"),
        ("GET", "/v1.41/info"),
        ("GET", "/v1.41/events"),
    ],
    ids=lambda v: v,
)
def test_the_proxy_refuses_writes_and_what_traefik_does_not_read(core, method, path):
    core.require("DOCKER_PROXY_IMAGE")
    assert _through_the_proxy(core, method, path) == 403
    assert core.client.services.get("core_traefik")  # still there


def test_only_traefik_and_the_proxy_are_on_the_proxy_network(core):
    network = next(n for n in core.client.networks.list(names=["core_docker-api"]))
    assert network.attrs["Internal"] is True
    attached = {
        s.name
        for s in core.client.services.list()
        for n in s.attrs["Spec"]["TaskTemplate"].get("Networks") or []
        if n["Target"] == network.id
    }
    assert attached == {"core_traefik", "core_docker-proxy"}
