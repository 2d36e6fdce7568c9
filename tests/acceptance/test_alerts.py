"""Alerts reach a person (DESIGN decision 13): a rule fires in Prometheus, Alertmanager sends
it to the receiver configured in .env, and the resolution follows; `invoke alerts`,
`invoke status` and `invoke alerts.test` tell the operator.

The receiver is a webhook, standing in for Slack: a small HTTP server on the `monitoring`
network that prints every notification it gets to its log. Alertmanager's route timings are
shortened through the same .env settings an operator has (ALERT_GROUP_WAIT, ...), so the
test waits for the rule's `for` and the evaluation, not for five-minute group intervals.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import time

import pytest
import yaml

from infra.alerts import config as alerts_config
from infra.alerts import receivers as alert_receivers
from infra.settings import CONFIGS_DIR, load_settings
from tests.acceptance import dashboards

RECEIVER = "nextcandle-alert-receiver"
RECEIVER_PORT = 8080
REDIS = "dev_redis"
RULE = "RedisDown"
# Short route timings for the test (an operator's defaults are 30s, 5m, 4h).
TIMINGS = {"ALERT_GROUP_WAIT": "2s", "ALERT_GROUP_INTERVAL": "5s", "ALERT_REPEAT_INTERVAL": "1h"}
# Prints each request body on one line, prefixed, to the container's log.
RECEIVER_SCRIPT = f"""
require('http').createServer((request, response) => {{
  let body = '';
  request.on('data', chunk => body += chunk);
  request.on('end', () => {{
    console.log('NOTIFICATION ' + body.replace(/\\n/g, ' '));
    response.end('ok');
  }});
}}).listen({RECEIVER_PORT}, () => console.log('LISTENING'));
"""


def _rule(name: str) -> dict:
    for path in sorted((CONFIGS_DIR / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text()).get("groups") or []:
            for rule in group.get("rules") or []:
                if rule.get("alert") == name:
                    return {**rule, "interval": group.get("interval")}
    raise AssertionError(f"no rule {name} under configs/prometheus/rules")


def _prometheus_intervals() -> tuple[float, float]:
    document = yaml.safe_load((CONFIGS_DIR / "prometheus" / "prometheus.yml").read_text())
    glob = document["global"]
    return alert_receivers.seconds(glob["scrape_interval"]), alert_receivers.seconds(
        glob["evaluation_interval"]
    )


@pytest.fixture(scope="module")
def receiver(platform):
    """The webhook receiver container on `monitoring`; yields a reader of what it got."""
    image = platform.require("N8N_IMAGE")  # any image with node; the receiver is a script
    platform.deploy("core")
    container = platform.client.containers.run(
        image,
        entrypoint=["node", "-e", RECEIVER_SCRIPT],
        command=[],
        name=RECEIVER,
        network="monitoring",
        labels={"org.nextcandle.acceptance": "alert-receiver"},
        user="1000",
        detach=True,
    )
    try:
        platform.wait_for(
            lambda: b"LISTENING" in container.logs(), timeout=60, what="the receiver to listen"
        )

        def notifications() -> list[dict]:
            lines = container.logs().decode(errors="replace").splitlines()
            return [
                json.loads(line.split(" ", 1)[1])
                for line in lines
                if line.startswith("NOTIFICATION ")
            ]

        yield notifications
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def alerting(platform, receiver):
    """dev and shared deployed, shared with the webhook receiver and short route timings;
    the repository's settings back afterwards."""
    platform.deploy_requiring(
        {
            "dev": [
                "POSTGRES_IMAGE",
                "REDIS_IMAGE",
                "POSTGRES_EXPORTER_IMAGE",
                "REDIS_EXPORTER_IMAGE",
            ],
            "shared": ["PROMETHEUS_IMAGE", "ALERTMANAGER_IMAGE"],
        }
    )
    overrides = {"ALERT_WEBHOOK_URL": f"http://{RECEIVER}:{RECEIVER_PORT}/hook", **TIMINGS}
    settings = dataclasses.replace(
        platform.settings, values={**platform.settings.values, **overrides}
    )
    platform.apply("shared", settings=settings)
    try:
        yield settings, overrides
    finally:
        platform.apply("shared")


