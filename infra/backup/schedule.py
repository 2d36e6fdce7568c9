"""The backup schedule: a systemd timer on the swarm manager that holds the data, and the run
it starts (`invoke backup.all`).

Why a host timer and not a scheduled service in the swarm:
- Swarm has no schedule of its own. A "cron" service would be one more long-running container
  that needs the Docker socket (root on the node), the repository's code and venv baked into
  an image or mounted, the secrets file, DATA_ROOT and BACKUP_ROOT mounted, and a placement on
  the node with the data: a second copy of the operator's environment, to keep in step.
- The backup already is a command on the manager: `invoke backup.env` execs into the running
  containers through the Docker API and writes BACKUP_ROOT and the records under DATA_ROOT,
  on that node. A timer runs that very command (the same task, the same library entry,
  run_backup and drill_env) where the data is, as root, with no one logged in.
- systemd keeps the timer across reboots (the timer is enabled in timers.target), catches
  up a run the node was off for (Persistent=true), runs it in the platform's time zone
  (the zone in OnCalendar=), never starts a second run while one is still going, and logs
  it to the journal (`journalctl -u <project>-backup.service`). Debian has it on every host.

The units hold no secret and put none in argv: ExecStart is the repository's Python with
`-m invoke backup.all`; Environment= pins only where things are (ENV_FILE, DATA_ROOT,
BACKUP_ROOT, SECRETS_FILE, DOCKER_HOST when set), as resolved when the schedule was
installed, so the scheduled run works on the same data as the install, whatever the shell of
the operator had. Everything else, the secrets included, is read from .env and secrets.yml at
each run, as for a task typed by hand.

A scheduled run backs up every deployed environment, then the shared stack (when deployed),
each one as `invoke backup.env` / `invoke backup.shared` would (record, retention); one that
fails does not stop the others. Then it drills each deployed environment whose last drill is
DRILL_DUE old or failed (or that has none): with a daily schedule, once a week. The run exits
1 if anything failed, so systemd marks it failed; the records and alerts say which.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import docker

from infra import engine
from infra.backup import records
from infra.backup.containers import _long_client
from infra.backup.drill import DrillResult, drill_env
from infra.backup.manifest import BackupError, Report
from infra.backup.run import RunResult, run_backup
from infra.catalog import ENVIRONMENTS, SHARED
from infra.errors import InfraError
from infra.settings import Schedule, Settings

# A drill is due once the last is this old: a week, less half a day so that a daily run at a
# fixed time (a few minutes later or earlier than last week's) drills every seventh day.
DRILL_DUE = timedelta(days=6, hours=12)
# Where systemd itself reads units: only there does installing also enable the timer.
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# Where things are: pinned in the unit as they were resolved at install (never a secret).
_PINNED = ("ENV_FILE", "DATA_ROOT", "BACKUP_ROOT", "SECRETS_FILE", "DOCKER_HOST")


# --- when --------------------------------------------------------------------------------


def on_calendar(schedule: Schedule, timezone: str) -> list[str]:
    """systemd OnCalendar= expressions (one per time of day), in the platform's time zone."""
    day = f"{_WEEKDAYS[schedule.weekday]} " if schedule.weekday is not None else ""
    return [f"{day}*-*-* {h:02d}:{m:02d}:00 {timezone}" for h, m in schedule.times]


def next_run(schedule: Schedule, timezone: str, now: datetime) -> datetime:
    """The next time the timer elapses after `now` (aware), in the platform's time zone."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    for offset in range(8):
        day = (local + timedelta(days=offset)).date()
        if schedule.weekday is not None and day.weekday() != schedule.weekday:
            continue
        for hour, minute in schedule.times:
            candidate = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
            if candidate > local:
                return candidate
    raise AssertionError("a daily or weekly schedule elapses within 8 days")


# --- the units ---------------------------------------------------------------------------


def unit_names(settings: Settings) -> tuple[str, str]:
    """(service, timer)"""
    base = f"{settings.project_name}-backup"
    return f"{base}.service", f"{base}.timer"


def _word(value: str) -> str:
    """One word of an ExecStart= or Environment= line: % and $ are systemd's own, so doubled;
    quoted when it holds a space or a quote."""
    value = value.replace("%", "%%").replace("$", "$$")
    if any(ch in value for ch in " \t\"'\\"):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def pinned_environment(settings: Settings) -> dict[str, str]:
    values = {
        # The .env file read at install (none: the defaults, as then).
        "ENV_FILE": str(settings.env_file or ""),
        "DATA_ROOT": str(settings.data_root),
        "BACKUP_ROOT": str(settings.backups),
        "SECRETS_FILE": str(settings.secrets_file),
        "DOCKER_HOST": settings.docker_host,
    }
    return {name: values[name] for name in _PINNED if values[name]}


def exec_start(settings: Settings, python: str | None = None) -> list[str]:
    """The scheduled command: this repository's Python (its venv: not resolved, a venv's
    python is a link) running the same task an operator types."""
    return [
        python or sys.executable,
        "-m",
        "invoke",
        "--search-root",
        str(settings.root),
        "backup.all",
    ]


def render_units(settings: Settings, python: str | None = None) -> dict[str, str]:
    """The unit files' names and text."""
    service, timer = unit_names(settings)
    schedule, timezone = settings.backup_schedule, settings.timezone
    environment = "\n".join(
        f"Environment={_word(f'{name}={value}')}"
        for name, value in pinned_environment(settings).items()
    )
    service_text = f"""\
# Written by `invoke backup.schedule --install` ({settings.root}); remove it with
# `invoke backup.schedule --remove`. Runs the same task as `invoke backup.all`.
[Unit]
Description={settings.project_name}: back up every deployed environment and the shared stack
Documentation=file://{settings.root / "README.md"}
Wants=docker.service network-online.target
After=docker.service network-online.target

[Service]
Type=oneshot
WorkingDirectory={_word(str(settings.root))}
{environment}
ExecStart={" ".join(_word(word) for word in exec_start(settings, python))}
# A dump can take hours; a run that hangs longer must not block every later one.
TimeoutStartSec=12h
Nice=10
IOSchedulingClass=best-effort
IOSchedulingPriority=7
"""
    calendars = "\n".join(f"OnCalendar={expr}" for expr in on_calendar(schedule, timezone))
    timer_text = f"""\
# Written by `invoke backup.schedule --install` ({settings.root}).
# BACKUP_SCHEDULE={schedule} in TIMEZONE={timezone}.
[Unit]
Description={settings.project_name}: backups ({schedule}, {timezone})

[Timer]
{calendars}
# A run the node was off for starts at the next boot.
Persistent=true
Unit={service}

[Install]
WantedBy=timers.target
"""
    return {service: service_text, timer: timer_text}


