"""Backups that are proven readable, and restores that check before they change anything.

A backup is a directory BACKUP_ROOT/<env or shared>/<UTC time>/ holding its files and a
manifest.json (what, when, which images, each file's size and sha256, row and key counts).
It is written into a hidden partial directory, verified (pg_restore --list on the dump,
redis-check-rdb on the RDB, SQLite's integrity_check on grafana.db, MD5 of every object
against the object store's own), and only then renamed into place: a backup directory with
a manifest is always complete. Directories are 0700, files 0600.

Postgres and Redis are read and written inside their running task containers through the
Docker API (exec, put_archive). Credentials are read from /run/secrets inside the container
by a shell there: they are never in a process's arguments, in an exec's environment or in
our output (DESIGN decision 7).

A restore validates the backup (manifest, checksums, pg_restore --list, redis-check-rdb in
the target's own containers) before it touches the target, then saves the target's current
data as a backup of its own, and only then replaces Postgres (pg_restore --clean in one
transaction) and Redis (stopped, its data directory moved aside, the RDB installed as the
base of a fresh append-only file, started again).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import secrets as random_tokens
import shutil
import sqlite3
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import docker
from docker.errors import APIError, NotFound

from infra import converge, engine
from infra.catalog import ENVIRONMENTS, SHARED
from infra.errors import InfraError
from infra.settings import Settings, check_target

Report = Callable[[str], None]

FORMAT = 1
MANIFEST = "manifest.json"
POSTGRES_DUMP = "postgres.dump"
REDIS_RDB = "redis.rdb"
GRAFANA_DB = "grafana/grafana.db"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# <UTC time>, or <UTC time>-<label> (e.g. before-restore), optionally -<n> when taken twice
# in one second.
BACKUP_NAME = re.compile(r"^\d{8}T\d{6}Z(-[a-z][a-z-]*)?(-\d+)?$")
SERVICE_LABEL = "com.docker.swarm.service.name"
LONG_TIMEOUT = 6 * 3600  # a dump or restore may stay silent on the API for a long time
FILER = "http://127.0.0.1:8888"  # SeaweedFS's filer, inside its own container
BUCKETS = "/buckets"  # where the filer keeps the S3 buckets

# Inside the postgres container: connection settings from the secret files, then the tool.
# Used as `sh -c WRAPPER tool args...` so the tool and its arguments are sh's $0 and $@.
_PG_WRAPPER = (
    'PGPASSWORD="$(cat /run/secrets/postgres_password)" '
    'PGUSER="$(cat /run/secrets/postgres_user)" '
    'PGDATABASE="$(cat /run/secrets/postgres_db)" '
    "&& export PGPASSWORD PGUSER PGDATABASE "
    '&& exec "$0" "$@"'
)
# pg_restore connects only when told a database; --role: objects belong to the target's user.
_PG_RESTORE = (
    'PGPASSWORD="$(cat /run/secrets/postgres_password)" '
    'PGUSER="$(cat /run/secrets/postgres_user)" '
    'PGDATABASE="$(cat /run/secrets/postgres_db)" '
    "&& export PGPASSWORD PGUSER PGDATABASE "
    '&& exec pg_restore --dbname="$PGDATABASE" --role="$PGUSER" "$@"'
)
_REDIS_WRAPPER = (
    'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" && export REDISCLI_AUTH '
    '&& exec "$0" "$@"'
)
# redis-cli --rdb makes the server send a fresh snapshot (as to a replica) and writes it to a
# file; the file then goes to stdout and the messages to stderr.
_REDIS_SNAPSHOT = (
    'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" && export REDISCLI_AUTH '
    "&& dir=$(mktemp -d /tmp/nextcandle-backup.XXXXXX) "
    '&& trap \'rm -rf "$dir"\' EXIT '
    '&& redis-cli --rdb "$dir/dump.rdb" >&2 '
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


class BackupError(InfraError):
    """A backup that cannot be made, found or trusted; a restore that must not start."""


@dataclass
class BackupResult:
    path: Path
    manifest: dict
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(entry["size"] for entry in self.manifest["files"].values())


@dataclass
class RestoreResult:
    target: str
    source: Path
    safety_backup: Path
    redis_moved_aside: Path
    tables: dict[str, int]
    redis_keys: int


# --- names and files ---------------------------------------------------------------------


def stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime(STAMP_FORMAT)


def backup_name(now: datetime | None = None, label: str = "") -> str:
    return stamp(now) + (f"-{label}" if label else "")


def is_backup_name(name: str) -> bool:
    return bool(BACKUP_NAME.match(name))


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_entry(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _private_file(path: Path) -> io.BufferedWriter:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


def _private_dirs(directory: Path) -> None:
    """Every directory of a backup is 0700, whatever the umask made of it."""
    for path in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        path.chmod(0o700)


def _partial_dir(parent: Path) -> Path:
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = parent / f".partial-{stamp()}-{random_tokens.token_hex(4)}"
        partial.mkdir(mode=0o700)
    except OSError as exc:
        raise BackupError(
            f"cannot write backups under {parent} ({exc.strerror}). Set BACKUP_ROOT in .env "
            "to a writable directory, or fix its permissions."
        ) from None
    return partial


def _finalise(partial: Path, parent: Path, label: str) -> Path:
    """Rename the verified partial directory to its final, timestamped name."""
    name = backup_name(label=label)
    final, n = parent / name, 1
    while final.exists():
        final, n = parent / f"{name}-{n}", n + 1
    _private_dirs(partial)
    partial.rename(final)
    return final


def write_manifest(directory: Path, manifest: dict) -> None:
    with _private_file(directory / MANIFEST) as handle:
        handle.write(json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")


# --- validation (no daemon) --------------------------------------------------------------

REQUIRED_FILES = {"env": (POSTGRES_DUMP, REDIS_RDB), "shared": ()}


def check_rdb_header(path: Path) -> None:
    """An RDB file starts with REDIS and a four-digit version."""
    with path.open("rb") as handle:
        head = handle.read(9)
    if not re.fullmatch(rb"REDIS\d{4}", head):
        raise BackupError(f"{path} is not a Redis RDB file (no REDIS header).")


def check_dump_header(path: Path) -> None:
    """A pg_dump custom-format archive starts with PGDMP."""
    with path.open("rb") as handle:
        if handle.read(5) != b"PGDMP":
            raise BackupError(f"{path} is not a pg_dump custom-format archive (no PGDMP header).")


def validate(path: Path, kind: str, backups: Path | None = None) -> dict:
    """Check a backup directory without a daemon: manifest, file list, sizes, sha256, headers.

    Returns the manifest; raises BackupError with one line saying what is wrong."""
    where = f" (backups are under {backups})" if backups else ""
    if not path.exists():
        raise BackupError(
            f"backup {path} does not exist. Give a directory that `invoke backup.*` "
            f"printed{where}."
        )
    if not path.is_dir():
        raise BackupError(f"backup {path} is a file, not a backup directory{where}.")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BackupError(
            f"backup {path} has no {MANIFEST}: it is incomplete or not made by "
            f"`invoke backup.*`. Use another backup{where}."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise BackupError(
            f"backup {path}: {MANIFEST} is not readable JSON (damaged). Use another backup."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(
            f"backup {path}: {MANIFEST} is not a format {FORMAT} backup manifest. "
            "Use a backup made by this version of `invoke backup.*`."
        )
    if manifest.get("kind") != kind:
        what = {"env": "an environment (invoke backup.env)", "shared": "the shared stack"}
        raise BackupError(
            f"backup {path} is a backup of {manifest.get('kind')!r}, not of {what[kind]}. "
            "Give the right backup directory."
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BackupError(
            f"backup {path}: {MANIFEST} lists no files (damaged). Use another backup."
        )
    for required in REQUIRED_FILES[kind]:
        if required not in files:
            raise BackupError(
                f"backup {path}: {MANIFEST} lists no {required} (damaged). Use another backup."
            )
    for name, entry in sorted(files.items()):
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not isinstance(entry, dict):
            raise BackupError(f"backup {path}: {MANIFEST} names a bad file {name!r}. Damaged.")
        file = path / relative
        if not file.is_file():
            raise BackupError(
                f"backup {path}: {name} is missing (the copy is incomplete). Use another backup."
            )
        size = file.stat().st_size
        if size != entry.get("size"):
            raise BackupError(
                f"backup {path}: {name} is corrupt ({size} bytes, the manifest says "
                f"{entry.get('size')}). Use another backup."
            )
        if sha256_file(file) != entry.get("sha256"):
            raise BackupError(
                f"backup {path}: {name} is corrupt (its sha256 differs from the manifest). "
                "Use another backup."
            )
    if kind == "env":
        check_dump_header(path / POSTGRES_DUMP)
        check_rdb_header(path / REDIS_RDB)
    return manifest


def refuse_prod_without_yes(target: str, yes: bool, source: str) -> None:
    if target == "prod" and not yes:
        raise BackupError(
            "restoring into prod replaces its database and Redis data. If you mean it, add "
            f"--yes: invoke restore.env --name=prod --from={source} --yes"
        )


# --- containers --------------------------------------------------------------------------


def running_container(client: docker.DockerClient, service: str):
    """The running container of a service's task on this engine (the manager: stateful
    services are placed there)."""
    found = client.containers.list(
        filters={"label": f"{SERVICE_LABEL}={service}", "status": "running"}
    )
    if not found:
        stack = service.split("_", 1)[0]
        deploy = f"deploy.env --name={stack}" if stack in ENVIRONMENTS else f"deploy.{stack}"
        raise BackupError(
            f"{service} has no running container on this swarm manager. Deploy it "
            f"(invoke {deploy}) and check `invoke status`."
        )
    return found[0]


def _exec(client, container, cmd: list[str], stdout=None) -> tuple[int, bytes, bytes]:
    """Run `cmd` in the container; stdout goes to the file `stdout` when given, else is
    returned. Returns (exit code, stdout, stderr)."""
    exec_id = client.api.exec_create(container.id, cmd, stdout=True, stderr=True)["Id"]
    out: list[bytes] = []
    err: list[bytes] = []
    for chunk_out, chunk_err in client.api.exec_start(exec_id, stream=True, demux=True):
        if chunk_out:
            if stdout is not None:
                stdout.write(chunk_out)
            else:
                out.append(chunk_out)
        if chunk_err:
            err.append(chunk_err)
    code = client.api.exec_inspect(exec_id)["ExitCode"]
    return code, b"".join(out), b"".join(err)


def _last_line(text: bytes) -> str:
    lines = [line for line in text.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _check(result: tuple[int, bytes, bytes], what: str) -> bytes:
    code, out, err = result
    if code != 0:
        raise BackupError(f"{what} failed (exit {code}): {_last_line(err or out)}")
    return out


class _ContainerDir:
    """A private temporary directory inside a container, removed on exit."""

    def __init__(self, client, container):
        self.client, self.container, self.path = client, container, ""

    def __enter__(self) -> _ContainerDir:
        out = _check(
            _exec(self.client, self.container, ["mktemp", "-d", "/tmp/nextcandle-backup.XXXXXX"]),
            f"making a temporary directory in {self.container.name}",
        )
        self.path = out.decode().strip()
        return self

    def put(self, local: Path, name: str) -> str:
        """Copy a local file in (as a tar stream from disk, never whole in memory)."""
        with tempfile.TemporaryFile(dir=local.parent) as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                info = tar.gettarinfo(str(local), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mode = 0o600
                with local.open("rb") as handle:
                    tar.addfile(info, handle)
            archive.seek(0)
            if not self.container.put_archive(self.path, archive):
                raise BackupError(f"copying {local.name} into {self.container.name} failed.")
        return f"{self.path}/{name}"

    def __exit__(self, *exc) -> None:
        if self.path:
            # A container that is gone took its /tmp with it.
            with contextlib.suppress(APIError, NotFound):
                _exec(self.client, self.container, ["rm", "-rf", self.path])


def _service_image(client, service: str) -> str:
    try:
        spec = client.services.get(service).attrs["Spec"]
    except NotFound:
        return ""
    return spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@", 1)[0]


def _long_client(settings: Settings, client: docker.DockerClient | None) -> docker.DockerClient:
    client = client or engine.connect(settings.docker_host)
    engine.require_manager(client)
    client.api.timeout = LONG_TIMEOUT
    return client


# --- Postgres ----------------------------------------------------------------------------


def _pg(tool: str, *args: str) -> list[str]:
    return ["sh", "-c", _PG_WRAPPER, tool, *args]


def dump_postgres(client, container, destination: Path) -> None:
    with _private_file(destination) as handle:
        _check(
            _exec(client, container, _pg("pg_dump", "--format=custom"), stdout=handle),
            f"pg_dump in {container.name}",
        )


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
            _exec(client, container, ["sh", "-c", _REDIS_SNAPSHOT], stdout=handle),
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
        _exec(client, container, ["sh", "-c", _REDIS_WRAPPER, "redis-cli", "DBSIZE"]),
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
    postgres = running_container(client, f"{env}_postgres")
    redis = running_container(client, f"{env}_redis")
    parent = settings.backups / env
    partial = _partial_dir(parent)
    try:
        report(f"backup {env}: pg_dump of {env}_postgres")
        dump = partial / POSTGRES_DUMP
        dump_postgres(client, postgres, dump)
        tables = table_counts(client, postgres)
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
                "tables": tables,
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
    redis_dir = settings.data_root / target / "redis"
    if not redis_dir.is_dir():
        raise BackupError(
            f"{redis_dir} does not exist on this machine. Run the restore on the swarm manager "
            "that holds DATA_ROOT, with the same DATA_ROOT as the deploy."
        )
    client = _long_client(settings, client)
    postgres = running_container(client, f"{target}_postgres")
    redis = running_container(client, f"{target}_redis")

    with _ContainerDir(client, postgres) as pg_dir, _ContainerDir(client, redis) as redis_dir_in:
        # Both files are proven readable by the target's own tools before anything changes.
        list_dump(client, pg_dir, source / POSTGRES_DUMP)
        check_rdb(client, redis_dir_in, source / REDIS_RDB)
        report(f"restore {target}: backup {source} is complete and readable")

        safety = backup_env(
            settings,
            target,
            report=report,
            client=client,
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
            f"restore {target}: after pg_restore, {', '.join(wrong)} do not hold the rows the "
            f"backup counted. Its previous data is in {safety.path}."
        )

    moved_aside = restore_redis(
        settings, client, target, source / REDIS_RDB, report=report, timeout=timeout
    )
    redis = running_container(client, f"{target}_redis")
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


# --- backup.shared -----------------------------------------------------------------------


def _is_dir(entry: dict) -> bool:
    return bool(entry.get("Mode", 0) & (1 << 31))


def _filer_get(client, container, path: str, stdout=None, listing: bool = False):
    url = FILER + urllib.parse.quote(path)
    if listing:
        cmd = ["wget", "-qO-", "--header", "Accept: application/json", url]
    else:
        cmd = ["wget", "-qO-", url]
    return _exec(client, container, cmd, stdout=stdout)


def _filer_list(client, container, directory: str) -> Iterator[dict]:
    last = ""
    while True:
        query = f"?limit=1000&lastFileName={urllib.parse.quote(last)}"
        url = FILER + urllib.parse.quote(directory.rstrip("/") + "/") + query
        out = _check(
            _exec(
                client,
                container,
                ["wget", "-qO-", "--header", "Accept: application/json", url],
            ),
            f"listing {directory} in the object store",
        )
        page = json.loads(out or b"{}")
        entries = page.get("Entries") or []
        yield from entries
        if not page.get("ShouldDisplayLoadMore") or not entries:
            return
        last = page.get("LastFileName") or entries[-1]["FullPath"].rsplit("/", 1)[-1]


def _walk(client, container, directory: str) -> Iterator[dict]:
    for entry in _filer_list(client, container, directory):
        if _is_dir(entry):
            yield from _walk(client, container, entry["FullPath"])
        else:
            yield entry


def export_buckets(client, container, destination: Path, report: Report) -> dict:
    """Every bucket's objects, read through the filer inside the object store's container
    (online: the store keeps serving). Each object's MD5 is checked against the store's."""
    buckets: dict[str, dict] = {}
    for bucket in _filer_list(client, container, BUCKETS):
        name = bucket["FullPath"].rsplit("/", 1)[-1]
        if not _is_dir(bucket) or name.startswith("."):  # .system, .uploads: not buckets
            continue
        objects: dict[str, dict] = {}
        for entry in _walk(client, container, bucket["FullPath"]):
            key = entry["FullPath"][len(bucket["FullPath"]) + 1 :]
            relative = PurePosixPath("s3", name, key)
            if ".." in relative.parts:
                raise BackupError(f"object {name}/{key} has a name that cannot be a file path.")
            local = destination / relative
            with _private_file(local) as handle:
                _check(
                    _filer_get(client, container, entry["FullPath"], stdout=handle),
                    f"reading object {name}/{key}",
                )
            expected_md5 = entry.get("Md5")
            if expected_md5:
                digest = hashlib.md5(local.read_bytes()).digest()  # noqa: S324 - the store's own
                actual = base64.b64encode(digest).decode()
                if actual != expected_md5:
                    raise BackupError(
                        f"object {name}/{key} changed while it was read (MD5 differs). "
                        "Run the backup again."
                    )
            objects[key] = {
                "file": str(relative),
                "size": local.stat().st_size,
                "mime": entry.get("Mime", ""),
                "extended": entry.get("Extended") or {},
            }
        buckets[name] = {"objects": objects}
        report(f"backup shared: bucket {name}, {len(objects)} objects")
    return buckets


def copy_grafana_db(client, container, destination: Path, attempts: int = 3) -> dict:
    """grafana.db copied from the running container and checked with integrity_check; a copy
    taken mid-write fails the check and is taken again."""
    result = "not checked"
    for _ in range(attempts):
        stream, _stat = container.get_archive("/var/lib/grafana/grafana.db")
        with tempfile.TemporaryFile(dir=destination) as archive:
            for chunk in stream:
                archive.write(chunk)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                member = tar.extractfile("grafana.db")
                if member is None:
                    raise BackupError("grafana.db in shared_grafana is not a file.")
                local = destination / GRAFANA_DB
                local.unlink(missing_ok=True)
                with _private_file(local) as handle:
                    shutil.copyfileobj(member, handle)
        with sqlite3.connect(f"file:{local}?mode=ro", uri=True) as db:
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
        if result == "ok":
            return {"integrity_check": result}
    raise BackupError(f"grafana.db failed SQLite's integrity_check ({result}). Run it again.")


def backup_shared(
    settings: Settings,
    report: Report = print,
    client: docker.DockerClient | None = None,
) -> BackupResult:
    """Back up the object store's buckets and Grafana's database into BACKUP_ROOT/shared/."""
    client = _long_client(settings, client)
    parent = settings.backups / SHARED
    partial = _partial_dir(parent)
    notes: list[str] = []
    manifest: dict = {
        "format": FORMAT,
        "kind": "shared",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "images": {},
        "skipped": {},
        "files": {},
    }
    try:
        for service in ("seaweedfs", "grafana"):
            name = f"{SHARED}_{service}"
            try:
                container = running_container(client, name)
            except BackupError:
                why = (
                    "left out by DISABLED_SERVICES"
                    if name in settings.disabled_services
                    else "not deployed or not running"
                )
                manifest["skipped"][service] = f"{name} is {why}"
                notes.append(f"{service}: skipped ({name} is {why})")
                report(f"backup shared: {service} skipped ({name} is {why})")
                continue
            manifest["images"][service] = _service_image(client, name)
            if service == "seaweedfs":
                manifest["s3"] = {"buckets": export_buckets(client, container, partial, report)}
            else:
                manifest["grafana"] = copy_grafana_db(client, container, partial)
                report("backup shared: grafana.db copied and checked")
        if not manifest["images"]:
            raise BackupError(
                "nothing to back up: neither shared_seaweedfs nor shared_grafana runs. "
                "Deploy the shared stack (invoke deploy.shared)."
            )
        for file in sorted(p for p in partial.rglob("*") if p.is_file()):
            manifest["files"][file.relative_to(partial).as_posix()] = file_entry(file)
        write_manifest(partial, manifest)
        validate(partial, "shared")
        final = _finalise(partial, parent, "")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupResult(path=final, manifest=manifest, notes=notes)


def describe(result: BackupResult) -> str:
    """One line per file: what the operator needs to find and judge the backup."""
    entries = sorted(result.manifest["files"].items())
    files = ", ".join(f"{name} {human_size(entry['size'])}" for name, entry in entries[:6])
    more = len(result.manifest["files"]) - 6
    if more > 0:
        files += f", and {more} more"
    return f"{result.path} ({human_size(result.size)}: {files or 'no files'})"
