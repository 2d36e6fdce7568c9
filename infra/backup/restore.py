"""restore.env: check a backup in the target's own containers, save the target's data, then
replace Postgres (one transaction) and Redis (data directory moved aside)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import docker

from infra import converge, engine
from infra.backup.containers import (
    SERVICE_LABEL,
    _check,
    _ContainerDir,
    _exec,
    _long_client,
)
from infra.backup.env import backup_reached, check_rdb, list_dump, redis_key_count, table_counts
from infra.backup.manifest import (
    POSTGRES_DUMP,
    REDIS_RDB,
    BackupError,
    Report,
    _private_file,
    refuse_prod_without_yes,
    stamp,
    validate,
)
from infra.backup.redis_remote import restore_redis_remote
from infra.catalog import ENVIRONMENTS
from infra.settings import Settings, check_target
from infra.swarm.companion import reach

# pg_restore connects only when told a database; --role: objects belong to the target's user.
_PG_RESTORE = (
    'PGPASSWORD="$(cat /run/secrets/postgres_password)" '
    'PGUSER="$(cat /run/secrets/postgres_user)" '
    'PGDATABASE="$(cat /run/secrets/postgres_db)" '
    "&& export PGPASSWORD PGUSER PGDATABASE "
    '&& exec pg_restore --dbname="$PGDATABASE" --role="$PGUSER" "$@"'
)


@dataclass
class RestoreResult:
    target: str
    source: Path
    safety_backup: Path
    redis_moved_aside: str  # a path here, or "PATH on node NAME"
    tables: dict[str, int]
    redis_keys: int


# --- restore.env -------------------------------------------------------------------------


def restore_env(
    settings: Settings,
    target: str,
    source: Path,
    yes: bool = False,
    report: Report = print,
    client: docker.DockerClient | None = None,
    timeout: float = 300,
) -> RestoreResult:
    """Replace `target`'s Postgres and Redis data with a backup, after proving it readable."""
    check_target(target, tuple(ENVIRONMENTS))
    refuse_prod_without_yes(target, yes, str(source))
    source = source.expanduser().resolve()
    manifest = validate(source, "env", settings.backups)
    client = _long_client(settings, client)
    redis_here, _ = engine.running_task(client, f"{target}_redis")
    redis_dir = settings.data_root / target / "redis"
    # Where Redis runs on another node, its directory is there, not here (restore_redis_remote).
    if redis_here and not redis_dir.is_dir():
        raise BackupError(
            f"{redis_dir} does not exist on this machine. Run the restore on the swarm manager "
            "that holds DATA_ROOT, with the same DATA_ROOT as the deploy."
        )
    with (
        reach(client, f"{target}_postgres") as postgres,
        reach(client, f"{target}_redis") as redis,
        _ContainerDir(client, postgres) as pg_dir,
        _ContainerDir(client, redis) as redis_dir_in,
    ):
        # Both files are proven readable by the target's own tools before anything changes.
        list_dump(client, pg_dir, source / POSTGRES_DUMP)
        check_rdb(client, redis_dir_in, source / REDIS_RDB)
        report(f"restore {target}: backup {source} is complete and readable")

        safety = backup_reached(
            settings,
            target,
            client,
            postgres,
            redis,
            report=report,
            label="before-restore",
            note=f"{target}'s data before it was restored from {source}",
        )
        report(f"restore {target}: its current data is saved in {safety.path}")

        report(f"restore {target}: pg_restore into {target}_postgres (one transaction)")
        _check(
            _exec(
                client,
                postgres,
                [
                    "sh",
                    "-c",
                    _PG_RESTORE,
                    "pg_restore",
                    "--clean",
                    "--if-exists",
                    "--no-owner",
                    "--no-acl",
                    "--single-transaction",
                    "--exit-on-error",
                    f"{pg_dir.path}/postgres.dump",
                ],
            ),
            f"pg_restore into {target}_postgres (rolled back, {target} unchanged)",
        )
        tables = table_counts(client, postgres)
        expected = manifest["postgres"]["tables"]
        wrong = sorted(name for name, count in expected.items() if tables.get(name) != count)
        if wrong:
            raise BackupError(
                f"restore {target}: after pg_restore, {', '.join(wrong)} do not hold the rows "
                f"the backup counted. Its previous data is in {safety.path}."
            )

        if redis.remote:
            moved_aside = restore_redis_remote(
                client, redis, f"{redis_dir_in.path}/dump.rdb", report=report, timeout=timeout
            )
            keys = redis_key_count(client, redis)  # the companion reaches the new task
    if not redis.remote:
        moved_aside = str(
            restore_redis(
                settings, client, target, source / REDIS_RDB, report=report, timeout=timeout
            )
        )
        with reach(client, f"{target}_redis") as redis:  # its new task
            keys = redis_key_count(client, redis)
    counted = manifest["redis"]
    if not counted["keys"] - counted.get("expires", 0) <= keys <= counted["keys"]:
        raise BackupError(
            f"restore {target}: Redis holds {keys} keys after the restore, the backup "
            f"{counted['keys']}. Its previous data is in {moved_aside} and {safety.path}."
        )
    return RestoreResult(
        target=target,
        source=source,
        safety_backup=safety.path,
        redis_moved_aside=moved_aside,
        tables={name: tables[name] for name in expected},
        redis_keys=keys,
    )


