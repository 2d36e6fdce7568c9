"""One backup run, as `invoke backup.env` and `invoke backup.shared` (and, later, the schedule)
make it: the backup, its record for Prometheus, then retention.

What the operator got wrong (an unknown target, no Docker, not a manager, the target not
running) stops the run before it starts, changing nothing, with no record. From then on the
run is recorded whatever happens: a verified backup as a success, anything else as a failure
(records.py). Once the backup is verified and recorded, it is copied off-site when
BACKUP_S3_BUCKET is set (offsite.py; a failed copy ends the run with the local backup kept
and nothing pruned), then BACKUP_KEEP prunes the target's older backups, here and in the
bucket, unless the run keeps everything (--keep-all).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import docker

from infra import engine
from infra.backup import offsite, records, retention
from infra.backup.containers import _long_client
from infra.backup.env import backup_env
from infra.backup.manifest import BackupError, BackupResult, Report, describe
from infra.backup.shared import backup_shared, shared_containers
from infra.catalog import ENVIRONMENTS, SHARED
from infra.deploy import check_writable_directory
from infra.errors import InfraError
from infra.settings import Settings, check_target


@dataclass
class RunResult:
    target: str
    backup: BackupResult
    record: Path
    pruned: retention.PruneResult | None  # None: --keep-all
    offsite: offsite.OffsiteCopy | None = None  # None: no BACKUP_S3_BUCKET
    offsite_pruned: offsite.RemotePrune | None = None  # None: no bucket, or --keep-all


def check_backup_root(backups: Path) -> None:
    """BACKUP_ROOT must be a directory this user can create and write, before anything runs
    (a file in its way would otherwise end the run half-way, after the dump)."""
    check_writable_directory(backups, "BACKUP_ROOT")


def run_backup(
    settings: Settings,
    target: str,
    keep_all: bool = False,
    report: Report = print,
    client: docker.DockerClient | None = None,
) -> RunResult:
    """Back up `target` (an environment, or shared), record the run, copy it off-site
    (BACKUP_S3_BUCKET), prune what BACKUP_KEEP no longer keeps."""
    check_target(target, retention.TARGETS)
    keep = settings.backup_keep  # a malformed BACKUP_KEEP stops the run before it starts
    check_backup_root(settings.backups)
    remote = offsite.remote(settings) if offsite.configured(settings) else None  # likewise
    client = _long_client(settings, client)
    if target == SHARED:
        shared_containers(settings, client)
    else:
        for service in ("postgres", "redis"):
            engine.running_task(client, f"{target}_{service}")  # on any node

    started = time.monotonic()
    try:
        if target in ENVIRONMENTS:
            result = backup_env(settings, target, report=report, client=client)
        else:
            result = backup_shared(settings, report=report, client=client)
    except Exception as exc:
        duration = time.monotonic() - started
        try:
            records.record_failure(settings, target, time.time(), duration)
        except OSError as record_exc:
            if isinstance(exc, InfraError):
                raise BackupError(
                    f"{exc} (The failure could not be recorded in "
                    f"{records.path_of(settings, target)}: {record_exc.strerror}.)"
                ) from None
        raise
    duration = time.monotonic() - started

    try:
        record = records.record_success(settings, target, time.time(), duration, result.size)
    except OSError as exc:
        raise BackupError(
            f"backup {result.path} is written and verified, but its record cannot be written "
            f"to {records.path_of(settings, target)} ({exc.strerror}), so Prometheus will not "
            f"see it and nothing was pruned. Fix the permissions of "
            f"{records.directory(settings)} and run the backup again."
        ) from None

    report(f"backup of {target} written and verified: {describe(result)}")
    copy = None
    if remote is not None:
        # Before pruning: while the newest backup has no off-site copy, the older ones stay.
        copy = copy_offsite(settings, target, result.path, report, remote)
    pruned = remote_pruned = None
    if not keep_all and not keep.everything:
        try:
            pruned = retention.prune(settings, target, report=report)
            if remote is not None:  # the bucket keeps what BACKUP_KEEP keeps, like BACKUP_ROOT
                remote_pruned = offsite.prune(settings, target, report=report, remote_=remote)
        except BackupError as exc:
            raise BackupError(f"backup {result.path} is written and verified, but {exc}") from None
    return RunResult(target, result, record, pruned, copy, remote_pruned)


def copy_offsite(
    settings: Settings,
    target: str,
    path: Path,
    report: Report = print,
    remote: offsite.Remote | None = None,
) -> offsite.OffsiteCopy:
    """The off-site copy of a verified backup, its result recorded for Prometheus
    (offsite_<target>.prom: OffsiteCopyFailed alerts on a failed one)."""
    started = time.monotonic()
    try:
        copy = offsite.upload(settings, target, path, report=report, remote_=remote)
    except BackupError as exc:
        with contextlib.suppress(OSError):  # the failure itself is what the operator must see
            records.record_offsite(settings, target, time.time(), time.monotonic() - started, False)
        raise BackupError(f"backup {path} is written and verified, but {exc}") from None
    try:
        records.record_offsite(settings, target, time.time(), time.monotonic() - started, True)
    except OSError as exc:
        raise BackupError(
            f"backup {path} is written, verified and copied to {copy.url}, but the copy's record "
            f"cannot be written to {records.offsite_path_of(settings, target)} ({exc.strerror})"
            f", and nothing was pruned. Fix the permissions of {records.directory(settings)}."
        ) from None
    return copy
