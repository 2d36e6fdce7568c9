"""What every task module shares: help strings, loading settings, turning errors into Exit."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from invoke.exceptions import Exit

from infra.catalog import ENVIRONMENTS, STACKS
from infra.errors import InfraError, SettingsError

if TYPE_CHECKING:
    from infra.settings import Settings

HELP = {
    "name": f"environment: {', '.join(ENVIRONMENTS)}",
    "dry_run": "print the plan and change nothing (needs no Docker daemon)",
    "no_tunnel": "deploy core without the Cloudflare tunnel (no CLOUDFLARE_TUNNEL_TOKEN needed)",
    "no_wait": "return after `docker stack deploy` instead of waiting for convergence",
    "timeout": "seconds to wait for the services to converge (default 300)",
    "cleanup": "also remove the stack's unused secrets and configs (never data)",
    "verbose": "add tasks with node and error, networks and DATA_ROOT disk use",
    "json": "print the status as JSON, for scripts",
    "service": "full service name, e.g. dev_postgres (see `invoke status`)",
    "follow": "keep printing new log lines",
    "tail": "how many past lines to show (default 100)",
    "target": f"one of: {', '.join(STACKS)}, all",
    "firewall_dry_run": "print the iptables commands and change nothing (= firewall.plan)",
    "key": "the secrets.yml key to rotate, e.g. dev_postgres_password (a wrong one lists them)",
}


def settings() -> Settings:
    # Imported here: `invoke --list` and `--help` never read the settings (with .env's
    # parser, the runner and the receivers: some 20 ms of a 0.3 s goal).
    from infra.settings import load_settings

    return load_settings()


def number(value: object, option: str, example: str, zero: bool = False) -> float:
    """A numeric option as given on the command line (options take strings, so a word is
    this one line, not the parser's traceback): finite, above 0 (or 0 when `zero`)."""
    try:
        parsed = float(str(value).strip())
    except ValueError:
        parsed = float("nan")
    if not math.isfinite(parsed) or parsed < 0 or (parsed == 0 and not zero):
        least = "0 or more" if zero else "above 0"
        raise SettingsError(
            f"--{option}={value!r} is not a number {least}. Give one like --{option}={example}."
        )
    return parsed


def whole_number(value: object, option: str, example: str) -> int:
    """`number` for counts: a whole number, 0 or more."""
    parsed = number(value, option, example, zero=True)
    if parsed != int(parsed):
        raise SettingsError(
            f"--{option}={value!r} is not a whole number. Give one like --{option}={example}."
        )
    return int(parsed)


def operator_errors(task_body: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's InfraError into one line and exit code 1 (never a traceback)."""

    @functools.wraps(task_body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task_body(*args, **kwargs)
        except InfraError as exc:
            raise Exit(f"error: {exc}", code=1) from None

    return wrapper


HELP.update(
    {
        "backup_from": "the backup directory to restore, as `invoke backup.env` printed it",
        "yes": "confirm a restore into prod (it replaces prod's database and Redis data)",
        "keep_all": "prune nothing this time: keep every older backup whatever BACKUP_KEEP says",
        "backup_target": f"whose backups: {', '.join(ENVIRONMENTS)}, shared",
        "prune_dry_run": "list every backup with why it is kept, remove nothing",
        "prune_yes": "confirm: remove the backups BACKUP_KEEP no longer keeps",
        "schedule_install": "write the systemd timer and service (SYSTEMD_UNIT_DIR) and enable it",
        "schedule_remove": "disable and remove the systemd timer and service",
        "schedule_dry_run": "print the units --install would write, and change nothing",
        "drill_from": "drill this backup directory instead of the environment's newest",
        "upload_from": "the backup directory to copy off-site, as `invoke backup.*` printed it",
        "restore_from": (
            "the backup to restore: a directory `invoke backup.*` printed, or the "
            "s3://BUCKET/<target>/<time> address of its off-site copy"
        ),
        "shared_from": "the backup directory to restore, as `invoke backup.shared` printed it",
        "shared_yes": (
            "confirm: the objects, Grafana's and n8n's data are replaced (Grafana and n8n stop)"
        ),
        "app_file": "the app's compose file (see examples/app/compose.yml)",
        "app_image": "image reference for ${APP_IMAGE} in the file, e.g. my-app:1.4.2",
        "app": "the app's name (x-nextcandle: {app: NAME} in its file; see `invoke status`)",
    }
)

HELP.update(
    {
        "lock_wait": "seconds to wait for the deploy lock if another operation holds it "
        "(default 0: refuse at once, naming the holder)",
        "message": "a note kept with the lock and the history record, e.g. why",
        "diff": "print what the deploy would change in the running swarm, per service, and "
        "change nothing",
        "exit_code": "with --diff: exit 2 when anything would change (for CI gates)",
        "history_name": "only records that touch this stack, e.g. prod",
        "history_json": "print the records as JSON, for scripts",
        "history_limit": "how many of the newest records to show (default 20; 0: all)",
        "lock_yes": "confirm: remove the deploy lock whoever holds it",
        "rollback_to": "the history record to go back to (default: the newest recorded "
        "deploy that differs from what runs)",
        "with_secrets": "also bring back older secret versions (not after a rotation)",
        "rollback_dry_run": "print the record and what re-applying it changes; change nothing",
    }
)


def locked(
    config: Settings,
    action: str,
    target: str,
    command: str,
    lock_wait: str = "0",
    message: str = "",
):
    """The deploy lock and the history record around a mutating task (infra/operations).
    --lock-wait is read here, not by invoke, so a bad value is one line, not a traceback."""
    from infra.operations import run

    try:
        wait = float(lock_wait)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= 24 * 3600:
        raise Exit(
            f"error: --lock-wait={lock_wait!r} is not a number of seconds (0 to 86400).",
            code=1,
        )

    return run.operation(
        config,
        action,
        target,
        command,
        lock_wait=wait,
        message=message,
        report=lambda line: print(line, flush=True),
    )
