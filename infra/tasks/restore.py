"""restore.env: put a verified backup into an environment (prod needs --yes)."""

from pathlib import Path

from invoke import task

from infra.catalog import ENVIRONMENTS
from infra.settings import check_target
from infra.tasks.common import HELP, operator_errors, settings


@task(
    help={"name": HELP["name"], "from_": HELP["backup_from"], "yes": HELP["yes"]},
    auto_shortflags=False,
)
@operator_errors
def env(c, name="", from_="", yes=False):
    """Restore a backup.env backup into an environment; its current data is backed up first."""
    from infra import backup

    check_target(name, tuple(ENVIRONMENTS))
    backup.refuse_prod_without_yes(name, yes, from_ or "PATH")
    if not from_:
        raise backup.BackupError(
            f"no backup given. Add --from=PATH (a directory under {settings().backups})."
        )
    result = backup.restore_env(settings(), name, Path(from_), yes=yes)
    tables = sum(result.tables.values())
    print(
        f"restored {name} from {result.source}: {len(result.tables)} tables ({tables} rows), "
        f"{result.redis_keys} Redis keys. Previous data: {result.safety_backup} "
        f"(backup), {result.redis_moved_aside} (Redis files moved aside)."
    )
