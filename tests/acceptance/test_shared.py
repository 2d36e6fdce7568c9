"""Shared stack: S3, Prometheus targets, Loki ingestion, Grafana, n8n and the collectors."""

from __future__ import annotations

import re
import time
import uuid

import pytest
import requests
import yaml
from botocore.exceptions import ClientError

from infra import converge
from infra.catalog import CORE_PORTS
from infra.settings import CONFIGS_DIR

# Each Prometheus job, by the service whose image it needs (its target must run).
JOB_IMAGES = {
    "prometheus": "PROMETHEUS_IMAGE",
    "traefik": "TRAEFIK_IMAGE",
    "seaweedfs": "SEAWEEDFS_IMAGE",
    "alertmanager": "ALERTMANAGER_IMAGE",
    "cadvisor": "CADVISOR_IMAGE",
    "node-exporter": "NODE_EXPORTER_IMAGE",
    "backups": "NODE_EXPORTER_IMAGE",
    "redis": "REDIS_EXPORTER_IMAGE",
    "postgres": "POSTGRES_EXPORTER_IMAGE",
    "alloy": "ALLOY_IMAGE",
    "loki": "LOKI_IMAGE",
    "grafana": "GRAFANA_IMAGE",
    "n8n": "N8N_IMAGE",
}
# Jobs whose targets the suite never deploys, with the reason.
NOT_DEPLOYED = {
    "cloudflared": "the suite deploys core without the tunnel: cloudflared needs a Cloudflare "
    "tunnel token and Cloudflare's edge, neither of which a test may use",
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
    if job in NOT_DEPLOYED:
        pytest.skip(f"job {job}: {NOT_DEPLOYED[job]}")
    shared.require(JOB_IMAGES.get(job, "PROMETHEUS_IMAGE"))
    if job in ("redis", "postgres"):  # its targets are the environments' own exporters
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

ALLOY_CONFIG = CONFIGS_DIR / "alloy" / "config.alloy"
_RULE = re.compile(r"rule\s*\{(?P<body>[^{}]*)\}", re.S)
_SELECTOR = re.compile(r'^\{(?P<matchers>[^{}]*)\}\s*\|=\s*"(?P<line>[^"\\]*)"$')
_MATCHER = re.compile(
    r'\s*(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:\\.|[^"\\])*)"\s*'
)


def collector_rules() -> list[dict]:
    """The relabel rules of config.alloy's discovery.relabel "containers" block, in order:
    source_labels, regex (default "(.*)") and target_label of each."""
    text = ALLOY_CONFIG.read_text()
    block = text[text.index('discovery.relabel "containers"') :]
    block = block[: block.index("\n}\n")]
    rules = []
    for match in _RULE.finditer(block):
        body = re.sub(r"//[^\n]*", "", match.group("body"))
        sources = re.search(r"source_labels\s*=\s*\[([^\]]*)\]", body).group(1)
        regex = re.search(r'regex\s*=\s*"((?:\\.|[^"\\])*)"', body)
        rules.append(
            {
                "sources": re.findall(r'"([^"]+)"', sources),
                "regex": regex.group(1).encode().decode("unicode_escape") if regex else "(.*)",
                "target": re.search(r'target_label\s*=\s*"([^"]+)"', body).group(1),
            }
        )
    return rules


def collector_labels(container) -> dict[str, str]:
    """The stream labels the collector gives this container's lines: config.alloy's rules
    applied, as Prometheus relabelling does (replace: fully anchored regex, "$1", an empty
    result drops the label), to the meta labels Docker discovery derives from the container."""
    meta = {"__meta_docker_container_name": "/" + container.name}
    for key, value in (container.attrs["Config"].get("Labels") or {}).items():
        meta["__meta_docker_container_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
    labels: dict[str, str] = {}
    for rule in collector_rules():
        value = ";".join(meta.get(source, "") for source in rule["sources"])
        match = re.fullmatch(rule["regex"], value)
        if match is None:
            continue
        result = match.expand(r"\1") if match.groups() else ""
        if result:
            labels[rule["target"]] = result
        else:
            labels.pop(rule["target"], None)
    return labels


def log_query(labels: dict[str, str], line: str) -> str:
    matchers = ", ".join(f'{name}="{value}"' for name, value in sorted(labels.items()))
    return f'{{{matchers}}} |= "{line}"'


def parse_log_query(query: str) -> tuple[dict[str, str], str]:
    """A stream selector of equality matchers and one line filter, as LogQL writes them."""
    match = _SELECTOR.match(query)
    assert match, f"not a LogQL selector with a line filter: {query}"
    labels = {}
    for part in match.group("matchers").split(","):
        matcher = _MATCHER.fullmatch(part)
        assert matcher and matcher.group("op") == "=", f"bad matcher {part!r} in {query}"
        labels[matcher.group("name")] = matcher.group("value")
    return labels, match.group("line")


def test_the_collector_rules_emulated_here_follow_config_alloy():
    """The emulation above reads every rule of the file: a rule it cannot read fails here."""
    rules = collector_rules()
    assert {rule["target"] for rule in rules} >= {"container", "service", "stack", "image"}
    text = ALLOY_CONFIG.read_text()
    block = text[text.index('discovery.relabel "containers"') :]
    assert len(rules) == block[: block.index("\n}\n")].count("rule {")


def test_a_logged_line_reaches_loki_with_its_labels(shared):
    # Any image the swarm has with a shell: the probe only prints lines.
    image = shared.require("REDIS_IMAGE")
    token = f"acceptance-{uuid.uuid4().hex}"
    probe = shared.client.services.create(
        image,
        name="acceptance-logprobe",
        # For a service, `command` replaces the image's entrypoint and `args` are its arguments.
        command=["/bin/sh", "-c"],
        args=[f"while true; do echo {token}; sleep 2; done"],
        # Container labels, as a stack deploy gives them: the collector reads containers.
        container_labels={
            "com.docker.stack.namespace": "acceptance",
            "com.nextcandle.image": image,
        },
        # On the node this client's engine runs, where its container can be inspected.
        constraints=["node.role == manager"],
    )
    try:

        def probe_container():
            found = shared.client.containers.list(
                filters={"label": "com.docker.swarm.service.name=acceptance-logprobe"}
            )
            return found and found[0]

        container = shared.wait_for(probe_container, timeout=60, what="the probe's container")
        labels = collector_labels(container)
        assert labels == {
            "container": container.name,
            "service": "acceptance-logprobe",
            "stack": "acceptance",
            "image": image,
        }
        assert container.name.startswith("acceptance-logprobe.")
        query = log_query(labels, token)
        assert parse_log_query(query) == (labels, token)

        # From here on the log pipeline itself is needed.
        shared.require("ALLOY_IMAGE")
        shared.require("LOKI_IMAGE")
        shared.require("GRAFANA_IMAGE")  # Loki is queried through Grafana's data source proxy

        def found():
            response = shared.web(
                "grafana.localhost",
                "/api/datasources/proxy/uid/loki/loki/api/v1/query_range",
                params={"query": query, "start": str(int((time.time() - 600) * 1e9))},
                auth=_grafana_auth(shared),
            )
            return response.json().get("data", {}).get("result")

        streams = shared.wait_for(found, timeout=180, what="the probe's line in Loki")
        assert all(stream["stream"].items() >= labels.items() for stream in streams)
    finally:
        probe.remove()


def _grafana_auth(shared):
    values = shared.secrets()
    return values["grafana_admin_user"], values["grafana_admin_password"]


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


def _n8n_post(shared, path: str, body: dict) -> requests.Response:
    """A JSON POST to n8n through Traefik's web entry point, as a browser would send it."""
    url = f"http://127.0.0.1:{shared.port(CORE_PORTS['web'])}{path}"
    return requests.post(url, json=body, headers={"Host": "n8n.localhost"}, timeout=30)


def _assert_n8n_is_claimed(shared):
    """The owner of secrets.yml logs in; an anonymous owner setup is refused and its
    credentials are no account."""
    values = shared.secrets()
    settings = shared.wait_for(
        lambda: (r := shared.web("n8n.localhost", "/rest/settings")).status_code == 200 and r,
        timeout=180,
        what="n8n /rest/settings through Traefik",
    )
    assert settings.json()["data"]["userManagement"]["showSetupOnFirstLoad"] is False
    intruder = {
        "email": "intruder@example.test",
        "firstName": "In",
        "lastName": "Truder",
        "password": "Intruder-Passw0rd",
    }
    refused = _n8n_post(shared, "/rest/owner/setup", intruder)
    assert refused.status_code in (400, 401, 403), refused.text
    assert shared.n8n_login(intruder["email"], intruder["password"]).status_code == 401
    login = shared.n8n_login(values["n8n_user"], values["n8n_password"])
    assert login.status_code == 200, login.text
    assert login.json()["data"]["role"] == "global:owner"
    assert login.json()["data"]["email"] == values["n8n_user"]


def test_n8n_owner_is_the_one_of_secrets_yml_from_the_first_deploy(shared):
    shared.require("N8N_IMAGE")
    _assert_n8n_is_claimed(shared)


def test_n8n_owner_survives_a_redeploy_and_a_restart(shared):
    shared.require("N8N_IMAGE")
    _assert_n8n_is_claimed(shared)
    shared.apply("shared")
    _assert_n8n_is_claimed(shared)
    # A new task (node reboot, update) starts on the same data: the owner is applied again,
    # still with the password of secrets.yml, and the setup stays closed.
    shared.client.services.get("shared_n8n").force_update()
    converge.wait_converged(
        shared.client, "shared", changed={"shared_n8n"}, timeout=300, progress=lambda _: None
    )
    _assert_n8n_is_claimed(shared)


def test_prometheus_is_not_routed_on_public_host_names(shared):
    """Prometheus is routed only on a local host name, never on the public domain."""
    shared.require("PROMETHEUS_IMAGE")
    domain = shared.settings.shared_domain
    assert shared.web(f"prometheus.{domain}", "/-/healthy").status_code == 404


@pytest.mark.parametrize(("host", "variable"), [("n8n", "N8N_IMAGE"), ("grafana", "GRAFANA_IMAGE")])
def test_metrics_are_scraped_inside_but_not_routed_publicly(shared, host, variable):
    """/metrics is for Prometheus on the monitoring network; through Traefik (what the tunnel
    reaches) the router leaves it out, while the rest of the UI is routed."""
    shared.require(variable)
    domain = shared.settings.shared_domain
    for name in (f"{host}.localhost", f"{host}.{domain}"):
        shared.wait_for(
            lambda name=name: shared.web(name, "/").status_code in (200, 301, 302),
            timeout=180,
            what=f"{name} to be routed",
        )
        assert shared.web(name, "/metrics").status_code == 404, name
