"""Records of backup runs that Prometheus reads: node-exporter's textfile collector.

Every run of `invoke backup.env` or `invoke backup.shared` rewrites one file,
<DATA_ROOT>/shared/backup-exporter/backup_<target>.prom, in Prometheus' text format
(one gauge per line, `env` the target: dev, stg, prod or shared):

  nextcandle_backup_last_success_timestamp_seconds  when the newest verified backup finished
  nextcandle_backup_last_size_bytes                 its size (the files its manifest lists)
  nextcandle_backup_last_run_timestamp_seconds      when the last run ended, whatever its result
  nextcandle_backup_last_duration_seconds           how long the last run took
  nextcandle_backup_last_result                     1: it made a verified backup; 0: it failed

A failed run updates the last three and carries the first two over from the file it
replaces: a record never forgets the last success, and a target that never had one has
neither series (configs/prometheus/rules/backups.yml reads the first one, and its absence).

node-exporter (stacks/shared.yml) has the directory mounted read-only and reads every *.prom
there at each scrape; so that it never reads half a file, a record is written to a hidden
temporary file in the same directory and renamed over the old one. Files are 0644: the
exporter runs as an unprivileged user. No sample carries a timestamp (the collector refuses
those) and the help texts never vary between files (it refuses that too).

Every drill (`invoke backup.drill`, and the schedule's weekly one) rewrites
drill_<env>.prom in the same directory, in the same way:

  nextcandle_drill_last_success_timestamp_seconds  when the last drill that passed finished
  nextcandle_drill_last_run_timestamp_seconds      when the last drill ended, whatever its result
  nextcandle_drill_last_duration_seconds           how long it took
  nextcandle_drill_last_result                     1: the backup restored as its manifest says

Every off-site copy (BACKUP_S3_BUCKET, offsite.py) rewrites offsite_<target>.prom beside
them, in the same way, once the backup itself is verified:

  nextcandle_offsite_last_success_timestamp_seconds  when the last copy read back equal ended
  nextcandle_offsite_last_run_timestamp_seconds      when the last copy ended, whatever its result
  nextcandle_offsite_last_duration_seconds           how long it took
  nextcandle_offsite_last_result                     1: every file read back equal; 0: it failed

The records are read again by `invoke status` (last_records, last_drills), with no
Prometheus needed.
They are where the run happens: run backups on the manager that holds DATA_ROOT.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from infra.backup.manifest import human_size
from infra.settings import Settings

RECORDS_DIR = Path("shared", "backup-exporter")  # under DATA_ROOT
PREFIX = "nextcandle_backup_"

# Metric (without PREFIX) -> help text; the order of the file.
HELP = {
    "last_success_timestamp_seconds": (
        "Unix time at which the newest verified backup of the target finished."
    ),
    "last_size_bytes": "Total size in bytes of the files of the newest verified backup.",
    "last_run_timestamp_seconds": (
        "Unix time at which the last backup run ended, whatever its result."
    ),
    "last_duration_seconds": "Seconds the last backup run took, whatever its result.",
    "last_result": "1 if the last backup run made a verified backup, 0 if it failed.",
}
DRILL_PREFIX = "nextcandle_drill_"
DRILL_HELP = {
    "last_success_timestamp_seconds": (
        "Unix time at which the last drill of the environment that passed finished."
    ),
    "last_run_timestamp_seconds": "Unix time at which the last drill ended, whatever its result.",
    "last_duration_seconds": "Seconds the last drill took, whatever its result.",
    "last_result": (
        "1 if the last drill restored the newest backup as its manifest says, 0 if it failed."
    ),
}
OFFSITE_PREFIX = "nextcandle_offsite_"
OFFSITE_HELP = {
    "last_success_timestamp_seconds": (
        "Unix time at which the last off-site copy of the target that read back equal ended."
    ),
    "last_run_timestamp_seconds": (
        "Unix time at which the last off-site copy ended, whatever its result."
    ),
    "last_duration_seconds": "Seconds the last off-site copy took, whatever its result.",
    "last_result": "1 if every file of the last off-site copy read back equal, 0 if it failed.",
}
_SAMPLE = re.compile(r'^(?P<metric>[a-z_]+)\{env="(?P<env>[a-z]+)"\} (?P<value>\S+)$')


@dataclass(frozen=True)
class Record:
    target: str
    last_run: float
    duration: float
    success: bool
    last_success: float | None = None  # None: no backup of the target has succeeded yet
    size: int | None = None


def directory(settings: Settings) -> Path:
    return settings.data_root / RECORDS_DIR


def path_of(settings: Settings, target: str) -> Path:
    return directory(settings) / f"backup_{target}.prom"


def drill_path_of(settings: Settings, env: str) -> Path:
    return directory(settings) / f"drill_{env}.prom"


def offsite_path_of(settings: Settings, target: str) -> Path:
    return directory(settings) / f"offsite_{target}.prom"


# The kinds of record besides the backup's own: its file, metric prefix and help texts.
_KINDS = {
    "drill": (drill_path_of, DRILL_PREFIX, DRILL_HELP),
    "offsite": (offsite_path_of, OFFSITE_PREFIX, OFFSITE_HELP),
}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def render(record: Record, prefix: str = PREFIX, help_texts: Mapping[str, str] = HELP) -> str:
    """The file's text: Prometheus' exposition format, no timestamps."""
    values = {
        "last_success_timestamp_seconds": record.last_success,
        "last_size_bytes": record.size,
        "last_run_timestamp_seconds": record.last_run,
        "last_duration_seconds": record.duration,
        "last_result": 1 if record.success else 0,
    }
    lines = []
    for metric, help_text in help_texts.items():
        value = values[metric]
        if value is None:
            continue
        lines += [
            f"# HELP {prefix}{metric} {help_text}",
            f"# TYPE {prefix}{metric} gauge",
            f'{prefix}{metric}{{env="{record.target}"}} {_number(value)}',
        ]
    return "\n".join(lines) + "\n"


def parse(text: str, target: str, prefix: str = PREFIX) -> Record | None:
    """A record file as render wrote it; None when it holds no complete record of `target`."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["env"] != target or not match["metric"].startswith(prefix):
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if math.isfinite(value):
            values[match["metric"].removeprefix(prefix)] = value
    if not {"last_run_timestamp_seconds", "last_duration_seconds", "last_result"} <= set(values):
        return None
    size = values.get("last_size_bytes")
    return Record(
        target=target,
        last_run=values["last_run_timestamp_seconds"],
        duration=values["last_duration_seconds"],
        success=values["last_result"] == 1,
        last_success=values.get("last_success_timestamp_seconds"),
        size=None if size is None else int(size),
    )


