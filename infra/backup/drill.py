"""backup.drill: prove that an environment's newest backup restores, without touching the
environment.

The backup is first checked as restore.env checks it (manifest, sizes, sha256, headers). Then
its dump goes into a throwaway Postgres and its RDB into a throwaway Redis: plain containers of
the environment's own images, on the swarm manager (where the backups are), with no network at
all (network mode none: nothing can reach them, they reach nothing; they are driven through
the Docker API's exec), labelled `nextcandle.drill`, and removed with their anonymous volumes
when the drill ends, whatever its result. The restored database must then hold every table the
manifest lists with the same row count and content checksum (tables.py), and the Redis the
keys the manifest counted (keys that expired since the backup excepted, as restore.env allows).

Nothing of the environment is read but its service specs (for the image) and nothing is
changed: no service update, no exec in its containers, no write to its data directories.

A drill is an operator's question only until it starts: an unknown environment, no backup at
all, no Docker or not a manager stop it with no record. From then on, its result is recorded
for Prometheus (records.py, drill_<env>.prom) whether it passes or fails.
"""

from __future__ import annotations

import contextlib
import secrets as random_tokens
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from infra.backup import records
from infra.backup.containers import _check, _ContainerDir, _exec, _last_line, _long_client, put_file
from infra.backup.manifest import MANIFEST, POSTGRES_DUMP, REDIS_RDB, BackupError, Report, validate
from infra.backup.retention import backup_time
from infra.backup.tables import STATS_ONLY, STATS_SQL, differences, parse_stats
from infra.catalog import ENVIRONMENTS
from infra.errors import InfraError
from infra.settings import Settings, check_target

DRILL_LABEL = "nextcandle.drill"
DRILL_DB = "drill"
READY_TIMEOUT = 180.0


class DrillFailed(BackupError):
    """The backup did not restore as its manifest says: the message names what differs."""


@dataclass
class DrillResult:
    env: str
    source: Path
    tables: dict[str, int]
    redis_keys: int
    duration: float
    record: Path | None = None
    notes: list[str] = field(default_factory=list)


def newest_backup(settings: Settings, env: str) -> Path:
    """The newest backup of `env` that backup.env made (a manifest, no label: not a
    `-before-restore` copy)."""
    folder = settings.backups / env
    candidates = []
    if folder.is_dir():
        for path in folder.iterdir():
            parts = backup_time(path.name)
            if parts and not parts[1] and (path / MANIFEST).is_file():
                candidates.append((parts[0], parts[2], path))
    if not candidates:
        raise BackupError(
            f"no backup of {env} under {folder} to drill. Make one: invoke backup.env --name={env}"
        )
    return max(candidates)[2]


def _image(settings: Settings, client, env: str, service: str, variable: str) -> str:
    """The image the environment runs (what a restore would restore into), else the one a
    deploy would run; it must be on this engine (a drill pulls nothing)."""
    try:
        spec = client.services.get(f"{env}_{service}").attrs["Spec"]
        image = spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@", 1)[0]
    except NotFound:
        image = settings.images[variable]
    try:
        client.images.get(image)
    except ImageNotFound:
        raise BackupError(
            f"the drill needs the image {image} on this swarm manager and it is not there. "
            f"Deploy {env} here (invoke deploy.env --name={env}) or load the image."
        ) from None
    return image


def drill_env(
    settings: Settings,
    env: str,
    source: Path | None = None,
    report: Report = print,
    client: docker.DockerClient | None = None,
    timeout: float = READY_TIMEOUT,
) -> DrillResult:
    """Restore a backup of `env` (its newest, or `source`) into throwaway containers and check
    it against its manifest; record the result. Raises DrillFailed when it does not agree."""
    check_target(env, tuple(ENVIRONMENTS))
    source = source.expanduser().resolve() if source else newest_backup(settings, env)
    client = _long_client(settings, client)
    images = {
        "postgres": _image(settings, client, env, "postgres", "POSTGRES_IMAGE"),
        "redis": _image(settings, client, env, "redis", "REDIS_IMAGE"),
    }
    started = time.monotonic()
    try:
        result = _drill(client, env, source, images, report, timeout)
    except Exception as exc:
        duration = time.monotonic() - started
        try:
            records.record_drill(settings, env, time.time(), duration, success=False)
        except OSError as record_exc:
            if isinstance(exc, InfraError):
                raise DrillFailed(
                    f"{exc} (The failed drill could not be recorded in "
                    f"{records.drill_path_of(settings, env)}: {record_exc.strerror}.)"
                ) from None
        if isinstance(exc, BackupError) and not isinstance(exc, DrillFailed):
            raise DrillFailed(f"drill of {env} failed: {exc}") from None
        raise
    result.duration = time.monotonic() - started
    try:
        result.record = records.record_drill(
            settings, env, time.time(), result.duration, success=True
        )
    except OSError as exc:
        raise BackupError(
            f"the drill of {env} passed, but its record cannot be written to "
            f"{records.drill_path_of(settings, env)} ({exc.strerror}). Fix the permissions of "
            f"{records.directory(settings)}."
        ) from None
    return result


