"""The backup schedule and backup drills against a real swarm.

The schedule is installed through the CLI into a directory of the test's own (never the real
/etc/systemd), and its service unit is then run as systemd would start it: the ExecStart
command of the written unit file, with only its Environment= and WorkingDirectory=. That run
must leave a verified backup of dev and a passed drill, with no task typed.

A drill of the good backup must pass and change nothing in dev (service versions, rows, keys).
A tampered copy (one row of one table changed in the dump, the dump's size and sha256 in the
manifest recomputed, so that only the per-table content checksum can tell) must fail, naming
the table, with one line and exit 1; its failure is recorded, and no throwaway container is
left either way.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import psycopg
import pytest
import redis

from infra import backup
from infra.backup.drill import DRILL_LABEL
from infra.backup.manifest import file_entry
from infra.catalog import ENVIRONMENTS

TABLE = "drill_items"
KEYS = {"drill:one": b"1", "drill:two": b"2", "drill:three": b"3"}
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _connect(platform):
    values = platform.secrets()
    return psycopg.connect(
        host="127.0.0.1",
        port=platform.port(ENVIRONMENTS["dev"].postgres_port),
        user=values["dev_postgres_user"],
        password=values["dev_postgres_password"],
        dbname=values["dev_postgres_db"],
        connect_timeout=10,
        autocommit=True,
    )


def _redis(platform):
    return redis.Redis(
        host="127.0.0.1",
        port=platform.port(ENVIRONMENTS["dev"].redis_port),
        password=platform.secrets()["dev_redis_password"],
        socket_timeout=10,
    )


def dev_state(platform) -> dict:
    """What a drill must not change: every service's spec version, the rows, the keys."""
    with _connect(platform) as conn:
        rows = conn.execute(
            f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM {TABLE} t"  # noqa: S608
        ).fetchone()
    client = _redis(platform)
    return {
        "versions": {
            s.name: s.attrs["Version"]["Index"]
            for s in platform.client.services.list(
                filters={"label": "com.docker.stack.namespace=dev"}
            )
        },
        "rows": rows,
        "keys": {key: client.get(key) for key in sorted(k.decode() for k in client.keys("*"))},
    }


def drill_record(platform) -> dict[str, float]:
    path = platform.settings.data_root / "shared" / "backup-exporter" / "drill_dev.prom"
    samples = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r'nextcandle_drill_(\w+)\{env="dev"\} (\S+)', line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def drill_containers(platform) -> list:
    return platform.client.containers.list(all=True, filters={"label": DRILL_LABEL})


def parse_service_unit(path: Path) -> dict:
    """ExecStart, Environment and WorkingDirectory of a unit file, unquoted as systemd does
    for the words the platform writes (quotes, backslashes, $$ and %%)."""

    def unescape(word: str) -> str:
        return word.replace("$$", "$").replace("%%", "%")

    section, found = "", {"environment": {}}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]":
            continue
        key, value = line.split("=", 1)
        if key == "ExecStart":
            found["exec_start"] = [unescape(word) for word in shlex.split(value)]
        elif key == "Environment":
            for item in shlex.split(value):
                name, setting = item.split("=", 1)
                found["environment"][name] = unescape(setting)
        elif key == "WorkingDirectory":
            found["working_directory"] = unescape(shlex.split(value)[0])
    return found


@pytest.fixture(scope="module")
def dev(platform):
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    platform.deploy("dev")
    with _connect(platform) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, name text, score float8)")
        conn.execute(
            f"INSERT INTO {TABLE} SELECT i, 'item ' || i, i / 7.0 FROM generate_series(1, 120) i"  # noqa: S608
        )
    client = _redis(platform)
    for key, value in KEYS.items():
        client.set(key, value)
    return platform


