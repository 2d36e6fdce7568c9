"""Who hears an alert: the receivers an operator configures in `.env` (ALERT_*), validated,
with the credential of each handed to Alertmanager as a Docker secret (DESIGN decision 13).

Pure: reads setting values, never the daemon. Any subset of the four kinds may be configured;
none configured leaves alerts visible in Alertmanager's UI and in `invoke alerts` only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from infra.errors import SettingsError

# Where the credentials are mounted in the Alertmanager task (stacks/shared.yml).
SECRETS_DIR = "/run/secrets"
# The content of a credential's Docker secret while its receiver is not configured: Docker
# refuses empty secrets, and the generated configuration never points at such a file.
UNSET = "not configured\n"


@dataclass(frozen=True)
class Receiver:
    """One kind of notification channel: the `.env` variables it reads and its secret."""

    kind: str  # the key in Alertmanager's receiver: webhook_configs, slack_configs, ...
    label: str  # for people: "webhook", "Slack", ...
    integration: str  # Alertmanager's `integration` label on its notification counters
    trigger: str  # the variable whose presence configures it
    secret: str  # the Docker secret (stack shared) holding the credential
    credential: str  # the .env variable that holds the credential


RECEIVERS: tuple[Receiver, ...] = (
    Receiver(
        "webhook_configs", "webhook", "webhook", "ALERT_WEBHOOK_URL",
        "alert_webhook_url", "ALERT_WEBHOOK_URL",
    ),
    Receiver(
        "slack_configs", "Slack", "slack", "ALERT_SLACK_WEBHOOK_URL",
        "alert_slack_api_url", "ALERT_SLACK_WEBHOOK_URL",
    ),
    Receiver(
        "telegram_configs", "Telegram", "telegram", "ALERT_TELEGRAM_BOT_TOKEN",
        "alert_telegram_bot_token", "ALERT_TELEGRAM_BOT_TOKEN",
    ),
    Receiver(
        "email_configs", "e-mail", "email", "ALERT_EMAIL_TO",
        "alert_smtp_password", "ALERT_SMTP_PASSWORD",
    ),
)  # fmt: skip

# Every ALERT_* setting with its default ("" = unset). Route timings follow Alertmanager's
# own defaults for group_wait/group_interval and a repeat of 4 hours.
DEFAULTS: dict[str, str] = {
    "ALERT_WEBHOOK_URL": "",
    "ALERT_SLACK_WEBHOOK_URL": "",
    "ALERT_SLACK_CHANNEL": "",  # empty: the webhook's own channel
    "ALERT_TELEGRAM_BOT_TOKEN": "",
    "ALERT_TELEGRAM_CHAT_ID": "",
    "ALERT_EMAIL_TO": "",
    "ALERT_EMAIL_FROM": "",
    "ALERT_SMTP_SMARTHOST": "",  # host:port
    "ALERT_SMTP_USERNAME": "",
    "ALERT_SMTP_PASSWORD": "",
    "ALERT_SMTP_REQUIRE_TLS": "on",
    "ALERT_GROUP_WAIT": "30s",
    "ALERT_GROUP_INTERVAL": "5m",
    "ALERT_REPEAT_INTERVAL": "4h",
}
TIMINGS = ("ALERT_GROUP_WAIT", "ALERT_GROUP_INTERVAL", "ALERT_REPEAT_INTERVAL")

# Prometheus' duration syntax, as Alertmanager parses it (model.ParseDuration).
_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
_SMARTHOST = re.compile(r"^[A-Za-z0-9.-]+:\d{1,5}$")
_ADDRESS = re.compile(r"^[^@\s,]+@[^@\s,]+$")


NONE_CONFIGURED = (
    "alerts: no receiver configured; alerts show in `invoke alerts`, `invoke status` and "
    "http://alertmanager.localhost only. Set ALERT_WEBHOOK_URL, ALERT_SLACK_WEBHOOK_URL, "
    "ALERT_TELEGRAM_BOT_TOKEN or ALERT_EMAIL_TO in .env and redeploy shared."
)


def seconds(duration: str) -> float:
    """A validated Prometheus duration (30s, 5m, 1h30m) in seconds."""
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(
        int(number) * units[unit] for number, unit in re.findall(r"(\d+)(ms|[ywdhms])", duration)
    )


def configured(values: Mapping[str, str]) -> tuple[Receiver, ...]:
    """The receivers whose trigger variable is set, in a fixed order."""
    return tuple(r for r in RECEIVERS if values.get(r.trigger, "").strip())


def secret_path(receiver: Receiver) -> str:
    return f"{SECRETS_DIR}/{receiver.secret}"


def validate(values: Mapping[str, str], where: str = "") -> None:
    """One line for the first mistake in the ALERT_* settings, before anything changes."""

    def get(name: str) -> str:
        return values.get(name, DEFAULTS.get(name, "")).strip()

    for name in ("ALERT_WEBHOOK_URL", "ALERT_SLACK_WEBHOOK_URL"):
        if get(name) and not _is_http_url(get(name)):
            # The value itself is not echoed: such URLs carry their token.
            raise SettingsError(
                f"{name}{where} is not an http(s) URL. Give the full URL, e.g. https://..."
            )
    if get("ALERT_TELEGRAM_BOT_TOKEN"):
        chat = get("ALERT_TELEGRAM_CHAT_ID")
        if not re.fullmatch(r"-?\d+", chat):
            raise SettingsError(
                f"ALERT_TELEGRAM_CHAT_ID={chat!r}{where} is not a chat id: with "
                "ALERT_TELEGRAM_BOT_TOKEN set, give the chat's numeric id (e.g. -1001234567890)."
            )
    if get("ALERT_EMAIL_TO"):
        for address in (a.strip() for a in get("ALERT_EMAIL_TO").split(",")):
            if not _ADDRESS.match(address):
                raise SettingsError(
                    f"ALERT_EMAIL_TO{where} has {address!r}, which is not an e-mail address. "
                    "Give addresses separated by commas."
                )
        if not _ADDRESS.match(get("ALERT_EMAIL_FROM")):
            raise SettingsError(
                f"ALERT_EMAIL_FROM={get('ALERT_EMAIL_FROM')!r}{where} is not an e-mail "
                "address: with ALERT_EMAIL_TO set, give the sender address."
            )
        if not _SMARTHOST.match(get("ALERT_SMTP_SMARTHOST")):
            raise SettingsError(
                f"ALERT_SMTP_SMARTHOST={get('ALERT_SMTP_SMARTHOST')!r}{where} is not "
                "host:port: with ALERT_EMAIL_TO set, give the SMTP server (smtp.example.com:587)."
            )
        if get("ALERT_SMTP_PASSWORD") and not get("ALERT_SMTP_USERNAME"):
            raise SettingsError(
                f"ALERT_SMTP_PASSWORD is set{where} but ALERT_SMTP_USERNAME is not. "
                "Give the SMTP user name too."
            )
    if get("ALERT_SMTP_REQUIRE_TLS").lower() not in ("on", "off"):
        raise SettingsError(
            f"ALERT_SMTP_REQUIRE_TLS={get('ALERT_SMTP_REQUIRE_TLS')!r}{where} is not valid. "
            "Valid: on, off (default on)."
        )
    for name in TIMINGS:
        if not get(name) or not _DURATION.match(get(name)) or not re.search(r"[1-9]", get(name)):
            raise SettingsError(
                f"{name}={get(name)!r}{where} is not a duration. Write it like 30s, 5m or 4h "
                f"(default {DEFAULTS[name]})."
            )


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