@dataclass(frozen=True)
class Installed:
    directory: Path
    state: str  # "not installed", "installed", "installed, out of date"
    files: dict[str, Path]

    @property
    def up_to_date(self) -> bool:
        return self.state == "installed"


def installed(settings: Settings, python: str | None = None) -> Installed:
    directory = settings.systemd_unit_dir
    wanted = render_units(settings, python)
    files = {name: directory / name for name in wanted}
    present = {name: path.read_text() for name, path in files.items() if path.is_file()}
    if not present:
        state = "not installed"
    elif present == wanted:
        state = "installed"
    else:
        state = "installed, out of date"
    return Installed(directory, state, files)


def is_system_directory(directory: Path) -> bool:
    """Whether systemd reads units from `directory` (then installing also enables them)."""
    return directory.resolve() == SYSTEM_UNIT_DIR.resolve()


def install(settings: Settings, python: str | None = None) -> list[Path]:
    """Write the units (0644). The data must be on this machine: the timer runs here."""
    if not settings.data_root.is_dir():
        raise BackupError(
            f"DATA_ROOT {settings.data_root} does not exist on this machine: the schedule runs "
            "where the data is. Install it on the swarm manager that holds DATA_ROOT, with the "
            "same .env as the deploy."
        )
    directory = settings.systemd_unit_dir
    written = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in render_units(settings, python).items():
            path = directory / name
            temporary = path.with_name(f".{name}.tmp")
            temporary.write_text(text)
            temporary.chmod(0o644)
            os.replace(temporary, path)
            written.append(path)
    except OSError as exc:
        raise BackupError(
            f"cannot write the schedule's units to {directory} ({exc.strerror}). Run it as "
            "root, or set SYSTEMD_UNIT_DIR to a writable directory."
        ) from None
    return written


def remove(settings: Settings) -> list[Path]:
    removed = []
    for name in unit_names(settings):
        path = settings.systemd_unit_dir / name
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BackupError(f"cannot remove {path} ({exc.strerror}). Run it as root.") from None
        removed.append(path)
    return removed


# --- the scheduled run -------------------------------------------------------------------


@dataclass
class Outcome:
    what: str  # "backup dev", "drill prod"
    ok: bool
    detail: str
    result: RunResult | DrillResult | None = None


def drill_due(settings: Settings, env: str, now: float) -> bool:
    last = records.read_drill(settings, env)
    return last is None or not last.success or now - last.last_run >= DRILL_DUE.total_seconds()


def run_all(
    settings: Settings,
    report: Report = print,
    client: docker.DockerClient | None = None,
    now: float | None = None,
) -> list[Outcome]:
    """What the timer runs: back up every deployed environment and the shared stack, then
    drill each environment whose drill is due. One failure does not stop the rest."""
    settings.backup_keep  # noqa: B018 - a malformed BACKUP_KEEP stops the run before it starts
    client = _long_client(settings, client)
    deployed = engine.deployed_stacks(client)
    envs = [env for env in ENVIRONMENTS if env in deployed]
    targets = [*envs, *([SHARED] if SHARED in deployed else [])]
    if not targets:
        report("nothing to back up: no environment and no shared stack is deployed here")
        return []
    outcomes = []
    for target in targets:
        try:
            result = run_backup(settings, target, report=report, client=client)
        except Exception as exc:  # noqa: BLE001 - one target's failure must not stop the others
            report(f"backup of {target} FAILED: {_one_line(exc)}")
            outcomes.append(Outcome(f"backup {target}", False, _one_line(exc)))
        else:
            outcomes.append(Outcome(f"backup {target}", True, str(result.backup.path), result))
    moment = time.time() if now is None else now
    for env in envs:
        if not drill_due(settings, env, moment):
            last = records.read_drill(settings, env)
            report(
                f"drill {env}: not due (the last passed {records.age(moment - last.last_run)} "
                "ago; one a week)"
            )
            continue
        try:
            drilled = drill_env(settings, env, report=report, client=client)
        except Exception as exc:  # noqa: BLE001
            report(f"drill of {env} FAILED: {_one_line(exc)}")
            outcomes.append(Outcome(f"drill {env}", False, _one_line(exc)))
        else:
            report(f"drill of {env} passed: {drilled.source}")
            outcomes.append(Outcome(f"drill {env}", True, str(drilled.source), drilled))
    return outcomes


def _one_line(exc: Exception) -> str:
    """An operator's error as its own line; anything else with its kind (no traceback in the
    journal, but enough to search for)."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, InfraError) else f"{type(exc).__name__}: {text}"
