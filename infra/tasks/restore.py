"""restore.env: put a verified backup into an environment (prod needs --yes)."""

from pathlib import Path

from invoke import task

from infra.catalog import ENVIRONMENTS
from infra.settings import check_target
from infra.tasks.common import HELP, locked, operator_errors, settings


@task(
    help={
        "name": HELP["name"],
        "from_": HELP["backup_from"],
        "yes": HELP["yes"],
        "lock_wait": HELP["lock_wait"],
        "message": HELP["message"],
    },
    auto_shortflags=False,
)
@operator_errors
def env(c, name="", from_="", yes=False, lock_wait="0", message=""):
    """Restore a backup.env backup into an environment; its current data is backed up first."""
    from infra import backup

    check_target(name, tuple(ENVIRONMENTS))
    backup.refuse_prod_without_yes(name, yes, from_ or "PATH")
    if not from_:
        raise backup.BackupError(
            f"no backup given. Add --from=PATH (a directory under {settings().backups})."
        )
    config = settings()
    # A wrong path is one line before the deploy lock is taken (restore_env checks it again).
    backup.validate(Path(from_).expanduser().resolve(), "env", config.backups)
    with locked(config, "restore", name, f"restore.env --name={name}", lock_wait, message):
        result = backup.restore_env(config, name, Path(from_), yes=yes)
    tables = sum(result.tables.values())
    print(
        f"restored {name} from {result.source}: {len(result.tables)} tables ({tables} rows), "
        f"{result.redis_keys} Redis keys. Previous data: {result.safety_backup} "
        f"(backup), {result.redis_moved_aside} (Redis files moved aside)."
    )