def _firing(notifications, state: str, alertname: str, **labels) -> list[dict]:
    return [
        alert
        for n in notifications()
        for alert in n.get("alerts", [])
        if alert["status"] == state
        and alert["labels"].get("alertname") == alertname
        and all(alert["labels"].get(k) == v for k, v in labels.items())
    ]


def _query(platform, promql: str) -> list[dict]:
    response = platform.web("prometheus.localhost", "/api/v1/query", params={"query": promql})
    body = response.json()
    assert body.get("status") == "success", body
    return body["data"]["result"]


def test_redis_down_reaches_the_receiver_and_so_does_its_resolution(platform, alerting, receiver):
    settings, overrides = alerting
    rule = _rule(RULE)
    scrape, evaluation = _prometheus_intervals()
    group_wait = alert_receivers.seconds(TIMINGS["ALERT_GROUP_WAIT"])
    # The rule's `for` plus one evaluation, plus what reaching it takes: a scrape that sees
    # Redis gone, Alertmanager's group wait, and the request itself.
    deadline = (
        alert_receivers.seconds(rule.get("for", "0s")) + evaluation + scrape + group_wait + 15
    )
    # Redis up and scraped first, so what follows is the fault's doing.
    platform.wait_for(
        lambda: [r for r in _query(platform, 'redis_up{env="dev"}') if r["value"][1] == "1"],
        timeout=120,
        what="dev Redis scraped as up",
    )
    service = platform.client.services.get(REDIS)
    service.scale(0)
    stopped = time.monotonic()
    try:
        firing = platform.wait_for(
            lambda: _firing(receiver, "firing", RULE, env="dev"),
            timeout=deadline,
            what=f"{RULE} at the receiver within {deadline:.0f} s (for + one evaluation + margins)",
        )
        print(
            f"acceptance: {RULE} reached the receiver "
            f"{time.monotonic() - stopped:.0f} s after the fault"
        )
        (alert, *_) = firing
        assert alert["labels"]["severity"] in ("critical", "warning")
        assert alert["annotations"].get("summary"), alert

        # The operator sees it: `invoke alerts` and `invoke status --json`.
        result = platform.invoke("alerts", **overrides)
        assert result.returncode == 0, result.stderr
        assert RULE in result.stdout and "env=dev" in result.stdout, result.stdout
        status = platform.invoke("status", "--json", **overrides)
        assert status.returncode == 0, status.stderr
        names = [a["name"] for a in json.loads(status.stdout)["alerts"]]
        assert RULE in names, names
    finally:
        platform.client.services.get(REDIS).scale(1)
    platform.wait_for(
        lambda: _firing(receiver, "resolved", RULE, env="dev"),
        timeout=deadline + 60,
        what=f"the resolved {RULE} at the receiver",
    )
    result = platform.invoke("alerts", "--json", **overrides)
    assert result.returncode == 0, result.stderr
    assert RULE not in [a["name"] for a in json.loads(result.stdout)], result.stdout


def test_the_receivers_credential_is_nowhere_but_in_its_secret(platform, alerting):
    """The webhook URL (a credential: such URLs carry their token) is in no service spec, no
    container's environment or arguments, and not in Alertmanager's configuration."""
    settings, overrides = alerting
    url = overrides["ALERT_WEBHOOK_URL"]
    service = platform.client.api.inspect_service("shared_alertmanager")
    assert url not in json.dumps(service)
    for container in platform.client.containers.list(
        filters={"label": "com.docker.swarm.service.name=shared_alertmanager"}
    ):
        assert url not in json.dumps(container.attrs)
    (config_ref,) = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Configs"]
    data = platform.client.configs.get(config_ref["ConfigID"]).attrs["Spec"]["Data"]
    assert url.encode() not in base64.b64decode(data)
    assert b"url_file: /run/secrets/alert_webhook_url" in base64.b64decode(data)


