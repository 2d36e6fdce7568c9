"""BACKUP_SCHEDULE and TIMEZONE, the systemd units backup.schedule writes (checked by
systemd-analyze where it exists), installing into SYSTEMD_UNIT_DIR, and when a drill is due."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.backup import records, schedule
from infra.errors import InfraError, SettingsError
from infra.settings import REPO_ROOT, Schedule, load_settings, parse_schedule, parse_timezone

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _settings(environ, tmp_path, **values):
    return load_settings(
        REPO_ROOT, {**environ, "SYSTEMD_UNIT_DIR": str(tmp_path / "units"), **values}
    )


# --- BACKUP_SCHEDULE and TIMEZONE --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("daily 03:00", Schedule(((3, 0),))),
        ("daily 15:30,03:00", Schedule(((3, 0), (15, 30)))),
        ("weekly Sun 04:15", Schedule(((4, 15),), 6)),
        ("Weekly monday 00:00", Schedule(((0, 0),), 0)),
    ],
    ids=["daily", "twice-a-day", "weekly", "full-day-name"],
)
def test_schedule_parses(value, expected):
    assert parse_schedule(value) == expected
    assert parse_schedule(str(expected)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "03:00",
        "daily 3:00",
        "daily 24:00",
        "daily 03:60",
        "hourly",
        "weekly 03:00",
        "weekly Sunday",
        "weekly Funday 03:00",
        "daily 03:00,03:00",
        "daily 03:00 extra",
    ],
)
def test_bad_schedule_is_one_line_saying_how(value):
    with pytest.raises(SettingsError) as caught:
        parse_schedule(value)
    message = str(caught.value)
    assert "\n" not in message
    assert f"BACKUP_SCHEDULE={value!r}" in message and "daily 03:00" in message


def test_bad_schedule_in_env_stops_loading_settings(environ, tmp_path):
    with pytest.raises(SettingsError, match="BACKUP_SCHEDULE='every night'"):
        _settings(environ, tmp_path, BACKUP_SCHEDULE="every night")


@pytest.mark.parametrize("value", ["Asia/Seoul", "UTC", "Europe/Berlin"])
def test_known_time_zones(value):
    assert parse_timezone(value) == value


@pytest.mark.parametrize("value", ["Mars/Olympus", "", "../etc/passwd", "/usr/share/zoneinfo/UTC"])
def test_unknown_time_zone_is_one_line(value):
    with pytest.raises(SettingsError, match="TIMEZONE=.* is not a time zone"):
        parse_timezone(value)


def test_defaults_are_daily_at_three_in_seoul(settings):
    assert str(settings.backup_schedule) == "daily 03:00"
    assert settings.timezone == "Asia/Seoul"
    assert settings.systemd_unit_dir == Path("/etc/systemd/system")


def test_n8n_and_the_schedule_read_one_time_zone(settings):
    """TIMEZONE reaches the shared stack (n8n's GENERIC_TIMEZONE and TZ) as a variable."""
    text = (REPO_ROOT / "stacks" / "shared.yml").read_text()
    assert "GENERIC_TIMEZONE: ${TIMEZONE:?deploy through invoke}" in text
    assert "TZ: ${TIMEZONE:?deploy through invoke}" in text
    assert "Asia/Seoul" not in text
    assert settings.stack_variables()["TIMEZONE"] == "Asia/Seoul"


# --- OnCalendar --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "timezone", "expected"),
    [
        ("daily 03:00", "Asia/Seoul", ["*-*-* 03:00:00 Asia/Seoul"]),
        ("daily 03:00,15:30", "UTC", ["*-*-* 03:00:00 UTC", "*-*-* 15:30:00 UTC"]),
        ("weekly Sun 04:15", "Europe/Berlin", ["Sun *-*-* 04:15:00 Europe/Berlin"]),
    ],
    ids=["daily", "twice", "weekly"],
)
def test_on_calendar(value, timezone, expected):
    assert schedule.on_calendar(parse_schedule(value), timezone) == expected


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(
    ("value", "timezone"),
    [("daily 03:00", "Asia/Seoul"), ("weekly Sun 04:15", "Europe/Berlin"), ("daily 23:59", "UTC")],
    ids=["daily-seoul", "weekly-berlin", "late-utc"],
)
def test_systemd_reads_the_calendar_and_agrees_on_the_next_run(value, timezone):
    """systemd-analyze normalises each expression unchanged, and its next elapse is ours."""
    parsed = parse_schedule(value)
    for expression in schedule.on_calendar(parsed, timezone):
        result = subprocess.run(
            [SYSTEMD_ANALYZE, "calendar", expression],
            capture_output=True,
            text=True,
            check=False,
            env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr
        normalized = re.search(r"Normalized form: (.+)", result.stdout).group(1).strip()
        assert normalized == expression
        elapse = re.search(r"Next elapse: \w+ (\S+ \S+) UTC", result.stdout).group(1)
        # systemd-analyze counts from now; so do we (a minute's race at most).
        ours = schedule.next_run(parsed, timezone, datetime.now(UTC)).astimezone(UTC)
        assert ours.strftime("%Y-%m-%d %H:%M:%S") == elapse


def test_next_run_is_in_the_platform_time_zone():
    now = datetime(2026, 12, 1, 17, 30, tzinfo=UTC)  # 02:30 on the 2nd in Seoul
    daily = schedule.next_run(parse_schedule("daily 03:00"), "Asia/Seoul", now)
    assert daily.astimezone(UTC) == datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
    weekly = schedule.next_run(parse_schedule("weekly Sun 03:00"), "Asia/Seoul", now)
    assert weekly.astimezone(UTC) == datetime(2026, 12, 5, 18, 0, tzinfo=UTC)


# --- the units ---------------------------------------------------------------------------


def _service_value(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def test_service_runs_the_manual_task_with_paths_pinned_and_no_secret(environ, tmp_path):
    Path(environ["ENV_FILE"]).write_text("PROJECT_NAME=nextcandle\n")
    config = _settings(environ, tmp_path, DOCKER_HOST="tcp://127.0.0.1:2375")
    units = schedule.render_units(config, python="/opt/venv/bin/python")
    service = units["nextcandle-backup.service"]
    (exec_start,) = _service_value(service, "ExecStart")
    assert shlex.split(exec_start) == [
        "/opt/venv/bin/python",
        "-m",
        "invoke",
        "--search-root",
        str(REPO_ROOT),
        "backup.all",
    ]
    environment = dict(
        item.split("=", 1)
        for line in _service_value(service, "Environment")
        for item in shlex.split(line)
    )
    assert environment == {
        "ENV_FILE": environ["ENV_FILE"],
        "DATA_ROOT": environ["DATA_ROOT"],
        "BACKUP_ROOT": str(REPO_ROOT / ".backups"),
        "SECRETS_FILE": environ["SECRETS_FILE"],
        "DOCKER_HOST": "tcp://127.0.0.1:2375",
    }
    assert _service_value(service, "Type") == ["oneshot"]
    assert "docker.service" in _service_value(service, "After")[0]


def test_timer_is_persistent_in_the_time_zone_and_survives_a_reboot(environ, tmp_path):
    config = _settings(environ, tmp_path, BACKUP_SCHEDULE="daily 03:00,15:00", TIMEZONE="UTC")
    timer = schedule.render_units(config)["nextcandle-backup.timer"]
    assert _service_value(timer, "OnCalendar") == ["*-*-* 03:00:00 UTC", "*-*-* 15:00:00 UTC"]
    assert _service_value(timer, "Persistent") == ["true"]
    assert _service_value(timer, "Unit") == ["nextcandle-backup.service"]
    assert _service_value(timer, "WantedBy") == ["timers.target"]


def test_unit_words_escape_systemd_specifiers_and_spaces():
    assert schedule._word("/srv/my data/50%") == '"/srv/my data/50%%"'
    assert schedule._word("$HOME") == "$$HOME"
    assert schedule._word("plain") == "plain"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(environ, tmp_path):
    config = _settings(environ, tmp_path)
    (tmp_path / "data").mkdir()
    schedule.install(config, python=sys.executable)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *(str(p) for p in sorted((tmp_path / "units").iterdir()))],
        capture_output=True,
        text=True,
        check=False,
    )
    # Without a running systemd, verify may complain about the system (docker.service absent,
    # no bus); it must not about our files' syntax.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "nextcandle-backup" in line and ("nknown" in line or "nvalid" in line or "rror" in line)
    ]
    assert not problems, result.stdout + result.stderr


