"""backup.env: an environment's Postgres (pg_dump) and Redis (RDB snapshot), read and
checked with the services' own tools: in their running containers when they run on this
engine's node, else in companions here that reach them over the overlay network
(swarm/companion.py)."""

from __future__ import annotations

import contextlib
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import docker

from infra.backup.containers import (
    _check,
    _ContainerDir,
    _exec,
    _long_client,
    _service_image,
    redis_args,
)
from infra.backup.manifest import (
    FORMAT,
    POSTGRES_DUMP,
    REDIS_RDB,
    BackupResult,
    Report,
    _finalise,
    _partial_dir,
    _private_file,
    check_dump_header,
    check_rdb_header,
    file_entry,
    validate,
    write_manifest,
)
from infra.backup.tables import DUMP_AND_STATS, MARK, TableStats, dump_script, parse_stats
from infra.catalog import ENVIRONMENTS
from infra.settings import Settings, check_target
from infra.swarm.companion import Reach, reach

# Inside the postgres container: connection settings from the secret files, then the tool.
# Used as `sh -c WRAPPER tool args...` so the tool and its arguments are sh's $0 and $@.
_PG_WRAPPER = (
    'PGPASSWORD="$(cat /run/secrets/postgres_password)" '
    'PGUSER="$(cat /run/secrets/postgres_user)" '
    'PGDATABASE="$(cat /run/secrets/postgres_db)" '
    "&& export PGPASSWORD PGUSER PGDATABASE "
    '&& exec "$0" "$@"'
)
_REDIS_WRAPPER = (
    'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" && export REDISCLI_AUTH && exec "$0" "$@"'
)
# redis-cli --rdb makes the server send a fresh snapshot (as to a replica) and writes it to a
# file; the file then goes to stdout and the messages to stderr. `$@`: where the server is.
_REDIS_SNAPSHOT = (
    'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" && export REDISCLI_AUTH '
    "&& dir=$(mktemp -d /tmp/nextcandle-backup.XXXXXX) "
    "&& trap 'rm -rf \"$dir\"' EXIT "
    '&& redis-cli "$@" --rdb "$dir/dump.rdb" >&2 '
    '&& cat "$dir/dump.rdb"'
)
_TABLE_COUNTS = """
SELECT format('%I.%I', table_schema, table_name),
       (xpath('/row/n/text()', query_to_xml(
           format('SELECT count(*) AS n FROM %I.%I', table_schema, table_name),
           false, true, '')))[1]::text
FROM information_schema.tables
WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""


# --- Postgres ----------------------------------------------------------------------------


def _pg(tool: str, *args: str) -> list[str]:
    return ["sh", "-c", _PG_WRAPPER, tool, *args]


def dump_postgres(client, container, destination: Path) -> None:
    with _private_file(destination) as handle:
        _check(
            _exec(client, container, _pg("pg_dump", "--format=custom"), stdout=handle),
            f"pg_dump in {container.name}",
        )


def dump_postgres_with_stats(client, container, destination: Path) -> TableStats:
    """pg_dump into `destination`, and each table's rows and checksum in the dump's own
    snapshot (tables.py): what a restore of this dump must reproduce."""
    with _private_file(destination) as handle:
        code, _, err = _exec(
            client,
            container,
            _pg("sh", "-c", DUMP_AND_STATS, "sh", dump_script()),
            stdout=handle,
        )
    text = err.decode(errors="replace")
    if code != 0:
        messages = b"\n".join(
            line for line in err.splitlines() if not line.startswith(MARK.encode())
        )
        _check((code, b"", messages), f"pg_dump in {container.name}")
    return parse_stats(text, marked=True)


def list_dump(client, workdir: _ContainerDir, dump: Path) -> list[str]:
    """pg_restore --list on our copy of the dump, inside a container that has pg_restore."""
    inside = workdir.put(dump, "postgres.dump")
    out = _check(
        _exec(client, workdir.container, ["pg_restore", "--list", inside]),
        f"{dump}: pg_restore --list",
    )
    return out.decode(errors="replace").splitlines()


def table_counts(client, container) -> dict[str, int]:
    out = _check(
        _exec(client, container, _pg("psql", "-X", "-At", "-F", "\t", "-c", _TABLE_COUNTS)),
        f"counting rows in {container.name}",
    )
    counts = {}
    for line in out.decode().splitlines():
        if "\t" in line:
            name, count = line.rsplit("\t", 1)
            counts[name] = int(count)
    return counts


# --- Redis -------------------------------------------------------------------------------


def snapshot_redis(client, container, destination: Path) -> None:
    with _private_file(destination) as handle:
        _check(
            _exec(
                client,
                container,
                ["sh", "-c", _REDIS_SNAPSHOT, "sh", *redis_args(container)],
                stdout=handle,
            ),
            f"redis-cli --rdb in {container.name}",
        )


def check_rdb(client, workdir: _ContainerDir, rdb: Path) -> dict[str, int]:
    """redis-check-rdb on our copy; returns the keys and expires it read."""
    inside = workdir.put(rdb, "dump.rdb")
    out = _check(
        _exec(client, workdir.container, ["redis-check-rdb", inside]), f"{rdb}: redis-check-rdb"
    )
    text = out.decode(errors="replace")
    keys = re.search(r"(\d+) keys read", text)
    expires = re.search(r"(\d+) expires", text)
    return {
        "keys": int(keys.group(1)) if keys else 0,
        "expires": int(expires.group(1)) if expires else 0,
    }


def redis_key_count(client, container) -> int:
    out = _check(
        _exec(
            client,
            container,
            ["sh", "-c", _REDIS_WRAPPER, "redis-cli", *redis_args(container), "DBSIZE"],
        ),
        f"redis-cli DBSIZE in {container.name}",
    )
    return int(out.decode().strip().split()[-1])


# --- backup.env --------------------------------------------------------------------------


def backup_env(
    settings: Settings,
    env: str,
    report: Report = print,
    client: docker.DockerClient | None = None,
    label: str = "",
    note: str = "",
) -> BackupResult:
    """Back up one environment's Postgres and Redis into BACKUP_ROOT/<env>/<time>/."""
    check_target(env, tuple(ENVIRONMENTS))
    client = _long_client(settings, client)
    with contextlib.ExitStack() as stack:
        postgres = stack.enter_context(reach(client, f"{env}_postgres"))
        redis = stack.enter_context(reach(client, f"{env}_redis"))
        return backup_reached(settings, env, client, postgres, redis, report, label, note)


