"""backup.env, restore.env and backup.shared against a real swarm, through the invoke CLI.

prod gets rows (a vector column included) and Redis keys, is backed up, and the backup is
restored into stg; stg must then hold exactly prod's rows and keys. Missing and corrupted
backups, and prod without --yes, must fail with one line and leave the target as it was.
Each run leaves its record for Prometheus, and BACKUP_KEEP prunes prod's older backups.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis

from infra import backup, converge
from infra.catalog import ENVIRONMENTS

TABLES = ("backup_items", "backup_events")
PROD_KEYS = {
    "backup:string": b"prod value",
    "backup:counter": b"42",
}


def backup_root(platform) -> Path:
    return platform.settings.data_root.parent / "backups"


def record_of(platform, target: str) -> dict[str, float]:
    """The samples of a target's record file, read as Prometheus' text format (by name)."""
    path = platform.settings.data_root / "shared" / "backup-exporter" / f"backup_{target}.prom"
    assert path.stat().st_mode & 0o777 == 0o644, oct(path.stat().st_mode)
    samples = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(rf'nextcandle_backup_(\w+)\{{env="{target}"\}} (\S+)', line)
        assert match, f"{path}: {line!r}"
        samples[match.group(1)] = float(match.group(2))
    return samples


def manifest_bytes(directory: Path) -> int:
    manifest = json.loads((directory / "manifest.json").read_text())
    return sum(entry["size"] for entry in manifest["files"].values())


def _connect(platform, env: str):
    values = platform.secrets()
    return psycopg.connect(
        host="127.0.0.1",
        port=platform.port(ENVIRONMENTS[env].postgres_port),
        user=values[f"{env}_postgres_user"],
        password=values[f"{env}_postgres_password"],
        dbname=values[f"{env}_postgres_db"],
        connect_timeout=10,
        autocommit=True,
    )


def table_state(platform, env: str) -> dict[str, tuple[int, str | None]]:
    """Row count and an md5 of every row, in id order, of each test table."""
    state = {}
    with _connect(platform, env) as conn:
        for table in TABLES:
            exists = conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()[0]
            if exists is None:
                state[table] = (0, None)
                continue
            state[table] = conn.execute(
                f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM {table} t"  # noqa: S608
            ).fetchone()
    return state


def _redis_container(platform, env: str):
    return platform.client.containers.list(
        filters={"label": f"com.docker.swarm.service.name={env}_redis", "status": "running"}
    )[0]


def redis_state(platform, env: str) -> dict[str, bytes]:
    """Every key and its value (strings) or its type, read inside the container (stg's Redis
    publishes no port); the password reaches redis-cli as REDISCLI_AUTH, never argv."""
    password = platform.secrets()[f"{env}_redis_password"]
    container = _redis_container(platform, env)
    code, out = container.exec_run(
        ["redis-cli", "--no-raw", "KEYS", "*"], environment={"REDISCLI_AUTH": password}
    )
    assert code == 0, out
    keys = sorted(
        line.split(") ", 1)[1].strip('"') for line in out.decode().splitlines() if ") " in line
    )
    state = {}
    for key in keys:
        code, value = container.exec_run(
            ["redis-cli", "GET", key], environment={"REDISCLI_AUTH": password}
        )
        state[key] = value.strip()
    return state


def _seed_prod(platform) -> None:
    with _connect(platform, "prod") as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        for table in TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(
            "CREATE TABLE backup_items (id int PRIMARY KEY, name text, embedding vector(3))"
        )
        conn.execute(
            "INSERT INTO backup_items SELECT i, 'item ' || i, "
            "ARRAY[i, i * 0.5, -i]::vector(3) FROM generate_series(1, 250) AS i"
        )
        conn.execute("CREATE TABLE backup_events (id bigserial PRIMARY KEY, payload jsonb)")
        conn.execute(
            "INSERT INTO backup_events (payload) "
            "SELECT jsonb_build_object('n', i, 'tag', md5(i::text)) FROM generate_series(1, 40) i"
        )
    values = platform.secrets()
    client = redis.Redis(
        host="127.0.0.1",
        port=platform.port(ENVIRONMENTS["prod"].redis_port),
        password=values["prod_redis_password"],
        socket_timeout=10,
    )
    client.flushall()
    for key, value in PROD_KEYS.items():
        client.set(key, value)


def _seed_stg(platform) -> None:
    """stg's own data before the restore: what its safety backup and the moved-aside Redis
    files must hold afterwards."""
    with _connect(platform, "stg") as conn:
        conn.execute("DROP TABLE IF EXISTS backup_items")
        conn.execute(
            "CREATE TABLE backup_items (id int PRIMARY KEY, name text, embedding vector(3))"
        )
        conn.execute("INSERT INTO backup_items VALUES (1, 'stg before restore', '[0,0,1]')")
    password = platform.secrets()["stg_redis_password"]
    code, out = _redis_container(platform, "stg").exec_run(
        ["redis-cli", "SET", "backup:stg-only", "stg value"],
        environment={"REDISCLI_AUTH": password},
    )
    assert code == 0 and b"OK" in out, out


@pytest.fixture(scope="module")
def round_trip(platform):
    """prod seeded, backed up, and the backup restored into stg, all through the CLI."""
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    platform.deploy("prod")
    platform.deploy("stg")
    _seed_prod(platform)
    _seed_stg(platform)
    redis_spec = platform.client.services.get("stg_redis").attrs["Spec"]

    made = platform.invoke("backup.env", "--name=prod", BACKUP_ROOT=str(backup_root(platform)))
    assert made.returncode == 0, made.stderr
    backups = sorted(p for p in (backup_root(platform) / "prod").iterdir())
    assert len(backups) == 1, backups
    source = backups[0]

    restored = platform.invoke(
        "restore.env", "--name=stg", f"--from={source}", BACKUP_ROOT=str(backup_root(platform))
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    print(made.stdout, restored.stdout, sep="\n")  # shown with -s, or when a test fails
    return {
        "source": source,
        "backup_output": made.stdout,
        "restore_output": restored.stdout,
        "prod_tables": table_state(platform, "prod"),
        "redis_spec_before": redis_spec,
    }


def test_backup_prints_where_it_is_and_its_size(round_trip):
    source = round_trip["source"]
    assert str(source) in round_trip["backup_output"]
    assert "KiB" in round_trip["backup_output"] or " B" in round_trip["backup_output"]


def test_backup_is_private_and_its_manifest_describes_it(round_trip):
    source = round_trip["source"]
    assert source.stat().st_mode & 0o777 == 0o700
    for name in ("manifest.json", "postgres.dump", "redis.rdb"):
        assert (source / name).stat().st_mode & 0o777 == 0o600, name
    manifest = json.loads((source / "manifest.json").read_text())
    assert manifest["env"] == "prod"
    assert manifest["postgres"]["tables"]["public.backup_items"] == 250
    assert manifest["postgres"]["tables"]["public.backup_events"] == 40
    assert manifest["redis"]["keys"] == len(PROD_KEYS)
    assert (source / "postgres.dump").read_bytes()[:5] == b"PGDMP"
    assert (source / "redis.rdb").read_bytes()[:5] == b"REDIS"
    assert not [p for p in source.parent.iterdir() if p.name.startswith(".partial")]


def test_stg_holds_prods_rows_after_the_restore(platform, round_trip):
    prod = round_trip["prod_tables"]
    assert prod["backup_items"][0] == 250 and prod["backup_events"][0] == 40
    assert table_state(platform, "stg") == prod


def test_the_vector_column_works_in_stg_after_the_restore(platform, round_trip):
    with _connect(platform, "stg") as conn:
        nearest = conn.execute(
            "SELECT id FROM backup_items ORDER BY embedding <-> '[7,3.5,-7]' LIMIT 1"
        ).fetchone()[0]
    assert nearest == 7


def test_stg_holds_prods_redis_keys_after_the_restore(platform, round_trip):
    assert redis_state(platform, "stg") == PROD_KEYS


def test_restored_redis_keeps_its_keys_and_new_writes_across_a_restart(platform, round_trip):
    """The restored data is the base of Redis's append-only file, and new writes append to
    it: both survive a stop and start."""
    password = platform.secrets()["stg_redis_password"]
    auth = {"REDISCLI_AUTH": password}
    container = _redis_container(platform, "stg")
    appendonly = container.exec_run(["redis-cli", "CONFIG", "GET", "appendonly"], environment=auth)
    assert b"yes" in appendonly.output
    key = "backup:after-restore"
    written = container.exec_run(["redis-cli", "SET", key, "new"], environment=auth)
    assert written.exit_code == 0, written.output
    backup.scale(platform.client, "stg_redis", 0)
    platform.wait_for(
        lambda: (
            not platform.client.containers.list(
                filters={"label": "com.docker.swarm.service.name=stg_redis"}
            )
        ),
        what="stg_redis to stop",
    )
    backup.scale(platform.client, "stg_redis", 1)
    converge.wait_converged(platform.client, "stg", changed=set(), timeout=300, progress=print)
    try:
        assert redis_state(platform, "stg") == {**PROD_KEYS, "backup:after-restore": b"new"}
    finally:
        _redis_container(platform, "stg").exec_run(
            ["redis-cli", "DEL", "backup:after-restore"], environment=auth
        )


def test_restore_kept_stgs_previous_data(platform, round_trip):
    saved = [
        p for p in (backup_root(platform) / "stg").iterdir() if p.name.endswith("before-restore")
    ]
    assert len(saved) == 1, saved
    manifest = json.loads((saved[0] / "manifest.json").read_text())
    assert manifest["postgres"]["tables"]["public.backup_items"] == 1
    assert str(saved[0]) in round_trip["restore_output"]
    stg_data = platform.settings.data_root / "stg"
    aside = [p for p in stg_data.iterdir() if "before-restore" in p.name]
    assert len(aside) == 1 and (aside[0] / "appendonlydir").is_dir(), aside
    assert str(aside[0]) in round_trip["restore_output"]


def test_restore_leaves_the_redis_service_definition_as_deployed(platform, round_trip):
    after = platform.client.services.get("stg_redis").attrs["Spec"]
    before = round_trip["redis_spec_before"]
    for key in ("TaskTemplate", "Labels", "EndpointSpec", "Mode"):
        assert after.get(key) == before.get(key), key


def _assert_refused_and_stg_unchanged(platform, result, words: str):
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert words in lines[0], lines[0]


def test_restore_from_a_missing_path_fails_and_changes_nothing(platform, round_trip):
    before = (table_state(platform, "stg"), redis_state(platform, "stg"))
    saved = sorted((backup_root(platform) / "stg").iterdir())
    result = platform.invoke(
        "restore.env",
        "--name=stg",
        "--from=/var/tmp/no-such-backup",
        BACKUP_ROOT=str(backup_root(platform)),
    )
    _assert_refused_and_stg_unchanged(platform, result, "does not exist")
    assert (table_state(platform, "stg"), redis_state(platform, "stg")) == before
    assert sorted((backup_root(platform) / "stg").iterdir()) == saved


@pytest.mark.parametrize("damaged", ["postgres.dump", "redis.rdb"])
def test_restore_from_a_corrupted_copy_fails_and_changes_nothing(
    platform, round_trip, tmp_path, damaged
):
    copy = tmp_path / "copy"
    shutil.copytree(round_trip["source"], copy)
    data = bytearray((copy / damaged).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    (copy / damaged).write_bytes(bytes(data))
    before = (table_state(platform, "stg"), redis_state(platform, "stg"))
    saved = sorted((backup_root(platform) / "stg").iterdir())
    result = platform.invoke(
        "restore.env", "--name=stg", f"--from={copy}", BACKUP_ROOT=str(backup_root(platform))
    )
    _assert_refused_and_stg_unchanged(platform, result, f"{damaged} is corrupt")
    assert (table_state(platform, "stg"), redis_state(platform, "stg")) == before
    assert sorted((backup_root(platform) / "stg").iterdir()) == saved


def test_restore_into_prod_without_yes_refuses(platform, round_trip):
    before = table_state(platform, "prod")
    result = platform.invoke(
        "restore.env",
        "--name=prod",
        f"--from={round_trip['source']}",
        BACKUP_ROOT=str(backup_root(platform)),
    )
    _assert_refused_and_stg_unchanged(platform, result, "--yes")
    assert table_state(platform, "prod") == before


# --- records and retention ---------------------------------------------------------------
# After every test above that reads round_trip["source"]: the run below prunes it (it is no
# longer the newest of its day).


def retention_fakes() -> tuple[dict[str, bool], str]:
    """Backup names around now, each with whether BACKUP_KEEP=7d,4w,6m prunes it, and the
    one to leave without its manifest."""
    now = datetime.now(UTC)
    yesterday = (now - timedelta(days=1)).strftime("%Y%m%d")
    long_ago = f"{now.year - 3}0115"
    two_months_ago = (now - timedelta(days=65)).strftime("%Y%m%d")
    fakes = {
        f"{yesterday}T010000Z": True,  # yesterday, not its newest
        f"{yesterday}T020000Z": False,  # yesterday's newest
        f"{two_months_ago}T030000Z": False,  # the newest of its month, 2 or 3 months back
        f"{long_ago}T030000Z": True,  # three years back
        f"{long_ago}T030000Z-before-restore": False,  # never pruned
        f"{long_ago}T040000Z": False,  # no manifest: not a verified backup, left alone
    }
    return fakes, f"{long_ago}T040000Z"


def _fake_backup(source: Path, folder: Path, name: str, verified: bool = True) -> Path:
    """A copy of a real backup under another (older) name; without its manifest when told."""
    copy = folder / name
    shutil.copytree(source, copy)
    if not verified:
        (copy / "manifest.json").unlink()
    return copy


def test_backup_env_records_its_run_and_prunes_what_backup_keep_no_longer_keeps(
    platform, round_trip
):
    folder = backup_root(platform) / "prod"
    source = round_trip["source"]
    fakes, unverified = retention_fakes()
    for name in fakes:
        _fake_backup(source, folder, name, verified=name != unverified)
    before = {p.name for p in folder.iterdir()}

    started = time.time()
    result = platform.invoke("backup.env", "--name=prod", BACKUP_ROOT=str(backup_root(platform)))
    finished = time.time()
    assert result.returncode == 0, result.stdout + result.stderr
    made = sorted(set(folder.iterdir()) - {folder / n for n in before})
    assert len(made) == 1, made
    new = made[0]
    assert str(new) in result.stdout

    # round_trip's backup is pruned too, unless midnight (UTC) passed between the two.
    source_pruned = source.name[:8] == new.name[:8]
    expected = {folder / name for name, pruned in fakes.items() if pruned}
    expected |= {source} if source_pruned else set()
    pruned_lines = [line for line in result.stdout.splitlines() if line.startswith("pruned ")]
    assert {Path(line.removeprefix("pruned ")) for line in pruned_lines} == expected
    assert len(pruned_lines) == len(expected)
    assert {p.name for p in folder.iterdir()} == {
        new.name,
        *(name for name, pruned in fakes.items() if not pruned),
        *(() if source_pruned else (source.name,)),
    }
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # nothing half-removed

    record = record_of(platform, "prod")
    assert record["last_result"] == 1
    assert record["last_size_bytes"] == manifest_bytes(new) > 0
    assert started <= record["last_success_timestamp_seconds"] <= finished
    assert record["last_run_timestamp_seconds"] == record["last_success_timestamp_seconds"]
    assert 0 < record["last_duration_seconds"] < finished - started


def test_a_failed_backup_is_recorded_and_keeps_the_last_success(platform, round_trip, tmp_path):
    previous = record_of(platform, "prod")
    # BACKUP_ROOT itself is fine (a BACKUP_ROOT inside a file is refused before the run), but
    # prod's folder in it is a file: the run starts and fails where it writes.
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "prod").write_text("")
    started = time.time()
    result = platform.invoke("backup.env", "--name=prod", BACKUP_ROOT=str(backups))
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cannot write backups under" in line, line
    record = record_of(platform, "prod")
    assert record["last_result"] == 0
    assert record["last_run_timestamp_seconds"] >= started
    for kept in ("last_success_timestamp_seconds", "last_size_bytes"):
        assert record[kept] == previous[kept], kept


def test_status_shows_the_last_backup_of_prod(platform, round_trip):
    result = platform.invoke("status", "--json")
    assert result.returncode == 0, result.stderr
    backups = json.loads(result.stdout)["backups"]
    assert backups["prod"]["result"] == "failure"  # the test above
    assert backups["prod"]["size_bytes"] == record_of(platform, "prod")["last_size_bytes"]
    assert backups["dev"] is None
    lines = platform.invoke("status").stdout.splitlines()
    assert any(line.startswith("  prod     FAILED  ") for line in lines), lines


# --- shared ------------------------------------------------------------------------------


def test_backup_shared_holds_every_bucket_object(platform):
    platform.require("TRAEFIK_IMAGE")
    platform.require("SEAWEEDFS_IMAGE")
    platform.deploy("core")
    platform.deploy("shared")
    s3 = platform.s3()
    bucket, body = f"backup-{uuid.uuid4().hex[:8]}", os.urandom(70_000)
    platform.wait_for(lambda: s3.create_bucket(Bucket=bucket), what="S3 bucket creation")
    s3.put_object(Bucket=bucket, Key="reports/2026/probe.bin", Body=body)
    s3.put_object(Bucket=bucket, Key="top.txt", Body=b"top level", ContentType="text/plain")

    result = platform.invoke("backup.shared", BACKUP_ROOT=str(backup_root(platform)))
    assert result.returncode == 0, result.stdout + result.stderr
    made = sorted((backup_root(platform) / "shared").iterdir())[-1]
    assert str(made) in result.stdout
    assert (made / "s3" / bucket / "reports/2026/probe.bin").read_bytes() == body
    assert (made / "s3" / bucket / "top.txt").read_bytes() == b"top level"
    manifest = json.loads((made / "manifest.json").read_text())
    objects = manifest["s3"]["buckets"][bucket]["objects"]
    assert set(objects) == {"reports/2026/probe.bin", "top.txt"}
    assert objects["top.txt"]["mime"] == "text/plain"
    assert manifest["files"][f"s3/{bucket}/top.txt"]["size"] == len(b"top level")
    if platform.images["GRAFANA_IMAGE"].ref is None:
        reason = "shared_grafana is left out by DISABLED_SERVICES"
        assert f"grafana skipped ({reason})" in result.stdout
        assert manifest["skipped"] == {"grafana": reason}
    else:
        assert (made / "grafana" / "grafana.db").is_file()


def test_prometheus_reads_the_record_of_the_shared_backup(platform):
    """End to end: the record file, the backup exporter (node-exporter's textfile collector)
    on the manager with the directory mounted read-only, Prometheus' scrape of it."""
    platform.require("PROMETHEUS_IMAGE")
    platform.require("NODE_EXPORTER_IMAGE")
    made = sorted((backup_root(platform) / "shared").iterdir())[-1]
    size = manifest_bytes(made)
    assert record_of(platform, "shared")["last_size_bytes"] == size

    def scraped():
        response = platform.web(
            "prometheus.localhost",
            "/api/v1/query",
            params={"query": 'nextcandle_backup_last_size_bytes{env="shared"}'},
        )
        results = response.json()["data"]["result"]
        return [r for r in results if float(r["value"][1]) == size] == results and results

    results = platform.wait_for(scraped, timeout=120, what=f"the shared record ({size} bytes)")
    assert {r["metric"]["job"] for r in results} == {"backups"}
