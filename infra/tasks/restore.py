"""restore.env, restore.shared: put a verified backup back (prod and shared need --yes)."""

from pathlib import Path

from invoke import task

from infra.catalog import ENVIRONMENTS, check_target
from infra.tasks.common import HELP, locked, operator_errors, settings


@task(
    help={
        "name": HELP["name"],
        "from_": HELP["restore_from"],
        "yes": HELP["yes"],
        "lock_wait": HELP["lock_wait"],
        "message": HELP["message"],
    },
    auto_shortflags=False,
)
@operator_errors
def env(c, name="", from_="", yes=False, lock_wait="0", message=""):
    """Restore a backup.env backup into an environment; its current data is backed up first.

    --from is a local backup directory, or s3://BUCKET/<env>/<time> for its off-site copy
    (downloaded, checked, then restored the same way)."""
    from infra import backup

    check_target(name, tuple(ENVIRONMENTS))
    backup.refuse_prod_without_yes(name, yes, from_ or "PATH")
    config = settings()
    if not from_:
        raise backup.BackupError(
            f"no backup given. Add --from=PATH (a directory under {config.backups}) or "
            "--from=s3://BUCKET/<env>/<time>."
        )
    command = f"restore.env --name={name}"
    if from_.startswith(backup.offsite.SCHEME):
        # A bad address or missing keys is one line before the deploy lock is taken.
        bucket, _prefix = backup.offsite.parse_url(from_)
        backup.offsite.remote(config, bucket)
        with (
            locked(config, "restore", name, command, lock_wait, message),
            backup.offsite.downloaded(config, from_, "env") as (local, _manifest),
        ):
            result = backup.restore_env(config, name, local, yes=yes)
        source = from_
    else:
        # A wrong path is one line before the deploy lock is taken (restore_env checks it again).
        backup.validate(Path(from_).expanduser().resolve(), "env", config.backups)
        with locked(config, "restore", name, command, lock_wait, message):
            result = backup.restore_env(config, name, Path(from_), yes=yes)
        source = str(result.source)
    tables = sum(result.tables.values())
    print(
        f"restored {name} from {source}: {len(result.tables)} tables ({tables} rows), "
        f"{result.redis_keys} Redis keys. Previous data: {result.safety_backup} "
        f"(backup), {result.redis_moved_aside} (Redis files moved aside)."
    )


@task(
    help={
        "from_": HELP["shared_from"],
        "yes": HELP["shared_yes"],
        "lock_wait": HELP["lock_wait"],
        "message": HELP["message"],
    },
    auto_shortflags=False,
)
@operator_errors
def shared(c, from_="", yes=False, lock_wait="0", message=""):
    """Restore a backup.shared backup: the objects (content type and metadata), Grafana's and
    n8n's data. The shared stack's current data is backed up first; Grafana and n8n stop
    while their data directories are replaced (the previous ones are moved aside)."""
    from infra import backup

    config = settings()
    if not from_:
        raise backup.BackupError(
            f"no backup given. Add --from=PATH (a directory under {config.backups / 'shared'})."
        )
    from infra.backup.shared_restore import check_backup

    # A wrong path or no --yes is one line before the deploy lock is taken (checked again).
    check_backup(config, Path(from_).expanduser().resolve(), yes)
    with locked(config, "restore", "shared", "restore.shared", lock_wait, message):
        result = backup.restore_shared(config, Path(from_), yes=yes)
    parts = [f"{result.objects} objects in {result.buckets} buckets"]
    parts += [f"{part}'s data" for part in result.directories]
    aside = "".join(f", {path} ({part}'s data moved aside)" for part, path in result.moved_aside)
    print(
        f"restored shared from {result.source}: {', '.join(parts)}. "
        f"Previous data: {result.safety_backup} (backup){aside}."
    )
