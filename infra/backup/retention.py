"""Retention: which backups of a target BACKUP_KEEP keeps, and pruning the rest.

The policy (BACKUP_KEEP, e.g. 7d,4w,6m) keeps the newest verified backup of each of the last
7 calendar days, of each of the last 4 ISO weeks (Monday to Sunday) and of each of the last 6
calendar months, counted back from now, today's, this week's and this month's included. Days,
weeks and months are UTC, like the backups' names: what a name says is what the policy reads.

Whatever the policy says, pruning never removes
- the newest verified backup of the target;
- a labelled backup (`<time>-before-restore`: the data a restore replaced, kept until the
  operator removes it);
- a directory with a backup's name but no manifest.json (not a verified backup: it counts
  for no period either, so it never pushes a verified one out);
- anything without a backup's name (`.partial-*` directories of a backup under way, files,
  anything else): it is not listed at all.
A backup dated after now (a clock set back) is kept.

plan_retention is pure (names, manifest presence and now in, decisions out); prune applies a
plan: each backup is first renamed to a hidden `.pruning-<name>` (at once no longer a backup
for restore or retention), then removed.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from infra.backup.manifest import MANIFEST, STAMP_FORMAT, BackupError, Report, is_backup_name
from infra.catalog import ENVIRONMENTS, SHARED
from infra.settings import Keep, Settings, check_target

TARGETS = (*ENVIRONMENTS, SHARED)
PRUNING_PREFIX = ".pruning-"
_PARTS = re.compile(r"^(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<label>[a-z][a-z-]*))?(?:-(?P<n>\d+))?$")


@dataclass(frozen=True)
class Entry:
    """A directory in a target's backup folder, as retention sees it."""

    name: str
    verified: bool  # holds a manifest.json: only verified backups are ever renamed into place


@dataclass(frozen=True)
class Decision:
    name: str
    keep: bool
    reasons: tuple[str, ...]  # why it is kept (empty when pruned)

    def describe(self) -> str:
        return f"{self.name}  " + (f"keep ({', '.join(self.reasons)})" if self.keep else "prune")


@dataclass(frozen=True)
class RetentionPlan:
    keep_policy: Keep
    decisions: tuple[Decision, ...]  # newest first

    @property
    def kept(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.decisions if d.keep)

    @property
    def pruned(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.decisions if not d.keep)


@dataclass(frozen=True)
class PruneResult:
    target: str
    plan: RetentionPlan
    removed: tuple[Path, ...]  # empty on a dry run


def backup_time(name: str) -> tuple[datetime, str, int] | None:
    """A backup name's UTC time, label and same-second number; None if it is no backup name
    (or names a date that does not exist)."""
    match = _PARTS.match(name) if is_backup_name(name) else None
    if not match:
        return None
    try:
        when = datetime.strptime(match.group("stamp"), STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return when, match.group("label") or "", int(match.group("n") or 0)


def _week(day: date) -> date:
    """The Monday that starts the ISO week of `day`."""
    return day - timedelta(days=day.weekday())


def _month(day: date) -> int:
    return day.year * 12 + day.month - 1


def _month_name(index: int) -> str:
    return f"{index // 12}-{index % 12 + 1:02d}"


def plan_retention(entries: Iterable[Entry], now: datetime, keep: Keep) -> RetentionPlan:
    """Decide, for every entry with a backup's name, whether BACKUP_KEEP keeps it."""
    now = now.astimezone(UTC)
    today = now.date()
    days = {today - timedelta(days=i) for i in range(keep.days)}
    weeks = {_week(today) - timedelta(weeks=i) for i in range(keep.weeks)}
    months = {_month(today) - i for i in range(keep.months)}

    parsed = []
    for entry in entries:
        parts = backup_time(entry.name)
        if parts is not None:
            parsed.append((parts, entry))
    # Newest first: by time, then the same-second number (20261126T151500Z-1 is the later).
    parsed.sort(key=lambda item: (item[0][0], item[0][2]), reverse=True)

    reasons: dict[str, list[str]] = {entry.name: [] for _, entry in parsed}
    periods_taken: set[tuple[str, object]] = set()
    newest_verified_seen = False
    for (when, label, _n), entry in parsed:
        why = reasons[entry.name]
        if label:
            why.append(f"labelled {label}: never pruned")
            continue
        if not entry.verified:
            why.append(f"no {MANIFEST}: not a verified backup, left alone")
            continue
        if keep.everything:
            why.append("BACKUP_KEEP=all")
        if when > now:
            why.append("dated after now")
        if not newest_verified_seen:
            newest_verified_seen = True
            why.append("the newest verified backup")
        day = when.date()
        for period, key, window, name in (
            ("daily", day, days, day.isoformat()),
            ("weekly", _week(day), weeks, f"week of {_week(day).isoformat()}"),
            ("monthly", _month(day), months, _month_name(_month(day))),
        ):
            if key in window and (period, key) not in periods_taken:
                periods_taken.add((period, key))
                why.append(f"{period} {name}")
    decisions = tuple(
        Decision(entry.name, bool(reasons[entry.name]), tuple(reasons[entry.name]))
        for _, entry in parsed
    )
    return RetentionPlan(keep, decisions)


def backup_folder(settings: Settings, target: str) -> Path:
    return settings.backups / target


def scan(folder: Path) -> list[Entry]:
    """The real directories (not symbolic links) in a target's backup folder."""
    if not folder.is_dir():
        return []
    return [
        Entry(path.name, (path / MANIFEST).is_file())
        for path in folder.iterdir()
        if path.is_dir() and not path.is_symlink()
    ]


def plan_prune(
    settings: Settings, target: str, now: datetime | None = None
) -> tuple[Path, RetentionPlan]:
    check_target(target, TARGETS)
    folder = backup_folder(settings, target)
    plan = plan_retention(scan(folder), now or datetime.now(UTC), settings.backup_keep)
    return folder, plan


def prune(
    settings: Settings,
    target: str,
    now: datetime | None = None,
    dry_run: bool = False,
    report: Report = print,
) -> PruneResult:
    """Remove the backups of `target` BACKUP_KEEP no longer keeps; report each one removed."""
    folder, plan = plan_prune(settings, target, now)
    if dry_run:
        return PruneResult(target, plan, ())
    removed = []
    for name in plan.pruned:
        path = folder / name
        hidden = folder / f"{PRUNING_PREFIX}{name}"
        try:
            path.rename(hidden)
        except FileNotFoundError:  # removed meanwhile (another prune): nothing left to do
            continue
        except OSError as exc:
            raise BackupError(
                f"cannot prune {path} ({exc.strerror}); nothing of it was removed. Fix the "
                f"permissions of {folder}, or run `invoke backup.prune --name={target}` later."
            ) from None
        try:
            shutil.rmtree(hidden)
        except OSError as exc:
            raise BackupError(
                f"pruning {path}: {hidden} could not be removed completely ({exc.strerror}). "
                "It is no longer a backup; remove it yourself."
            ) from None
        removed.append(path)
        report(f"pruned {path}")
    return PruneResult(target, plan, tuple(removed))
