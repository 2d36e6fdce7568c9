"""Alert receivers from .env: validation, the generated Alertmanager configuration, and the
credentials' Docker secrets (DESIGN decision 13). No daemon: Alertmanager itself checks the
same configurations in tests/acceptance/test_alerts.py (amtool check-config)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import plan as planning
from infra import secrets
from infra.alerts import config, receivers
from infra.errors import SettingsError
from infra.settings import REPO_ROOT, STACKS_DIR, load_settings

ALL_RECEIVERS = {
    "ALERT_WEBHOOK_URL": "https://hooks.example.com/alerts?token=webhook-credential-0001",
    "ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/slack-credential-02",
    "ALERT_SLACK_CHANNEL": "#ops",
    "ALERT_TELEGRAM_BOT_TOKEN": "123456:telegram-credential-0003",
    "ALERT_TELEGRAM_CHAT_ID": "-1001234567890",
    "ALERT_EMAIL_TO": "ops@example.com, oncall@example.com",
    "ALERT_EMAIL_FROM": "alerts@example.com",
    "ALERT_SMTP_SMARTHOST": "smtp.example.com:587",
    "ALERT_SMTP_USERNAME": "alerts@example.com",
    "ALERT_SMTP_PASSWORD": "smtp-credential-0004",
}
CREDENTIALS = {r.credential for r in receivers.RECEIVERS}


def _load(environ, **values):
    return load_settings(REPO_ROOT, {**environ, **values})


def _document(settings) -> dict:
    return yaml.safe_load(config.render(settings.values))


def test_with_nothing_configured_every_alert_goes_to_a_receiver_without_channels(settings):
    document = _document(settings)
    assert document["route"]["receiver"] == config.TEAM
    assert document["receivers"] == [{"name": config.TEAM}]
    assert receivers.configured(settings.values) == ()


def test_every_receiver_reads_its_credential_from_its_secret_file_only(environ):
    settings = _load(environ, **ALL_RECEIVERS)
    rendered = config.render(settings.values).decode()
    for name in CREDENTIALS:
        assert ALL_RECEIVERS[name] not in rendered, name
    (team,) = yaml.safe_load(rendered)["receivers"]
    assert team["webhook_configs"] == [
        {"url_file": "/run/secrets/alert_webhook_url", "send_resolved": True}
    ]
    assert team["slack_configs"][0]["api_url_file"] == "/run/secrets/alert_slack_api_url"
    assert team["slack_configs"][0]["channel"] == "#ops"
    assert team["telegram_configs"][0]["bot_token_file"] == "/run/secrets/alert_telegram_bot_token"
    assert team["telegram_configs"][0]["chat_id"] == -1001234567890  # an integer, as required
    email = team["email_configs"][0]
    assert email["auth_password_file"] == "/run/secrets/alert_smtp_password"
    assert (email["to"], email["smarthost"], email["require_tls"]) == (
        "ops@example.com, oncall@example.com",
        "smtp.example.com:587",
        True,
    )
    assert all(channel[0]["send_resolved"] for key, channel in team.items() if key != "name")


def test_each_receiver_alone_configures_only_itself(environ):
    for receiver in receivers.RECEIVERS:
        needed = {
            k: v
            for k, v in ALL_RECEIVERS.items()
            if k == receiver.trigger
            or (receiver.kind == "telegram_configs" and k == "ALERT_TELEGRAM_CHAT_ID")
            or (receiver.kind == "email_configs" and k.startswith(("ALERT_EMAIL", "ALERT_SMTP")))
        }
        (team,) = _document(_load(environ, **needed))["receivers"]
        assert set(team) == {"name", receiver.kind}, receiver.label


def test_the_secrets_hold_the_credentials_or_a_marker_never_nothing(environ):
    configured = _load(environ, **ALL_RECEIVERS)
    values = secrets.with_env_tokens({}, configured)
    for receiver in receivers.RECEIVERS:
        data = secrets.render_secret("shared", receiver.secret, values).decode()
        assert data == ALL_RECEIVERS[receiver.credential]
    bare = secrets.with_env_tokens({}, _load(environ))
    for receiver in receivers.RECEIVERS:
        assert secrets.render_secret("shared", receiver.secret, bare).decode() == receivers.UNSET


def test_the_stack_mounts_exactly_the_receivers_secrets_and_the_generated_config():
    shared = yaml.safe_load((STACKS_DIR / "shared.yml").read_text())
    service = shared["services"]["alertmanager"]
    assert set(service["secrets"]) == {r.secret for r in receivers.RECEIVERS}
    assert {r.secret for r in receivers.RECEIVERS} <= set(shared["secrets"])
    (mounted,) = service["configs"]
    assert mounted == {
        "source": config.ALERTMANAGER_CONFIG_KEY,
        "target": "/etc/alertmanager/alertmanager.yml",
    }
    assert shared["configs"][config.ALERTMANAGER_CONFIG_KEY]["external"] is True
    assert f"--config.file={mounted['target']}" in service["command"]


def test_a_changed_receiver_renames_the_config_and_leaves_the_rest(environ):
    values = {key: "x" * 40 for key in secrets.SCHEMA_KEYS}

    def plan(settings):  # with the .env tokens, as a deploy reads them
        return planning.plan_stack("shared", settings, secrets.with_env_tokens(values, settings))

    before = plan(_load(environ))
    after = plan(_load(environ, ALERT_WEBHOOK_URL=ALL_RECEIVERS["ALERT_WEBHOOK_URL"]))
    names = lambda p: {o.key: o.name for o in (*p.configs, *p.secrets)}  # noqa: E731
    changed = {k for k in names(before) if names(before)[k] != names(after)[k]}
    assert changed == {"alertmanager", "alert_webhook_url"}


def test_route_timings_come_from_the_settings(environ):
    route = _document(
        _load(
            environ, ALERT_GROUP_WAIT="5s", ALERT_GROUP_INTERVAL="20s", ALERT_REPEAT_INTERVAL="1h"
        )
    )["route"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        "5s",
        "20s",
        "1h",
    )
    assert receivers.seconds("1h30m") == 5400


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ALERT_WEBHOOK_URL": "hooks.example.com/x"}, "ALERT_WEBHOOK_URL is not an http(s) URL"),
        ({"ALERT_SLACK_WEBHOOK_URL": "ftp://x/y"}, "ALERT_SLACK_WEBHOOK_URL is not an http(s)"),
        ({"ALERT_TELEGRAM_BOT_TOKEN": "1:x"}, "ALERT_TELEGRAM_CHAT_ID='' is not a chat id"),
        (
            {"ALERT_TELEGRAM_BOT_TOKEN": "1:x", "ALERT_TELEGRAM_CHAT_ID": "ops"},
            "ALERT_TELEGRAM_CHAT_ID='ops' is not a chat id",
        ),
        ({"ALERT_EMAIL_TO": "ops"}, "ALERT_EMAIL_TO has 'ops', which is not an e-mail address"),
        ({"ALERT_EMAIL_TO": "ops@example.com"}, "ALERT_EMAIL_FROM='' is not an e-mail address"),
        (
            {"ALERT_EMAIL_TO": "a@b.c", "ALERT_EMAIL_FROM": "d@e.f"},
            "ALERT_SMTP_SMARTHOST='' is not host:port",
        ),
        (
            {
                "ALERT_EMAIL_TO": "a@b.c",
                "ALERT_EMAIL_FROM": "d@e.f",
                "ALERT_SMTP_SMARTHOST": "smtp.e.f:25",
                "ALERT_SMTP_PASSWORD": "p",
            },
            "ALERT_SMTP_PASSWORD is set but ALERT_SMTP_USERNAME is not",
        ),
        ({"ALERT_SMTP_REQUIRE_TLS": "yes"}, "ALERT_SMTP_REQUIRE_TLS='yes' is not valid"),
        ({"ALERT_GROUP_WAIT": "soon"}, "ALERT_GROUP_WAIT='soon' is not a duration"),
        ({"ALERT_REPEAT_INTERVAL": "0s"}, "ALERT_REPEAT_INTERVAL='0s' is not a duration"),
    ],
)
def test_a_wrong_alert_setting_is_one_line_naming_it(environ, values, message):
    with pytest.raises(SettingsError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        _load(environ, **values)


def test_a_wrong_url_is_refused_without_echoing_it(environ):
    secret_url = "hooks.example.com/T000/credential-in-the-url"
    with pytest.raises(SettingsError) as error:
        _load(environ, ALERT_WEBHOOK_URL=secret_url)
    assert secret_url not in str(error.value)


def test_alerts_test_without_receivers_is_one_line_and_exit_1(environ):
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "alerts.test"],
        env={**environ, "PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent.sock"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no alert receiver is configured, so there is nothing to test. Set "
        "ALERT_WEBHOOK_URL, ALERT_SLACK_WEBHOOK_URL, ALERT_TELEGRAM_BOT_TOKEN or "
        "ALERT_EMAIL_TO in .env, run `invoke deploy.shared`, then retry."
    ]


def test_prometheus_loads_every_rules_file_and_alerts_through_alertmanager():
    """Each file under configs/prometheus/rules is a Docker config of Prometheus, mounted
    where prometheus.yml's rule_files glob finds it; none is mounted that does not exist."""
    shared = yaml.safe_load((STACKS_DIR / "shared.yml").read_text())
    rules_dir = REPO_ROOT / "configs" / "prometheus" / "rules"
    mounted = {
        shared["configs"][c["source"]]["file"]: c["target"]
        for c in shared["services"]["prometheus"]["configs"]
        if c["target"].startswith("/etc/prometheus/rules/")
    }
    assert sorted(mounted) == sorted(
        f"../configs/prometheus/rules/{p.name}" for p in rules_dir.glob("*.yml")
    )
    assert all(target == f"/etc/prometheus/rules/{Path(f).name}" for f, target in mounted.items())
    prometheus = yaml.safe_load(
        (REPO_ROOT / "configs" / "prometheus" / "prometheus.yml").read_text()
    )
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    (manager,) = prometheus["alerting"]["alertmanagers"]
    assert manager["dns_sd_configs"][0]["names"] == ["tasks.shared_alertmanager"]


