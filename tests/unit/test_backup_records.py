"""The record of each backup run: Prometheus text format (checked by promtool), written
atomically where node-exporter reads it, a failure keeping the last success, and the lines
`invoke status` shows."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
import yaml

from infra import plan as planning
from infra import report
from infra.backup import records
from infra.backup.records import Record
from infra.catalog import DATA_OWNERS
from infra.settings import STACKS_DIR
from tests.unit.test_alert_rules import PROMTOOL

FINISHED = 1_795_000_000.0  # 2026-11-18 11:06:40 UTC
SUCCESS = Record("prod", FINISHED, 12.5, True, last_success=FINISHED, size=123_456)
NEVER_SUCCEEDED = Record("stg", FINISHED, 0.8, False)


@pytest.fixture
def promtool_check_metrics():
    if not PROMTOOL.is_file():
        pytest.fail(f"promtool is missing ({PROMTOOL}): get it with `bash .ci/promtool`")

    def check(text: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(PROMTOOL), "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )

    return check


def samples(text: str) -> dict[str, str]:
    return {
        line.split("{", 1)[0]: line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


# --- the file's text ---------------------------------------------------------------------


@pytest.mark.parametrize("record", [SUCCESS, NEVER_SUCCEEDED], ids=["success", "failure"])
def test_a_record_passes_promtool_check_metrics(promtool_check_metrics, record):
    result = promtool_check_metrics(records.render(record))
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


def test_promtool_check_metrics_refuses_a_broken_record(promtool_check_metrics):
    """The check above can fail: a sample without its value is refused."""
    text = records.render(SUCCESS).replace(" 123456\n", "\n")
    assert promtool_check_metrics(text).returncode != 0


def test_a_success_has_every_series_with_the_env_label():
    text = records.render(SUCCESS)
    assert samples(text) == {
        "nextcandle_backup_last_success_timestamp_seconds": "1795000000",
        "nextcandle_backup_last_size_bytes": "123456",
        "nextcandle_backup_last_run_timestamp_seconds": "1795000000",
        "nextcandle_backup_last_duration_seconds": "12.500",
        "nextcandle_backup_last_result": "1",
    }
    for line in text.splitlines():
        if not line.startswith("#"):
            # One label, no timestamp: node-exporter refuses a file with timestamps.
            assert re.fullmatch(r'[a-z_]+\{env="prod"\} [0-9.]+', line), line


def test_a_target_that_never_succeeded_has_no_success_series():
    assert samples(records.render(NEVER_SUCCEEDED)) == {
        "nextcandle_backup_last_run_timestamp_seconds": "1795000000",
        "nextcandle_backup_last_duration_seconds": "0.800",
        "nextcandle_backup_last_result": "0",
    }


def test_help_texts_are_the_same_for_every_target():
    """node-exporter refuses a metric whose help text differs between two files."""

    def helps(record):
        return [line for line in records.render(record).splitlines() if line.startswith("#")]

    shared = Record("shared", 1.0, 2.0, True, last_success=1.0, size=3)
    assert helps(shared) == helps(SUCCESS)


@pytest.mark.parametrize("record", [SUCCESS, NEVER_SUCCEEDED], ids=["success", "failure"])
def test_a_record_reads_back_as_written(record):
    assert records.parse(records.render(record), record.target) == record


def test_a_damaged_record_reads_as_none():
    assert records.parse('nextcandle_backup_last_result{env="prod"} 1\n', "prod") is None
    assert records.parse(records.render(SUCCESS), "stg") is None  # another target's


# --- the file ----------------------------------------------------------------------------


def test_the_record_is_where_node_exporter_reads_it(settings):
    path = records.record_success(settings, "prod", FINISHED, 3.0, 42)
    assert path == settings.data_root / "shared" / "backup-exporter" / "backup_prod.prom"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert records.read(settings, "prod") == Record("prod", FINISHED, 3.0, True, FINISHED, 42)


def test_writing_leaves_no_temporary_file_and_replaces_the_old_one(settings):
    records.record_success(settings, "prod", FINISHED, 3.0, 42)
    first = records.path_of(settings, "prod").stat().st_ino
    records.record_success(settings, "prod", FINISHED + 60, 3.0, 43)
    assert [p.name for p in records.directory(settings).iterdir()] == ["backup_prod.prom"]
    # Renamed over, not rewritten in place: a reader holds the old file or the new one.
    assert records.path_of(settings, "prod").stat().st_ino != first
    assert records.read(settings, "prod").size == 43


def test_the_directory_is_readable_by_node_exporter_whatever_the_umask(settings):
    old = os.umask(0o077)
    try:
        records.record_success(settings, "prod", FINISHED, 3.0, 42)
    finally:
        os.umask(old)
    assert stat.S_IMODE(records.directory(settings).stat().st_mode) == 0o755
    assert stat.S_IMODE(records.path_of(settings, "prod").stat().st_mode) == 0o644


def test_a_failure_keeps_the_last_success_and_its_size(settings):
    records.record_success(settings, "prod", FINISHED, 3.0, 42)
    records.record_failure(settings, "prod", FINISHED + 86_400, 7.0)
    assert records.read(settings, "prod") == Record(
        "prod", FINISHED + 86_400, 7.0, False, last_success=FINISHED, size=42
    )


def test_a_first_failure_records_no_success(settings):
    records.record_failure(settings, "dev", FINISHED, 7.0)
    text = records.path_of(settings, "dev").read_text()
    assert "last_success" not in text and 'nextcandle_backup_last_result{env="dev"} 0' in text


def test_an_offsite_copy_has_its_own_record_that_keeps_its_last_success(
    settings, promtool_check_metrics
):
    records.record_offsite(settings, "shared", FINISHED, 2.0, True)
    records.record_offsite(settings, "shared", FINISHED + 86_400, 9.0, False)
    path = records.offsite_path_of(settings, "shared")
    assert path.name == "offsite_shared.prom" and path.parent == records.directory(settings)
    text = path.read_text()
    assert samples(text) == {
        "nextcandle_offsite_last_success_timestamp_seconds": str(int(FINISHED)),
        "nextcandle_offsite_last_run_timestamp_seconds": str(int(FINISHED + 86_400)),
        "nextcandle_offsite_last_duration_seconds": "9",
        "nextcandle_offsite_last_result": "0",
    }
    result = promtool_check_metrics(text)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result
    assert records.read_offsite(settings, "shared") == Record(
        "shared", FINISHED + 86_400, 9.0, False, last_success=FINISHED
    )
    assert records.read(settings, "shared") is None  # the backup's own record is apart


# --- the backup exporter reads the directory, the deploy creates it -------------------------


def _services() -> dict:
    return yaml.safe_load((STACKS_DIR / "shared.yml").read_text())["services"]


def test_the_backup_exporter_reads_the_records_directory_mounted_read_only(settings):
    service = _services()["backup-exporter"]
    flags = [a for a in service["command"] if a.startswith("--collector.textfile.directory=")]
    assert len(flags) == 1
    inside = flags[0].split("=", 1)[1]
    mounts = [v for v in service["volumes"] if v["target"] == inside]
    assert len(mounts) == 1 and mounts[0]["type"] == "bind" and mounts[0]["read_only"] is True
    source = planning.interpolate(mounts[0]["source"], {"DATA_ROOT": str(settings.data_root)}, "")
    assert source == str(records.directory(settings))
    # Placed with the data (a bind source exists only there); only its textfile collector on.
    assert service["deploy"]["placement"]["constraints"] == [
        "node.labels.${DATA_NODE_LABEL:?deploy through invoke} == true"
    ]
    assert "--collector.disable-defaults" in service["command"]


def test_the_global_node_exporter_needs_nothing_of_data_root():
    """It runs on every node; a bind source under DATA_ROOT would keep it off the workers."""
    service = _services()["node-exporter"]
    assert service["deploy"]["mode"] == "global"
    assert not [v for v in service["volumes"] if "DATA_ROOT" in v["source"]]


def test_the_shared_deploy_creates_the_records_directory(settings):
    dirs = {d.path: d for d in planning.plan_stack("shared", settings, None).data_dirs}
    directory = dirs[records.directory(settings)]
    assert (directory.uid, directory.gid) == DATA_OWNERS.get("backup-exporter", (0, 0)) == (0, 0)


# --- invoke status -----------------------------------------------------------------------


NOW = FINISHED + 3 * 3600 + 20 * 60


def test_status_shows_the_last_backup_of_each_target():
    last = {
        "dev": None,
        "stg": Record("stg", FINISHED, 4.0, False, last_success=FINISHED - 2 * 86_400, size=2048),
        "prod": SUCCESS,
        "shared": NEVER_SUCCEEDED,
    }
    rows, lines = report.backup_summary(last, now=NOW)
    assert lines == [
        "backups (last run):",
        "  dev      no backup recorded (invoke backup.env --name=dev)",
        "  stg      FAILED  2026-11-18 11:06 UTC (3 h 20 min ago); last success 2026-11-16 "
        "11:06 UTC (2 d 3 h ago), 2.0 KiB",
        "  prod     ok      2026-11-18 11:06 UTC (3 h 20 min ago), 120.6 KiB, took 12 s",
        "  shared   FAILED  2026-11-18 11:06 UTC (3 h 20 min ago); no success recorded",
    ]
    assert rows["dev"] is None
    assert rows["prod"] == {
        "result": "success",
        "last_run": FINISHED,
        "duration_seconds": 12.5,
        "last_success": FINISHED,
        "size_bytes": 123_456,
    }
    assert rows["stg"]["result"] == "failure"


def test_status_reads_the_records_from_disk(settings):
    records.record_success(settings, "prod", FINISHED, 3.0, 42)
    last = records.last_records(settings, ("dev", "prod"))
    assert last == {"dev": None, "prod": Record("prod", FINISHED, 3.0, True, FINISHED, 42)}


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.4, "0 s"),
        (59, "59 s"),
        (60, "1 min"),
        (7200, "2 h"),
        (7260, "2 h 1 min"),
        (48 * 3600, "2 d"),
        (50 * 3600, "2 d 2 h"),
    ],
    ids=str,
)
def test_ages_read_as_people_say_them(seconds, text):
    assert records.age(seconds) == text