def aof_base_files(rdb: bytes | None = None) -> dict[str, bytes]:
    """An append-only directory whose base is the given RDB (Redis 7+ multi-part AOF).

    With appendonly on, Redis loads its AOF at start and ignores dump.rdb; an AOF whose base
    file is an RDB snapshot loads that snapshot, and Redis appends to the incr file."""
    return {
        "appendonly.aof.1.base.rdb": rdb or b"",
        "appendonly.aof.1.incr.aof": b"",
        "appendonly.aof.manifest": (
            b"file appendonly.aof.1.base.rdb seq 1 type b\n"
            b"file appendonly.aof.1.incr.aof seq 1 type i\n"
        ),
    }


def restore_redis(
    settings: Settings,
    client,
    target: str,
    rdb: Path,
    report: Report = print,
    timeout: float = 300,
) -> Path:
    """Stop Redis, move its data directory aside, install the RDB as the AOF base, start it.
    Returns where the previous data went."""
    service = f"{target}_redis"
    data_dir = settings.data_root / target / "redis"
    moved_aside = data_dir.with_name(f"redis.before-restore-{stamp()}")
    replicas = client.api.inspect_service(service)["Spec"]["Mode"]["Replicated"]["Replicas"]
    report(f"restore {target}: stopping {target}_redis")
    scale(client, service, 0)
    try:
        _wait_no_containers(client, service, timeout)
        info = data_dir.stat()
        data_dir.rename(moved_aside)
        report(f"restore {target}: previous Redis data moved to {moved_aside}")
        data_dir.mkdir(mode=info.st_mode & 0o7777)
        aof_dir = data_dir / "appendonlydir"
        aof_dir.mkdir(mode=0o700)
        for name, content in aof_base_files(rdb.read_bytes()).items():
            with _private_file(aof_dir / name) as handle:
                handle.write(content)
        if os.geteuid() == 0:  # Redis runs as the directory's owner (uid 999 in the image)
            for path in (data_dir, aof_dir, *aof_dir.iterdir()):
                os.chown(path, info.st_uid, info.st_gid)
    finally:
        report(f"restore {target}: starting {target}_redis")
        scale(client, service, replicas)
    converge.wait_converged(client, target, changed=set(), timeout=timeout, progress=report)
    return moved_aside


def scale(client, service: str, replicas: int) -> None:
    """Set a replicated service's replica count and nothing else (as `docker service scale`)."""
    engine.update_service_spec(client, service, mode={"Replicated": {"Replicas": replicas}})


def _wait_no_containers(client, service: str, timeout: float) -> None:
    """Until no container of the service runs (a stopped Redis has written and closed its
    files)."""
    deadline = time.monotonic() + timeout
    while client.containers.list(sparse=True, filters={"label": f"{SERVICE_LABEL}={service}"}):
        if time.monotonic() > deadline:
            raise BackupError(f"{service} did not stop within {timeout:.0f} s; nothing restored.")
        time.sleep(1)