def read(settings: Settings, target: str) -> Record | None:
    try:
        text = path_of(settings, target).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return parse(text, target)


def read_drill(settings: Settings, env: str) -> Record | None:
    return _read_kind(settings, env, "drill")


def read_offsite(settings: Settings, target: str) -> Record | None:
    return _read_kind(settings, target, "offsite")


def _read_kind(settings: Settings, target: str, kind: str) -> Record | None:
    path_of_kind, prefix, _ = _KINDS[kind]
    try:
        text = path_of_kind(settings, target).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return parse(text, target, prefix)


def write(settings: Settings, record: Record, kind: str = "") -> Path:
    """Replace the target's record file atomically (temporary file, fsync, rename), 0644;
    `kind` "drill" or "offsite" for those records, "" for the backup's own."""
    folder = directory(settings)
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o005 != 0o005:  # a umask of 077 made it: node-exporter reads it
        with contextlib.suppress(PermissionError):
            folder.chmod(0o755)
    path_of_kind, prefix, help_texts = _KINDS[kind] if kind else (path_of, PREFIX, HELP)
    final = path_of_kind(settings, record.target)
    # Not *.prom: node-exporter skips it until it is renamed.
    fd, temporary = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render(record, prefix, help_texts))
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return final


def record_success(
    settings: Settings, target: str, finished: float, duration: float, size: int
) -> Path:
    return write(
        settings,
        Record(target, finished, duration, True, last_success=finished, size=size),
    )