# --- install, show, remove ---------------------------------------------------------------


def test_install_writes_the_units_then_shows_installed_then_removes(environ, tmp_path):
    config = _settings(environ, tmp_path)
    (tmp_path / "data").mkdir()
    assert schedule.installed(config).state == "not installed"
    written = schedule.install(config)
    assert sorted(p.name for p in written) == [
        "nextcandle-backup.service",
        "nextcandle-backup.timer",
    ]
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o644
    assert schedule.installed(config).state == "installed"
    changed = _settings(environ, tmp_path, BACKUP_SCHEDULE="daily 04:00")
    assert schedule.installed(changed).state == "installed, out of date"
    assert sorted(p.name for p in schedule.remove(config)) == sorted(p.name for p in written)
    assert not list((tmp_path / "units").iterdir())
    assert schedule.remove(config) == []


def test_install_refuses_where_the_data_is_not(environ, tmp_path):
    config = _settings(environ, tmp_path)
    with pytest.raises(InfraError, match="DATA_ROOT .* does not exist on this machine"):
        schedule.install(config)
    assert not (tmp_path / "units").exists()


def test_a_temporary_directory_is_not_systemd_s(tmp_path):
    assert not schedule.is_system_directory(tmp_path)
    assert schedule.is_system_directory(Path("/etc/systemd/system"))