def test_alerts_test_reports_the_delivery_to_each_receiver(platform, alerting, receiver):
    settings, overrides = alerting
    result = platform.invoke("alerts.test", **overrides, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"webhook\s+delivered", result.stdout), result.stdout
    marker = re.search(r"instance=(invoke-alerts-test-\w+)", result.stdout).group(1)
    assert _firing(receiver, "firing", "NextcandleTestAlert", instance=marker), receiver()


def test_a_receiver_that_refuses_is_reported_as_not_delivered(platform, alerting):
    """The same command against a webhook nobody listens on: one line, exit code 1."""
    settings, overrides = alerting
    broken = {**overrides, "ALERT_WEBHOOK_URL": f"http://{RECEIVER}:{RECEIVER_PORT + 1}/hook"}
    platform.apply(
        "shared", settings=dataclasses.replace(settings, values={**settings.values, **broken})
    )
    try:
        result = platform.invoke("alerts.test", "--timeout=30", **broken, timeout=120)
    finally:
        platform.apply("shared", settings=settings)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"webhook\s+failed", result.stdout), result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: not delivered to webhook")


def test_every_environments_postgres_exporter_is_up_and_reads_postgres(platform):
    platform.deploy_requiring(
        {
            **{
                env: [
                    "POSTGRES_IMAGE",
                    "REDIS_IMAGE",
                    "POSTGRES_EXPORTER_IMAGE",
                    "REDIS_EXPORTER_IMAGE",
                ]
                for env in ("dev", "stg", "prod")
            },
            "shared": ["PROMETHEUS_IMAGE"],
        }
    )

    def every_env_up():
        targets = {
            r["metric"]["env"]: r["value"][1] for r in _query(platform, 'up{job="postgres"}')
        }
        pg_up = {r["metric"]["env"]: r["value"][1] for r in _query(platform, "pg_up")}
        wanted = {"dev": "1", "stg": "1", "prod": "1"}
        return targets == wanted and pg_up == wanted and (targets, pg_up)

    platform.wait_for(every_env_up, timeout=120, what="up and pg_up 1 for dev, stg and prod")


@pytest.mark.parametrize("receivers", ["none", "all"])
def test_alertmanager_accepts_the_generated_configuration(platform, receivers, tmp_path):
    """amtool check-config of the image the swarm runs, on every receiver's *_file option."""
    values = {}
    if receivers == "all":
        values = {
            "ALERT_WEBHOOK_URL": "https://hooks.example.com/x",
            "ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x",
            "ALERT_TELEGRAM_BOT_TOKEN": "1:x",
            "ALERT_TELEGRAM_CHAT_ID": "-100123",
            "ALERT_EMAIL_TO": "ops@example.com",
            "ALERT_EMAIL_FROM": "alerts@example.com",
            "ALERT_SMTP_SMARTHOST": "smtp.example.com:587",
            "ALERT_SMTP_USERNAME": "alerts@example.com",
            "ALERT_SMTP_PASSWORD": "x",
        }
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    settings = load_settings(environ={"ENV_FILE": str(env_file), "PATH": ""})
    rendered = alerts_config.render(settings.values)
    (team,) = yaml.safe_load(rendered)["receivers"]
    image = platform.require("ALERTMANAGER_IMAGE")
    result = dashboards.run_promtool(
        platform.swarm.outer,
        image,
        ["check-config", "alertmanager.yml"],
        {"alertmanager.yml": rendered},
        entrypoint="/bin/amtool",
    )
    assert result.ok, result.output
    assert "SUCCESS" in result.output, result.output
    expected = {"name"} | (
        {r.kind for r in alert_receivers.RECEIVERS} if receivers == "all" else set()
    )
    assert set(team) == expected, team
