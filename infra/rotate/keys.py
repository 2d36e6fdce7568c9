"""The table of keys that can be rotated, how each new value takes effect, and which stacks
and services a key's new value reaches."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import yaml

from infra import secrets
from infra.catalog import CORE, DEPLOY_ALL, ENVIRONMENTS, SHARED
from infra.errors import SettingsError
from infra.plan import stack_files
from infra.settings import Settings

Report = Callable[[str], None]

LIVE_POSTGRES = "postgres"
LIVE_GRAFANA = "grafana"
RESTART = "restart"  # the roll onto the new secret version is the whole change
RESTART_N8N = "restart n8n"  # as RESTART; checked by logging in to n8n


@dataclass(frozen=True)
class Rotatable:
    """A key of secrets.yml that can be rotated, and how its new value takes effect."""

    key: str
    stack: str  # the stack whose service holds the value live
    service: str  # that service: told the new value (unless RESTART), then checked
    live: str  # LIVE_POSTGRES, LIVE_GRAFANA, RESTART or RESTART_N8N
    effect: str  # one line for the plan
    checked: bool = True  # step 5 can log in with the new value and fail with the old one
    derived: tuple[str, ...] = ()  # keys made again from the new value


def _table() -> tuple[dict[str, Rotatable], dict[str, str]]:
    rotatable: dict[str, Rotatable] = {}
    read_only: dict[str, str] = {}
    for env in ENVIRONMENTS:
        rotatable[f"{env}_postgres_password"] = Rotatable(
            f"{env}_postgres_password",
            env,
            f"{env}_postgres",
            LIVE_POSTGRES,
            f"ALTER ROLE in the running {env}_postgres (a SCRAM verifier on psql's stdin)",
        )
        rotatable[f"{env}_redis_password"] = Rotatable(
            f"{env}_redis_password",
            env,
            f"{env}_redis",
            RESTART,
            f"{env}_redis restarts stop-first with the new requirepass; its AOF keeps the data",
        )
        reason = "renaming it is a migration of the data, not a rotation"
        read_only[f"{env}_postgres_user"] = f"the role's name, not a secret; {reason}"
        read_only[f"{env}_postgres_db"] = f"the database's name, not a secret; {reason}"
    rotatable["grafana_admin_password"] = Rotatable(
        "grafana_admin_password",
        SHARED,
        "shared_grafana",
        LIVE_GRAFANA,
        "grafana cli admin reset-admin-password --password-from-stdin in shared_grafana "
        "(from another node: PUT /api/user/password through Grafana's HTTP API)",
    )
    for key in ("s3_access_key", "s3_secret_key"):
        rotatable[key] = Rotatable(
            key,
            SHARED,
            "shared_seaweedfs",
            RESTART,
            "shared_seaweedfs restarts with the new S3 identity; S3 clients need the new keys",
            checked=False,
        )
    rotatable["traefik_dashboard_password"] = Rotatable(
        "traefik_dashboard_password",
        CORE,
        "core_traefik",
        RESTART,
        "the htpasswd line is made again; core_traefik restarts with it",
        checked=False,
        derived=("traefik_dashboard_htpasswd",),
    )
    rotatable["n8n_password"] = Rotatable(
        "n8n_password",
        SHARED,
        "shared_n8n",
        RESTART_N8N,
        "shared_n8n restarts with the new owner password hash; n8n applies it at start",
    )
    read_only.update(
        {
            "grafana_admin_user": "a user name, not a secret",
            "traefik_dashboard_user": "a user name, not a secret",
            "n8n_user": "a user name, not a secret",
            "traefik_dashboard_htpasswd": "made from traefik_dashboard_password: rotate that",
            "n8n_encryption_key": (
                "n8n encrypts its stored credentials with it; a new key would make them unreadable"
            ),
        }
    )
    return rotatable, read_only


ROTATABLE, READ_ONLY = _table()


def check_key(key: str) -> Rotatable:
    """The table entry of `key`; one line naming the rotatable keys if there is none."""
    if key in ROTATABLE:
        return ROTATABLE[key]
    if key in READ_ONLY:
        raise SettingsError(f"{key} cannot be rotated: {READ_ONLY[key]}.")
    raise SettingsError(
        f"unknown secret {key!r}. Rotatable: {', '.join(ROTATABLE)}."
        if key
        else f"no key given. Rotatable: {', '.join(ROTATABLE)}."
    )


# --- Which stacks and services a key reaches ----------------------------------------------------


def affected_secrets(values: Mapping[str, str], keys: tuple[str, ...]) -> dict[str, list[str]]:
    """Per stack, the Docker secret keys whose content depends on any of `keys`: each
    renderer is run with the values as they are and with those keys changed."""
    changed = {**values, **{key: values.get(key, "") + "-changed" for key in keys}}
    found: dict[str, list[str]] = {}
    for stack, renderers in secrets.DOCKER_SECRETS.items():
        for name, render in renderers.items():
            try:
                if render(values, stack) != render(changed, stack):
                    found.setdefault(stack, []).append(name)
            except KeyError:  # a value the platform has not got (an .env token): not ours
                continue
    return found


def rolling_services(settings: Settings, affected: Mapping[str, list[str]]) -> list[str]:
    """The services whose definitions mount one of the affected secrets (left-out services,
    DISABLED_SERVICES, excluded): the services the redeploy rolls."""
    services = []
    for stack, keys in affected.items():
        for path in stack_files(stack, True, settings.stacks_dir):
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for name, spec in (document.get("services") or {}).items():
                mounted = {
                    ref["source"] if isinstance(ref, dict) else ref
                    for ref in spec.get("secrets") or []
                }
                full = f"{stack}_{name}"
                if mounted & set(keys) and full not in settings.disabled_services:
                    services.append(full)
    return sorted(set(services))


def stacks_in_order(rotatable: Rotatable, stacks) -> list[str]:
    """The key's own stack first (its service changes first), then the others."""
    order = [rotatable.stack] + [s for s in DEPLOY_ALL if s != rotatable.stack]
    return [stack for stack in order if stack in stacks]
