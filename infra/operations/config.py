"""The settings of the operating state kept in the swarm (DESIGN decision 12): how long a
deploy lock lives without its holder, how many history records and how many old config and
secret versions are kept. Pure: reads setting values only."""

from __future__ import annotations

from collections.abc import Mapping

from infra.errors import SettingsError

# DEPLOY_LOCK_TTL: seconds after which a lock whose holder died (killed, machine gone) is
# taken over. Longer than any one operation: a deploy waits at most its --timeout (300 s by
# default) per stack and a rotation redeploys a few stacks, so 30 minutes leaves room; a
# holder that is still running is never taken over sooner.
# HISTORY_KEEP: operation records kept in the swarm (the oldest are removed beyond it).
# ROLLBACK_KEEP: how many recorded deploys of each stack a rollback can go back to; the
# config and secret versions they use are kept instead of pruned (0: old versions are pruned
# once a deploy converged, and a rollback finds only what is still in use).
DEFAULTS: dict[str, str] = {
    "DEPLOY_LOCK_TTL": "1800",
    "HISTORY_KEEP": "100",
    "ROLLBACK_KEEP": "3",
}

_LIMITS = {
    "DEPLOY_LOCK_TTL": (1, 7 * 24 * 3600, "seconds"),
    "HISTORY_KEEP": (1, 1000, "records"),
    "ROLLBACK_KEEP": (0, 100, "deploys"),
}


def number(values: Mapping[str, str], name: str, where: str = "") -> int:
    """One of DEFAULTS as a whole number within its limits, or one clear SettingsError."""
    text = (values.get(name) or DEFAULTS[name]).strip()
    low, high, unit = _LIMITS[name]
    if not text.isdigit() or not low <= int(text) <= high:
        raise SettingsError(
            f"{name}={text!r}{where} is not a whole number from {low} to {high} ({unit}). "
            f"Fix it in .env (default {DEFAULTS[name]})."
        )
    return int(text)


def validate(values: Mapping[str, str], where: str = "") -> None:
    for name in DEFAULTS:
        number(values, name, where)