# --- drills in the scheduled run ---------------------------------------------------------


def test_a_drill_is_due_weekly_and_after_a_failure(settings):
    now = 1_800_000_000.0
    assert schedule.drill_due(settings, "dev", now)  # none recorded
    records.record_drill(settings, "dev", now, 30.0, success=True)
    for days in (1, 6):  # a daily run a few minutes early still waits a week
        assert not schedule.drill_due(settings, "dev", now + days * 86400 - 300)
    assert schedule.drill_due(settings, "dev", now + 7 * 86400 - 300)
    records.record_drill(settings, "dev", now + 3600, 30.0, success=False)
    assert schedule.drill_due(settings, "dev", now + 7200)


# --- the command line --------------------------------------------------------------------


def _cli(args, environ, tmp_path, **values):
    import os

    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    env.update(environ)
    env.update({"SYSTEMD_UNIT_DIR": str(tmp_path / "units"), **values})
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_dry_run_prints_the_units_and_writes_nothing(environ, tmp_path):
    result = _cli(["backup.schedule", "--dry-run"], environ, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OnCalendar=*-*-* 03:00:00 Asia/Seoul" in result.stdout
    assert "backup.all" in result.stdout and "nothing written" in result.stdout
    assert not (tmp_path / "units").exists()


def test_show_says_not_installed_and_when_it_would_run(environ, tmp_path):
    result = _cli(["backup.schedule"], environ, tmp_path, BACKUP_SCHEDULE="weekly Sun 04:00")
    assert result.returncode == 0, result.stderr
    assert "BACKUP_SCHEDULE=weekly Sun 04:00 in TIMEZONE=Asia/Seoul" in result.stdout
    assert "next run:" in result.stdout and "not installed" in result.stdout


@pytest.mark.parametrize(
    ("args", "values", "expected"),
    [
        (
            ["backup.schedule", "--install"],
            {"BACKUP_SCHEDULE": "nightly"},
            "BACKUP_SCHEDULE='nightly'",
        ),
        (["backup.schedule"], {"TIMEZONE": "Seoul"}, "TIMEZONE='Seoul'"),
        (["backup.schedule", "--install", "--remove"], {}, "contradict"),
        (["backup.drill", "--name=qa"], {}, "unknown environment 'qa'"),
        (["backup.schedule", "--install"], {}, "DATA_ROOT"),
    ],
    ids=["bad-schedule", "bad-zone", "install-and-remove", "unknown-env", "no-data-here"],
)
def test_mistakes_are_one_line_and_change_nothing(environ, tmp_path, args, values, expected):
    result = _cli(args, environ, tmp_path, **values)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "units").exists()
