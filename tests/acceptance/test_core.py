"""Core stack: Traefik's health, its dashboard behind basic auth, routing by host name."""

from __future__ import annotations

import pytest
import requests

from infra.catalog import CORE_PORTS, TRAEFIK_NETWORK

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
