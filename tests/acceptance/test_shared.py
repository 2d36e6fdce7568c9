"""Shared stack: S3, Prometheus targets, Loki ingestion, Grafana, n8n and the collectors."""

from __future__ import annotations

import time
import uuid

import pytest
import yaml
from botocore.exceptions import ClientError

from infra.catalog import MONITORING_NETWORK
from infra.settings import CONFIGS_DIR

# Each Prometheus job, by the service whose image it needs (its target must run).
JOB_IMAGES = {
    "prometheus": "PROMETHEUS_IMAGE",
    "traefik": "TRAEFIK_IMAGE",
    "seaweedfs": "SEAWEEDFS_IMAGE",
    "redis-exporter": "REDIS_EXPORTER_IMAGE",
    "cadvisor": "CADVISOR_IMAGE",
    "node-exporter": "NODE_EXPORTER_IMAGE",
    "redis": "REDIS_EXPORTER_IMAGE",
}
COLLECTORS = {
    "alloy": "ALLOY_IMAGE",
    "cadvisor": "CADVISOR_IMAGE",
    "node-exporter": "NODE_EXPORTER_IMAGE",
}


@pytest.fixture(scope="module")
def shared(platform):
    platform.require("TRAEFIK_IMAGE")
    platform.deploy("core")
    platform.deploy("shared")
    return platform


# --- object storage ---------------------------------------------------------------------


def test_s3_bucket_put_and_get_with_the_generated_keys(shared):
    shared.require("SEAWEEDFS_IMAGE")
    s3 = shared.s3()
    bucket, body = f"acceptance-{uuid.uuid4().hex[:8]}", uuid.uuid4().bytes
    shared.wait_for(lambda: s3.create_bucket(Bucket=bucket), what="S3 bucket creation")
    s3.put_object(Bucket=bucket, Key="probe.bin", Body=body)
    assert s3.get_object(Bucket=bucket, Key="probe.bin")["Body"].read() == body


def test_s3_refuses_anonymous_and_wrong_keys(shared):
    shared.require("SEAWEEDFS_IMAGE")
    s3 = shared.s3()
    bucket = f"acceptance-{uuid.uuid4().hex[:8]}"
    shared.wait_for(lambda: s3.create_bucket(Bucket=bucket), what="S3 bucket creation")
    anonymous = shared.web("s3.localhost", f"/{bucket}/")
    assert anonymous.status_code in (401, 403), anonymous.text
    wrong = shared.s3(secret_key="not-the-secret-key-000000000000")
    with pytest.raises(ClientError):
        wrong.list_objects_v2(Bucket=bucket)


# --- Prometheus -------------------------------------------------------------------------


def _prometheus(shared, path):
    return shared.web("prometheus.localhost", path)


def test_prometheus_is_healthy(shared):
    shared.require("PROMETHEUS_IMAGE")
    assert _prometheus(shared, "/-/healthy").status_code == 200


def _expected_jobs() -> list[str]:
    config = yaml.safe_load((CONFIGS_DIR / "prometheus" / "prometheus.yml").read_text())
    return [job["job_name"] for job in config["scrape_configs"]]


@pytest.mark.parametrize("job", _expected_jobs())
def test_every_configured_target_is_up(shared, job):
    shared.require("PROMETHEUS_IMAGE")
    shared.require(JOB_IMAGES.get(job, "PROMETHEUS_IMAGE"))
    if job == "redis":  # its targets are the environments' Redis servers
        for env in ("dev", "stg", "prod"):
            shared.deploy(env)

    def targets_up():
        active = _prometheus(shared, "/api/v1/targets?state=active").json()["data"]["activeTargets"]
        mine = [t for t in active if t["labels"]["job"] == job]
        return mine and all(t["health"] == "up" for t in mine) and mine

    shared.wait_for(targets_up, timeout=180, what=f"Prometheus job {job} to be up")


def test_prometheus_scrapes_traefik_metrics(shared):
    shared.require("PROMETHEUS_IMAGE")

    def traefik_series():
        response = _prometheus(shared, "/api/v1/query?query=traefik_entrypoint_requests_total")
        return response.json()["data"]["result"]

    shared.wait_for(traefik_series, timeout=180, what="Traefik metrics in Prometheus")


# --- Loki and the collector -------------------------------------------------------------


def _grafana_auth(shared):
    values = shared.secrets()
    return values["grafana_admin_user"], values["grafana_admin_password"]


def test_a_logged_line_reaches_loki_with_its_labels(shared):
    shared.require("LOKI_IMAGE")
    shared.require("ALLOY_IMAGE")
    image = shared.require("GRAFANA_IMAGE")  # Loki is queried through Grafana's proxy
    token = f"acceptance-{uuid.uuid4().hex}"
    probe = shared.client.services.create(
        image,
        name="acceptance-logprobe",
        entrypoint=["/bin/sh", "-c"],
        command=[f"while true; do echo {token}; sleep 2; done"],
        networks=[MONITORING_NETWORK],
        labels={"com.docker.stack.namespace": "acceptance"},
        container_labels={"com.nextcandle.image": image},
    )
    try:
        query = (
            '{service="acceptance-logprobe", stack="acceptance", '
            f'container=~"acceptance-logprobe.*", image="{image}"}} |= "{token}"'
        )

        def found():
            response = shared.web(
                "grafana.localhost",
                "/api/datasources/proxy/uid/loki/loki/api/v1/query_range",
                params={"query": query, "start": str(int((time.time() - 600) * 1e9))},
                auth=_grafana_auth(shared),
            )
            return response.json().get("data", {}).get("result")

        shared.wait_for(found, timeout=180, what="the probe's line in Loki")
    finally:
        probe.remove()


# --- Grafana and n8n --------------------------------------------------------------------


def test_grafana_health(shared):
    shared.require("GRAFANA_IMAGE")
    response = shared.web("grafana.localhost", "/api/health")
    assert response.status_code == 200 and response.json()["database"] == "ok"


@pytest.mark.parametrize("uid", ["prometheus", "loki"])
def test_grafana_provisioned_data_source(shared, uid):
    shared.require("GRAFANA_IMAGE")
    response = shared.web(
        "grafana.localhost", f"/api/datasources/uid/{uid}/health", auth=_grafana_auth(shared)
    )
    assert response.status_code == 200 and response.json()["status"] == "OK", response.text


def test_n8n_healthz(shared):
    shared.require("N8N_IMAGE")
    response = shared.wait_for(
        lambda: (r := shared.web("n8n.localhost", "/healthz")).status_code == 200 and r,
        timeout=180,
        what="n8n /healthz",
    )
    assert response.json()["status"] == "ok"


# --- collectors -------------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(COLLECTORS))
def test_collectors_run_one_task_per_node(shared, service):
    shared.require(COLLECTORS[service])
    nodes = shared.client.nodes.list()
    tasks = [
        t
        for t in shared.client.services.get(f"shared_{service}").tasks()
        if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
    ]
    assert sorted(t["NodeID"] for t in tasks) == sorted(n.id for n in nodes)


def test_prometheus_is_not_routed_on_public_host_names(shared):
    """Prometheus is routed only on a local host name, never on the public domain."""
    shared.require("PROMETHEUS_IMAGE")
    domain = shared.settings.shared_domain
    assert shared.web(f"prometheus.{domain}", "/-/healthy").status_code == 404