@pytest.fixture(scope="module")
def scheduled(dev, tmp_path_factory):
    """The schedule installed through the CLI, then its unit run as systemd would."""
    platform = dev
    units = tmp_path_factory.mktemp("systemd")
    backups = tmp_path_factory.mktemp("scheduled-backups")
    record = platform.settings.data_root / "shared" / "backup-exporter" / "drill_dev.prom"
    record.unlink(missing_ok=True)  # a drill is due: none recorded
    overrides = {"SYSTEMD_UNIT_DIR": str(units), "BACKUP_ROOT": str(backups)}
    installed = platform.invoke("backup.schedule", "--install", **overrides)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    unit = parse_service_unit(units / "nextcandle-backup.service")
    started = time.time()
    run = subprocess.run(
        unit["exec_start"],
        env={"PATH": SYSTEMD_PATH, **unit["environment"]},
        cwd=unit["working_directory"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    print(installed.stdout, run.stdout, run.stderr, sep="\n")
    return {
        "units": units,
        "backups": backups,
        "overrides": overrides,
        "unit": unit,
        "run": run,
        "started": started,
        "install_output": installed.stdout,
    }


def test_installed_units_pin_where_the_data_is_and_hold_no_secret(scheduled, platform):
    unit, units = scheduled["unit"], scheduled["units"]
    assert unit["exec_start"][1:] == [
        "-m",
        "invoke",
        "--search-root",
        str(platform.settings.root),
        "backup.all",
    ]
    assert unit["environment"]["DATA_ROOT"] == str(platform.settings.data_root)
    assert unit["environment"]["BACKUP_ROOT"] == str(scheduled["backups"])
    timer = (units / "nextcandle-backup.timer").read_text()
    assert "OnCalendar=*-*-* 03:00:00 Asia/Seoul" in timer
    assert "Persistent=true" in timer
    assert "WantedBy=timers.target" in timer
    texts = [
        (units / name).read_text()
        for name in ("nextcandle-backup.service", "nextcandle-backup.timer")
    ]
    for value in platform.secrets().values():
        if len(str(value)) >= 8:
            assert all(str(value) not in text for text in texts)
    assert "not enabled" in scheduled["install_output"]


def test_scheduled_run_makes_a_verified_backup_with_no_task_typed(scheduled):
    run = scheduled["run"]
    assert run.returncode == 0, run.stdout + run.stderr
    made = sorted(p for p in (scheduled["backups"] / "dev").iterdir() if not p.name.startswith("."))
    assert len(made) == 1, made
    manifest = backup.validate(made[0], "env")
    assert manifest["postgres"]["tables"][f"public.{TABLE}"] == 120
    assert re.fullmatch(r"-?\d+", manifest["postgres"]["checksums"][f"public.{TABLE}"])
    assert manifest["redis"]["keys"] >= len(KEYS)
    assert "backup dev" in run.stdout and "ok" in run.stdout


def test_scheduled_run_drills_dev(scheduled, platform):
    run = scheduled["run"]
    assert "drill of dev passed" in run.stdout, run.stdout + run.stderr
    record = drill_record(platform)
    assert record["last_result"] == 1
    assert record["last_run_timestamp_seconds"] >= scheduled["started"]
    assert record["last_success_timestamp_seconds"] == record["last_run_timestamp_seconds"]
    assert not drill_containers(platform)


def test_drill_passes_on_the_good_backup_and_changes_nothing(scheduled, platform):
    before = dev_state(platform)
    drilled = platform.invoke("backup.drill", "--name=dev", **scheduled["overrides"])
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    assert "drill of dev passed" in drilled.stdout
    assert "120" in drilled.stdout or "rows" in drilled.stdout
    assert dev_state(platform) == before
    assert not drill_containers(platform)
    assert drill_record(platform)["last_result"] == 1


def _tampered_dump(platform, dump: Path) -> bytes:
    """The dump restored into a scratch Postgres, one row of TABLE changed (the row count
    stays), dumped again."""
    image = platform.require("POSTGRES_IMAGE")
    scratch = platform.client.containers.run(
        image,
        detach=True,
        network_mode="none",
        environment={
            "POSTGRES_HOST_AUTH_METHOD": "trust",
            "PGHOST": "127.0.0.1",
            "PGUSER": "postgres",
        },
        labels={"nextcandle.test": "tamper"},
    )
    try:
        platform.wait_for(
            lambda: scratch.exec_run(["pg_isready", "-q"]).exit_code == 0,
            what="the scratch Postgres",
        )
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(str(dump), arcname="postgres.dump")
        scratch.put_archive("/tmp", archive.getvalue())
        code, out = scratch.exec_run(
            [
                "pg_restore",
                "--dbname=postgres",
                "--no-owner",
                "--exit-on-error",
                "/tmp/postgres.dump",
            ]
        )
        assert code == 0, out
        code, out = scratch.exec_run(
            [
                "psql",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                f"UPDATE {TABLE} SET name = 'tampered' WHERE id = 7",  # noqa: S608
            ]
        )
        assert code == 0 and b"UPDATE 1" in out, out
        code, out = scratch.exec_run(["pg_dump", "--format=custom", "postgres"], stderr=False)
        assert code == 0 and out.startswith(b"PGDMP")
        return out
    finally:
        scratch.remove(force=True, v=True)


def test_drill_fails_naming_the_table_on_a_backup_that_disagrees_with_its_manifest(
    scheduled, platform, tmp_path
):
    good = sorted(
        p for p in (scheduled["backups"] / "dev").iterdir() if not p.name.startswith(".")
    )[-1]
    root = tmp_path / "backups"
    tampered = root / "dev" / good.name
    shutil.copytree(good, tampered)
    (tampered / "postgres.dump").write_bytes(_tampered_dump(platform, good / "postgres.dump"))
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["files"]["postgres.dump"] = file_entry(tampered / "postgres.dump")
    (tampered / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    backup.validate(tampered, "env")  # every file agrees with the manifest: only content can tell
    before = dev_state(platform)
    last_pass = drill_record(platform)["last_success_timestamp_seconds"]

    drilled = platform.invoke("backup.drill", "--name=dev", BACKUP_ROOT=str(root))

    assert drilled.returncode == 1, drilled.stdout + drilled.stderr
    error = drilled.stderr.strip()
    assert len(error.splitlines()) == 1, error
    assert "Traceback" not in drilled.stderr
    assert f"public.{TABLE}" in error and "checksum" in error, error
    assert str(tampered) in error
    record = drill_record(platform)
    assert record["last_result"] == 0
    assert record["last_success_timestamp_seconds"] == last_pass
    assert dev_state(platform) == before
    assert not drill_containers(platform)


def test_status_shows_the_last_drill(scheduled, platform):
    shown = platform.invoke("status", **scheduled["overrides"])
    assert shown.returncode == 0, shown.stderr
    drills = shown.stdout.split("drills (last run):", 1)[1]
    # The last drill was of the tampered backup.
    assert re.search(r"^\s+dev\s+FAILED .*last pass", drills, re.M), shown.stdout


def test_schedule_shows_then_removes_the_installed_units(scheduled, platform):
    shown = platform.invoke("backup.schedule", **scheduled["overrides"])
    assert shown.returncode == 0, shown.stderr
    assert "installed" in shown.stdout and "not installed" not in shown.stdout
    removed = platform.invoke("backup.schedule", "--remove", **scheduled["overrides"])
    assert removed.returncode == 0, removed.stderr
    assert not list(scheduled["units"].iterdir())
    shown = platform.invoke("backup.schedule", **scheduled["overrides"])
    assert "not installed" in shown.stdout