def record_failure(settings: Settings, target: str, finished: float, duration: float) -> Path:
    """A failed run: its time, duration and result; the last success and its size as the
    previous record had them."""
    previous = read(settings, target)
    record = Record(target, finished, duration, False)
    if previous is not None:
        record = replace(record, last_success=previous.last_success, size=previous.size)
    return write(settings, record)


def record_drill(
    settings: Settings, env: str, finished: float, duration: float, success: bool
) -> Path:
    """A drill's record; a failed one keeps the time of the last drill that passed."""
    return _record_result(settings, "drill", env, finished, duration, success)


def record_offsite(
    settings: Settings, target: str, finished: float, duration: float, success: bool
) -> Path:
    """An off-site copy's record; a failed one keeps the time of the last copy that passed."""
    return _record_result(settings, "offsite", target, finished, duration, success)


def _record_result(
    settings: Settings, kind: str, target: str, finished: float, duration: float, success: bool
) -> Path:
    last_success: float | None = finished
    if not success:
        previous = _read_kind(settings, target, kind)
        last_success = previous.last_success if previous is not None else None
    record = Record(target, finished, duration, success, last_success=last_success)
    return write(settings, record, kind=kind)


# --- for the operator: `invoke status` ---------------------------------------------------


def age(seconds: float) -> str:
    """A duration as people say it: 45 s, 12 min, 3 h 20 min, 2 d 4 h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def status_line(target: str, record: Record | None, now: float) -> str:
    """One line per target: the last backup, its age, size and result."""
    if record is None:
        return f"  {target:<8} no backup recorded (invoke {_command(target)})"
    if record.success:
        return (
            f"  {target:<8} ok      {_when(record.last_run)} ({age(now - record.last_run)} ago), "
            f"{human_size(record.size or 0)}, took {age(record.duration)}"
        )
    last = (
        f"last success {_when(record.last_success)} ({age(now - record.last_success)} ago), "
        f"{human_size(record.size or 0)}"
        if record.last_success is not None
        else "no success recorded"
    )
    return (
        f"  {target:<8} FAILED  {_when(record.last_run)} ({age(now - record.last_run)} ago); {last}"
    )


def drill_status_line(env: str, record: Record | None, now: float) -> str:
    """One line per environment: the last drill, its age and result."""
    if record is None:
        return f"  {env:<8} no drill recorded (invoke backup.drill --name={env})"
    when = f"{_when(record.last_run)} ({age(now - record.last_run)} ago)"
    if record.success:
        return f"  {env:<8} passed  {when}, took {age(record.duration)}"
    last = (
        f"last pass {_when(record.last_success)} ({age(now - record.last_success)} ago)"
        if record.last_success is not None
        else "never passed"
    )
    return f"  {env:<8} FAILED  {when}; {last} (invoke backup.drill --name={env})"


def drill_json(record: Record | None) -> dict | None:
    if record is None:
        return None
    return {
        "result": "passed" if record.success else "failed",
        "last_run": record.last_run,
        "duration_seconds": record.duration,
        "last_success": record.last_success,
    }


def last_drills(settings: Settings, envs: tuple[str, ...]) -> Mapping[str, Record | None]:
    return {env: read_drill(settings, env) for env in envs}


def _command(target: str) -> str:
    return "backup.shared" if target == "shared" else f"backup.env --name={target}"


def as_json(record: Record | None) -> dict | None:
    if record is None:
        return None
    return {
        "result": "success" if record.success else "failure",
        "last_run": record.last_run,
        "duration_seconds": record.duration,
        "last_success": record.last_success,
        "size_bytes": record.size,
    }


def last_records(settings: Settings, targets: tuple[str, ...]) -> Mapping[str, Record | None]:
    return {target: read(settings, target) for target in targets}
