"""backup.env, backup.shared, backup.prune, backup.upload: verified backups under BACKUP_ROOT,
retention, and their off-site copies."""

from pathlib import Path

from invoke import task

from infra.catalog import ENVIRONMENTS, SHARED
from infra.settings import check_target
from infra.tasks.common import HELP, operator_errors, settings


def _print_run(result) -> None:
    """After the run's own lines (the backup, then each backup pruned)."""
    print(f"record for Prometheus: {result.record}")
    if result.offsite is not None:
        print(f"off-site copy: {result.offsite.url}")
    if result.pruned is None:
        print("retention: nothing pruned (--keep-all or BACKUP_KEEP=all)")
    else:
        kept = len(result.pruned.plan.kept)
        print(
            f"retention (BACKUP_KEEP={result.pruned.plan.keep_policy}): "
            f"{len(result.pruned.removed)} pruned, {kept} kept"
        )


@task(help={"name": HELP["name"], "keep_all": HELP["keep_all"]}, auto_shortflags=False)
@operator_errors
def env(c, name="", keep_all=False):
    """Back up one environment's Postgres and Redis, verified; then prune (BACKUP_KEEP).

    pg_dump and a Redis RDB snapshot into BACKUP_ROOT/<env>/<UTC time>/, a record for
    Prometheus, then the older backups BACKUP_KEEP no longer keeps are removed."""
    from infra import backup

    check_target(name, tuple(ENVIRONMENTS))
    _print_run(backup.run_backup(settings(), name, keep_all=keep_all))


@task(help={"keep_all": HELP["keep_all"]}, auto_shortflags=False)
@operator_errors
def shared(c, keep_all=False):
    """Back up every object store bucket, Grafana's and n8n's data, verified; then prune.

    Into BACKUP_ROOT/shared/<UTC time>/, a record for Prometheus, then the older backups
    BACKUP_KEEP no longer keeps are removed."""
    from infra import backup

    _print_run(backup.run_backup(settings(), SHARED, keep_all=keep_all))


@task(
    help={
        "name": HELP["backup_target"],
        "dry_run": HELP["prune_dry_run"],
        "yes": HELP["prune_yes"],
    },
    auto_shortflags=False,
)
@operator_errors
def prune(c, name="", dry_run=False, yes=False):
    """Remove the backups of one target that BACKUP_KEEP no longer keeps (--dry-run shows them)."""
    from infra import backup

    config = settings()
    check_target(name, backup.TARGETS)
    folder, plan = backup.plan_prune(config, name)
    if dry_run or not plan.pruned:
        print(f"{folder} (BACKUP_KEEP={plan.keep_policy}):")
        for decision in plan.decisions:
            print(f"  {decision.describe()}")
        if not plan.decisions:
            print("  no backups")
        print(
            f"{len(plan.pruned)} to prune, {len(plan.kept)} kept"
            + (f". Apply: invoke backup.prune --name={name} --yes" if plan.pruned else "")
        )
        return
    if not yes:
        raise backup.BackupError(
            f"this removes {len(plan.pruned)} backups of {name} from {folder}. See which: "
            f"invoke backup.prune --name={name} --dry-run; remove them: "
            f"invoke backup.prune --name={name} --yes"
        )
    result = backup.prune(config, name)
    print(f"{len(result.removed)} pruned, {len(result.plan.kept)} kept in {folder}")


@task(
    help={"name": HELP["backup_target"], "from_": HELP["upload_from"]},
    auto_shortflags=False,
)
@operator_errors
def upload(c, name="", from_=""):
    """Copy one verified backup to the off-site bucket (BACKUP_S3_*) and read every file back.

    What every backup run does by itself when BACKUP_S3_BUCKET is set; this is for a copy that
    failed, or a backup made before the bucket was set."""
    from infra import backup

    config = settings()
    check_target(name, backup.TARGETS)
    if not from_:
        raise backup.BackupError(
            f"no backup given. Add --from=PATH (a directory under {config.backups / name})."
        )
    copy = backup.upload(config, name, Path(from_).expanduser().resolve())
    print(f"off-site copy: {copy.url}")
