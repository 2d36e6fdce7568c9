"""backup.env, backup.shared, backup.prune, backup.upload: verified backups under BACKUP_ROOT,
retention, and their off-site copies."""

from pathlib import Path

from invoke import task

from infra.catalog import ENVIRONMENTS, SHARED, check_target
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
    if result.offsite_pruned is not None:
        remote = result.offsite_pruned
        print(
            f"off-site retention: {len(remote.removed)} pruned, {len(remote.plan.kept)} kept "
            f"in {remote.url}"
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
    help={
        "install": HELP["schedule_install"],
        "remove": HELP["schedule_remove"],
        "dry_run": HELP["schedule_dry_run"],
    },
    auto_shortflags=False,
)
@operator_errors
def schedule(c, install=False, remove=False, dry_run=False):
    """Show, install (--install) or remove (--remove) the backup schedule: a systemd timer.

    It runs `invoke backup.all` at BACKUP_SCHEDULE in TIMEZONE on this machine (the swarm
    manager that holds DATA_ROOT): every deployed environment and the shared stack, and a
    drill of each environment once a week. --dry-run prints the units and changes nothing."""
    from infra import backup
    from infra.backup import schedule as timer

    config = settings()
    if install and remove:
        raise backup.BackupError("--install and --remove contradict each other. Give one of them.")
    service, timer_unit = timer.unit_names(config)
    directory = config.systemd_unit_dir
    systemd = timer.is_system_directory(directory) and _systemd_running()
    if remove:
        if dry_run:
            for name in (service, timer_unit):
                print(f"would remove {directory / name}")
            return
        if systemd:
            c.run(f"systemctl disable --now {timer_unit}", warn=True)
        removed = timer.remove(config)
        if systemd:
            c.run("systemctl daemon-reload")
        for path in removed:
            print(f"removed {path}")
        print("backup schedule removed" if removed else f"no backup schedule in {directory}")
        return
    if install or dry_run:
        units = timer.render_units(config)
        if dry_run:
            for name, text in units.items():
                print(f"--- {directory / name}")
                print(text, end="")
            print(
                "--- then: systemctl daemon-reload && systemctl enable --now "
                f"{timer_unit}\n(--dry-run: nothing written)"
            )
            return
        for path in timer.install(config):
            print(f"wrote {path}")
        if systemd:
            c.run("systemctl daemon-reload")
            c.run(f"systemctl enable --now {timer_unit}")
            print(f"enabled {timer_unit}: it survives a reboot (timers.target)")
        else:
            why = (
                "systemd is not running on this machine"
                if timer.is_system_directory(directory)
                else f"{directory} is not systemd's unit directory (SYSTEMD_UNIT_DIR)"
            )
            print(
                f"not enabled: {why}. Where systemd runs: systemctl daemon-reload && "
                f"systemctl enable --now {timer_unit}"
            )
    _show_schedule(config, systemd, c)


def _systemd_running() -> bool:
    from pathlib import Path

    return Path("/run/systemd/system").is_dir()  # as sd_booted(3) tells


def _show_schedule(config, systemd: bool, c) -> None:
    from datetime import UTC, datetime

    from infra.backup import schedule as timer

    state = timer.installed(config)
    when = timer.next_run(config.backup_schedule, config.timezone, datetime.now(UTC))
    print(f"BACKUP_SCHEDULE={config.backup_schedule} in TIMEZONE={config.timezone}")
    for expression in timer.on_calendar(config.backup_schedule, config.timezone):
        print(f"  OnCalendar={expression}")
    print(
        f"  next run: {when:%Y-%m-%d %H:%M %Z} "
        f"({when.astimezone(UTC):%Y-%m-%d %H:%M} UTC), if installed and enabled"
    )
    print("  runs: invoke backup.all (every deployed environment, shared, a weekly drill)")
    print(f"units in {state.directory}: {state.state}")
    for path in state.files.values():
        print(f"  {path}")
    if state.state == "installed, out of date":
        print("  the settings changed since: invoke backup.schedule --install")
    elif state.state == "not installed":
        print("  install it: invoke backup.schedule --install (--dry-run shows the units)")
    if systemd and state.state != "not installed":
        c.run(f"systemctl list-timers --all {timer.unit_names(config)[1]}", warn=True)


@task(help={"name": HELP["name"], "from_": HELP["drill_from"]}, auto_shortflags=False)
@operator_errors
def drill(c, name="", from_=""):
    """Prove a backup restores: the newest of an environment into throwaway Postgres and Redis.

    Row counts, per-table checksums and Redis keys must equal the backup's manifest; exit 1
    naming what differs. Nothing of the environment changes; the containers are removed."""
    from pathlib import Path

    from infra import backup
    from infra.backup import records

    check_target(name, tuple(ENVIRONMENTS))
    result = backup.drill_env(settings(), name, Path(from_) if from_ else None)
    print(
        f"drill of {name} passed: {result.source} restores as its manifest says "
        f"({len(result.tables)} tables, {sum(result.tables.values())} rows, "
        f"{result.redis_keys} Redis keys) in {records.age(result.duration)}"
    )
    for note in result.notes:
        print(f"note: {note}")
    print(f"record for Prometheus: {result.record}")


@task(name="all")
@operator_errors
def all_(c):
    """What the schedule runs: back up every deployed environment and shared, drill weekly.

    Each backup as backup.env / backup.shared makes it (record, retention); then a drill of
    each environment whose last drill is a week old or failed. Exit 1 if any of them failed."""
    from infra import backup

    outcomes = backup.run_all(settings())
    failed = [outcome for outcome in outcomes if not outcome.ok]
    for outcome in outcomes:
        print(f"  {outcome.what:<14} {'ok' if outcome.ok else 'FAILED'}  {outcome.detail}")
    if failed:
        raise backup.BackupError(
            f"{len(failed)} of {len(outcomes)} failed ({', '.join(o.what for o in failed)}): "
            "see the lines above, `invoke status` and the alerts."
        )


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
    copy = backup.copy_offsite(config, name, Path(from_).expanduser().resolve())
    print(f"off-site copy: {copy.url}")