def backup_reached(
    settings: Settings,
    env: str,
    client: docker.DockerClient,
    postgres: Reach,
    redis: Reach,
    report: Report = print,
    label: str = "",
    note: str = "",
) -> BackupResult:
    """backup_env through services already reached (a restore's safety backup)."""
    for reached in (postgres, redis):
        if reached.remote:
            report(f"backup {env}: {reached.service} runs on another node: reached from here")
    parent = settings.backups / env
    partial = _partial_dir(parent)
    try:
        report(f"backup {env}: pg_dump of {env}_postgres")
        dump = partial / POSTGRES_DUMP
        stats = dump_postgres_with_stats(client, postgres, dump)
        report(f"backup {env}: redis snapshot of {env}_redis")
        rdb = partial / REDIS_RDB
        snapshot_redis(client, redis, rdb)
        check_dump_header(dump)
        check_rdb_header(rdb)
        with _ContainerDir(client, postgres) as workdir:
            listing = list_dump(client, workdir, dump)
        with _ContainerDir(client, redis) as workdir:
            keys = check_rdb(client, workdir, rdb)
        manifest = {
            "format": FORMAT,
            "kind": "env",
            "env": env,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "note": note,
            "images": {
                "postgres": _service_image(client, f"{env}_postgres"),
                "redis": _service_image(client, f"{env}_redis"),
            },
            "postgres": {
                "tables": stats.rows,
                "checksums": stats.checksums,
                "archive_entries": sum(1 for line in listing if line and not line.startswith(";")),
            },
            "redis": keys,
            "files": {POSTGRES_DUMP: file_entry(dump), REDIS_RDB: file_entry(rdb)},
        }
        write_manifest(partial, manifest)
        validate(partial, "env")  # what we wrote is what restore will read
        final = _finalise(partial, parent, label)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupResult(path=final, manifest=manifest)
