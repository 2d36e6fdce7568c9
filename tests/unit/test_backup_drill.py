"""The drill's parts that need no daemon: which backup it drills, how a restored database is
compared with the manifest (the table named), and its record for Prometheus."""

from __future__ import annotations

import subprocess

import pytest

from infra.backup import drill, records, tables
from infra.backup.manifest import BackupError
from infra.backup.records import Record
from tests.unit.test_alert_rules import PROMTOOL

ROWS = {"public.items": 120, "public.events": 40}
SUMS = {"public.items": "123456789", "public.events": "-42"}


def test_stats_lines_parse_marked_among_other_messages():
    text = (
        "pg_dump: warning: something\n"
        f"{tables.MARK}public.items\t120\t123456789\n"
        f'{tables.MARK}public."odd name"\t0\t0\n'
        "not a table line\n"
    )
    stats = tables.parse_stats(text, marked=True)
    assert stats.rows == {"public.items": 120, 'public."odd name"': 0}
    assert stats.checksums["public.items"] == "123456789"


def test_everything_agreeing_is_no_difference():
    assert tables.differences(ROWS, SUMS, tables.TableStats(dict(ROWS), dict(SUMS))) == []


@pytest.mark.parametrize(
    ("rows", "sums", "phrase"),
    [
        (
            {**ROWS, "public.items": 119},
            SUMS,
            "table public.items holds 119 rows, the backup counted 120",
        ),
        (
            ROWS,
            {**SUMS, "public.events": "7"},
            "table public.events holds 40 rows as counted, but their content differs",
        ),
        (
            {"public.items": 120},
            {"public.items": SUMS["public.items"]},
            "table public.events is missing",
        ),
        (
            {**ROWS, "public.extra": 1},
            {**SUMS, "public.extra": "1"},
            "table public.extra is not in the backup's manifest",
        ),
    ],
    ids=["row-count", "checksum", "missing-table", "extra-table"],
)
def test_a_difference_names_the_table(rows, sums, phrase):
    problems = tables.differences(ROWS, SUMS, tables.TableStats(rows, sums))
    assert len(problems) == 1 and problems[0].startswith(phrase), problems


def test_a_manifest_without_checksums_compares_row_counts_only():
    found = tables.TableStats(dict(ROWS), {"public.items": "0", "public.events": "0"})
    assert tables.differences(ROWS, {}, found) == []


def test_both_sides_read_rows_with_the_same_session_settings():
    """The backup's statistics and the drill's run the same SQL, the settings first."""
    assert tables.STATS_SQL in tables.dump_script()
    assert (
        tables.dump_script().index("pg_export_snapshot")
        < tables.dump_script().index("pg_dump --format=custom --snapshot=")
        < tables.dump_script().index(tables.STATS_SQL)
    )
    assert "TimeZone = 'UTC'" in tables.STATS_SETTINGS


# --- which backup ------------------------------------------------------------------------


def _backup(folder, name, manifest=True):
    path = folder / name
    path.mkdir(parents=True)
    if manifest:
        (path / "manifest.json").write_text("{}")
    return path


@pytest.fixture
def backups_settings(environ, tmp_path):
    from infra.settings import REPO_ROOT, load_settings

    return load_settings(REPO_ROOT, {**environ, "BACKUP_ROOT": str(tmp_path / "backups")})


def test_the_newest_unlabelled_backup_with_a_manifest_is_drilled(backups_settings):
    settings = backups_settings
    folder = settings.backups / "prod"
    _backup(folder, "20261120T030000Z")
    newest = _backup(folder, "20261121T030000Z")
    _backup(folder, "20261121T040000Z-before-restore")
    _backup(folder, "20261122T030000Z", manifest=False)  # not verified
    _backup(folder, ".partial-20261123T030000Z-abcd")
    assert drill.newest_backup(settings, "prod") == newest


def test_no_backup_to_drill_says_how_to_make_one(backups_settings):
    settings = backups_settings
    with pytest.raises(BackupError, match=r"invoke backup.env --name=stg"):
        drill.newest_backup(settings, "stg")


# --- the record --------------------------------------------------------------------------

FINISHED = 1_795_000_000.0


def test_a_drill_record_passes_promtool_check_metrics(settings):
    if not PROMTOOL.is_file():
        pytest.fail(f"promtool is missing ({PROMTOOL}): get it with `bash .ci/promtool`")
    path = records.record_drill(settings, "prod", FINISHED, 42.0, success=True)
    result = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=path.read_text(), capture_output=True, text=True
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result
    assert path.name == "drill_prod.prom" and path.stat().st_mode & 0o777 == 0o644


def test_a_failed_drill_keeps_the_last_pass(settings):
    records.record_drill(settings, "prod", FINISHED, 42.0, success=True)
    records.record_drill(settings, "prod", FINISHED + 3600, 5.0, success=False)
    text = records.drill_path_of(settings, "prod").read_text()
    assert f'nextcandle_drill_last_success_timestamp_seconds{{env="prod"}} {int(FINISHED)}' in text
    assert 'nextcandle_drill_last_result{env="prod"} 0' in text
    assert records.read_drill(settings, "prod") == Record(
        "prod", FINISHED + 3600, 5.0, False, last_success=FINISHED
    )


def test_a_drill_that_never_passed_has_no_success_series(settings):
    records.record_drill(settings, "dev", FINISHED, 5.0, success=False)
    text = records.drill_path_of(settings, "dev").read_text()
    assert "last_success_timestamp_seconds" not in text
    assert "nextcandle_backup_" not in text


def test_drill_records_do_not_disturb_backup_records(settings):
    records.record_success(settings, "prod", FINISHED, 3.0, 1000)
    records.record_drill(settings, "prod", FINISHED + 10, 5.0, success=False)
    assert records.read(settings, "prod").success
    assert not records.read_drill(settings, "prod").success


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (None, "no drill recorded (invoke backup.drill --name=prod)"),
        (Record("prod", FINISHED, 65.0, True, last_success=FINISHED), "passed  "),
        (Record("prod", FINISHED, 5.0, False, last_success=FINISHED - 86400), "FAILED"),
        (Record("prod", FINISHED, 5.0, False), "never passed"),
    ],
    ids=["none", "passed", "failed", "never-passed"],
)
def test_status_line_of_a_drill(record, expected):
    line = records.drill_status_line("prod", record, FINISHED + 120)
    assert expected in line and line.startswith("  prod")