def _drill(client, env: str, source: Path, images: dict, report: Report, timeout: float):
    manifest = validate(source, "env")
    report(f"drill {env}: backup {source} is complete (sizes and sha256 as its manifest says)")
    name = f"nextcandle-drill-{env}-{random_tokens.token_hex(3)}"
    containers = []
    try:
        report(f"drill {env}: restoring the backup into a throwaway Postgres and Redis")
        postgres = client.containers.run(
            images["postgres"],
            name=f"{name}-postgres",
            detach=True,
            network_mode="none",
            labels={DRILL_LABEL: env},
            # No password exists: nothing but our exec can reach this server.
            environment={
                "POSTGRES_HOST_AUTH_METHOD": "trust",
                "POSTGRES_DB": DRILL_DB,
                "PGHOST": "127.0.0.1",
                "PGUSER": "postgres",
                "PGDATABASE": DRILL_DB,
            },
        )
        containers.append(postgres)
        redis = client.containers.create(
            images["redis"],
            # Loads the RDB and writes nothing back.
            [
                "redis-server",
                "--appendonly",
                "no",
                "--save",
                "",
                "--dir",
                "/data",
                "--dbfilename",
                "dump.rdb",
            ],
            name=f"{name}-redis",
            network_mode="none",
            labels={DRILL_LABEL: env},
        )
        containers.append(redis)
        _put_readable(redis, "/data", source / REDIS_RDB, "dump.rdb")
        redis.start()

        _wait(client, postgres, ["pg_isready", "-q"], timeout, "the throwaway Postgres")
        with _ContainerDir(client, postgres) as workdir:
            inside = workdir.put(source / POSTGRES_DUMP, POSTGRES_DUMP)
            _check(
                _exec(
                    client,
                    postgres,
                    [
                        "pg_restore",
                        f"--dbname={DRILL_DB}",
                        "--no-owner",
                        "--no-acl",
                        "--single-transaction",
                        "--exit-on-error",
                        inside,
                    ],
                ),
                f"drill {env}: pg_restore of {source / POSTGRES_DUMP}",
            )
        stats = parse_stats(
            _check(
                _exec(client, postgres, ["sh", "-c", STATS_ONLY, "sh", STATS_SQL]),
                f"drill {env}: counting the restored tables",
            ).decode(errors="replace")
        )
        expected = manifest["postgres"]["tables"]
        checksums = manifest["postgres"].get("checksums")
        problems = differences(expected, checksums or {}, stats)
        if problems:
            raise DrillFailed(
                f"drill of {env} failed: backup {source} does not restore as its manifest says: "
                + "; ".join(problems)
                + ". Do not rely on it: make a new backup (invoke backup.env "
                f"--name={env}) and drill it."
            )
        report(
            f"drill {env}: {len(stats.rows)} tables, {sum(stats.rows.values())} rows, "
            + ("row counts and checksums" if checksums is not None else "row counts")
            + " as the manifest says"
        )

        keys = _wait(
            client, redis, ["redis-cli", "DBSIZE"], timeout, "the throwaway Redis", _integer
        )
        counted = manifest["redis"]
        if not counted["keys"] - counted.get("expires", 0) <= keys <= counted["keys"]:
            raise DrillFailed(
                f"drill of {env} failed: backup {source}: its Redis snapshot loads {keys} keys, "
                f"the manifest counted {counted['keys']}. Make a new backup (invoke backup.env "
                f"--name={env}) and drill it."
            )
        report(f"drill {env}: Redis loaded {keys} keys as the manifest says")
        result = DrillResult(env, source, dict(stats.rows), keys, 0.0)
        if checksums is None:
            result.notes.append(
                "this backup's manifest has no table checksums (made before they were "
                "recorded): only row counts were compared"
            )
        return result
    finally:
        for container in containers:
            with contextlib.suppress(APIError, NotFound):
                container.remove(force=True, v=True)
        if containers:
            report(f"drill {env}: throwaway containers removed")


def _integer(out: bytes) -> int | None:
    text = out.decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _wait(client, container, cmd, timeout: float, what: str, parse=None):
    """Run `cmd` in the container until it succeeds (and `parse` of its output gives a
    value); fail with the container's last log line if it stops or the time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        container.reload()
        if container.status not in ("created", "running"):
            logs = container.logs(tail=20)
            raise BackupError(f"{what} stopped ({container.status}): {_last_line(logs)}")
        if container.status == "running":
            code, out, err = _exec(client, container, cmd)
            if code == 0:
                value = parse(out) if parse else True
                if value is not None:
                    return value
            last = _last_line(err or out)
        if time.monotonic() > deadline:
            raise BackupError(f"{what} was not ready within {timeout:.0f} s: {last}")
        time.sleep(0.5)


def _put_readable(container, directory: str, local: Path, name: str) -> None:
    """Copy a backup file into a created (not started) container, readable by the image's
    unprivileged user (the backup's own file is 0600)."""
    put_file(container, directory, local, name, 0o644)