def test_a_deploy_of_shared_says_where_alerts_go_or_that_they_go_nowhere(environ):
    from infra import report

    alone = report.access_info(_load(environ), ("shared",), None)
    assert receivers.NONE_CONFIGURED in alone.splitlines()
    webhook = report.access_info(
        _load(environ, ALERT_WEBHOOK_URL=ALL_RECEIVERS["ALERT_WEBHOOK_URL"]), ("shared",), None
    )
    assert "alerts go to: webhook" in webhook
    assert receivers.NONE_CONFIGURED not in webhook
    assert ALL_RECEIVERS["ALERT_WEBHOOK_URL"] not in webhook


def test_a_container_gone_between_the_look_and_the_exec_is_one_line(monkeypatch):
    """The task may end between finding its container and the exec: AlertsError (one line
    from the tasks, and `invoke status` shows it instead of failing), never a traceback."""
    import docker.errors

    from infra import engine
    from infra.alerts import api
    from infra.errors import AlertsError

    def gone(*args, **kwargs):
        raise docker.errors.APIError("409 Conflict", explanation="container is not running")

    monkeypatch.setattr(engine, "exec_with_stdin", gone)
    with pytest.raises(AlertsError, match="did not take the request .container is not running"):
        api.firing(api.Reached(client=None, container="abc", url=api.URL))
