"""backup.shared: the object store's buckets through its filer, and Grafana's and n8n's data.

Objects are read through SeaweedFS's filer inside its container; each keeps, in the manifest,
its content type and its extended attributes (S3 user metadata is X-Amz-Meta-*), what
restore.shared gives back. Grafana's and n8n's data directories are copied whole from their
running containers (get_archive), each entry's mode and owner recorded; their SQLite
databases (grafana.db, n8n's database.sqlite) get their write-ahead log folded in and must
pass integrity_check, or the copy is taken again.

When the shared stack's data node is another node than this engine's, the filer is asked
from a companion on this node (swarm/companion.py: the store's image, on its networks) at
tasks.shared_seaweedfs, and the data directories come over the overlay from a job on the
data node (backup/shared_remote.py); what ends up in the backup is the same.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import sqlite3
import tarfile
import tempfile
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import docker
import requests

from infra import engine
from infra.backup import shared_remote
from infra.backup.containers import _check, _exec, _long_client, _service_image
from infra.backup.manifest import (
    FORMAT,
    BackupError,
    BackupResult,
    Report,
    _finalise,
    _partial_dir,
    _private_file,
    file_entry,
    validate,
    write_manifest,
)
from infra.catalog import SHARED
from infra.errors import EngineError
from infra.settings import Settings
from infra.swarm import companion
from infra.swarm.companion import Reach

FILER_PORT = 8888  # SeaweedFS's filer (stacks/shared.yml: it listens on every network)
FILER = f"http://127.0.0.1:{FILER_PORT}"  # inside the store's own container
BUCKETS = "/buckets"  # where the filer keeps the S3 buckets


def filer_url(store) -> str:
    """The filer's base URL from where `store` execs: the store's loopback, or its tasks'
    DNS name from a companion."""
    host = store.host if isinstance(store, Reach) else ""
    return f"http://{host}:{FILER_PORT}" if host else FILER


# --- backup.shared -----------------------------------------------------------------------


def _is_dir(entry: dict) -> bool:
    return bool(entry.get("Mode", 0) & (1 << 31))


def _filer_get(client, container, path: str, stdout=None, listing: bool = False):
    url = filer_url(container) + urllib.parse.quote(path)
    if listing:
        cmd = ["wget", "-qO-", "--header", "Accept: application/json", url]
    else:
        cmd = ["wget", "-qO-", url]
    return _exec(client, container, cmd, stdout=stdout)


def _filer_list(client, container, directory: str) -> Iterator[dict]:
    last = ""
    while True:
        query = f"?limit=1000&lastFileName={urllib.parse.quote(last)}"
        url = filer_url(container) + urllib.parse.quote(directory.rstrip("/") + "/") + query
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


# Each service whose data directory backup.shared copies whole, and where it is in the image.
DATA_PARTS = {"grafana": "/var/lib/grafana", "n8n": "/home/node/.n8n"}
SHARED_PARTS = ("seaweedfs", *DATA_PARTS)
SQLITE_HEADER = b"SQLite format 3\x00"


def _member_path(name: str) -> PurePosixPath | None:
    """A tar member's path below the copied directory (its first component); None for the
    directory itself. Raises on a path that would leave it."""
    parts = PurePosixPath(name).parts[1:]
    if any(part in ("..", "") for part in parts) or PurePosixPath(name).is_absolute():
        raise BackupError(f"the data directory holds {name!r}, a name that cannot be a file path.")
    return PurePosixPath(*parts) if parts else None


def _extract(stream, destination: Path, directory: str) -> dict[str, dict]:
    """The directory's tar stream (get_archive) unpacked into `destination`, private; returns
    each entry's type, mode and owner ("": the directory itself), what a restore gives back."""
    with tempfile.TemporaryFile(dir=destination.parent) as archive:
        for chunk in stream:
            archive.write(chunk)
        archive.seek(0)
        return _extract_archive(archive, destination, directory)


def _extract_archive(archive, destination: Path, directory: str) -> dict[str, dict]:
    """As _extract, from a tar file open for reading."""
    entries: dict[str, dict] = {}
    with tarfile.open(fileobj=archive) as tar:
        for member in tar:
            relative = _member_path(member.name)
            key = relative.as_posix() if relative else ""
            owner = {"mode": member.mode & 0o7777, "uid": member.uid, "gid": member.gid}
            if member.isdir():
                (destination / key).mkdir(mode=0o700, parents=True, exist_ok=True)
                entries[key] = {"type": "dir", **owner}
            elif member.isfile() and relative is not None:
                source = tar.extractfile(member)
                if source is None:
                    raise BackupError(f"{directory}/{key} cannot be read.")
                with _private_file(destination / relative) as handle:
                    shutil.copyfileobj(source, handle)
                entries[key] = {"type": "file", **owner}
            elif member.issym() and relative is not None:
                entries[key] = {"type": "link", "target": member.linkname, **owner}
            # Devices, FIFOs and hard links to them are no data a service keeps.
    return entries


def _check_sqlite(destination: Path, entries: dict[str, dict]) -> dict[str, str]:
    """Every SQLite database of the copy made self-contained (its write-ahead log folded in,
    the log and shared-memory files dropped) and checked with integrity_check."""
    results: dict[str, str] = {}
    for key, entry in sorted(entries.items()):
        path = destination / key
        if entry["type"] != "file" or key.endswith(("-wal", "-shm", "-journal")):
            continue
        with path.open("rb") as handle:
            if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                continue
        # A -shm copied from a running process may not match its -wal: SQLite rebuilds it.
        path.with_name(path.name + "-shm").unlink(missing_ok=True)
        try:
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                results[key] = db.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:  # too damaged to open: as a failed check
            results[key] = str(exc)
        for suffix in ("-wal", "-shm", "-journal"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
            entries.pop(key + suffix, None)
    return results


def copy_data_directory(
    client, container, part: str, destination: Path, attempts: int = 3, image: str = ""
) -> dict:
    """A service's data directory copied from its running container into destination/<part>/
    (from its data node when `container` is a shared_remote.RemoteData, with `image` for the
    transfer), its SQLite databases checked with integrity_check; a copy taken mid-write
    fails the check and is taken again."""
    directory = DATA_PARTS[part]
    target = destination / part
    remote = container if isinstance(container, shared_remote.RemoteData) else None
    failed = "not checked"
    for _ in range(attempts):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(mode=0o700)
        try:
            if remote is not None:
                with tempfile.TemporaryFile(dir=destination) as archive:
                    shared_remote.fetch_directory(client, remote, image, archive)
                    archive.seek(0)
                    entries = _extract_archive(archive, target, directory)
            else:
                stream, _stat = container.get_archive(directory)
                entries = _extract(stream, target, directory)
        except (docker.errors.APIError, tarfile.TarError, requests.RequestException) as exc:
            failed = f"the copy broke off ({' '.join(str(exc).split())[:200]})"
            continue
        checks = _check_sqlite(target, entries)
        bad = {key: result for key, result in checks.items() if result != "ok"}
        if not bad:
            return {"directory": directory, "entries": entries, "sqlite": checks}
        key, result = sorted(bad.items())[0]
        failed = f"{key} failed SQLite's integrity_check ({result})"
    shutil.rmtree(target, ignore_errors=True)
    where = remote.where if remote is not None else container.name
    raise BackupError(f"{part}'s data in {where}: {failed}. Run the backup again.")


def transfer_image(settings: Settings) -> str:
    """The image of the transfer's job and companion (shared_remote.py): the Postgres image,
    as the deploy's directory jobs."""
    image = settings.images.get("POSTGRES_IMAGE", "")
    if not image:
        raise BackupError(
            "POSTGRES_IMAGE is not set, and the copy of shared's data from its data node "
            "runs in that image. Set it in stacks/images.env (or IMAGES_FILE), then retry."
        )
    return image


def _reach_part(client, stack: contextlib.ExitStack, service: str):
    """Where a part's data is read: the store through its task here or a companion (kept
    open on `stack`); Grafana's and n8n's task container here, or their data node. None
    when the service has no running task."""
    name = f"{SHARED}_{service}"
    try:
        container_id, _ = engine.running_task(client, name)
    except EngineError:  # not deployed, or no task: skipped
        return None
    if service == "seaweedfs":
        return stack.enter_context(companion.reach(client, name))
    if container_id:
        return client.containers.get(container_id)
    return shared_remote.remote_data(client, name, DATA_PARTS[service])


def shared_containers(
    settings: Settings, client, stack: contextlib.ExitStack | None = None
) -> dict[str, object]:
    """Each part's container (a Reach for the store, a RemoteData for a directory on another
    node), or (a str) why it is skipped. Raises, before anything is written, when no part
    runs. Companions started here live until `stack` closes."""
    stack = stack if stack is not None else contextlib.ExitStack()
    found: dict[str, object] = {}
    for service in SHARED_PARTS:
        name = f"{SHARED}_{service}"
        part = _reach_part(client, stack, service)
        if part is not None:
            found[service] = part
        else:
            why = (
                "left out by DISABLED_SERVICES"
                if name in settings.disabled_services
                else "not deployed or not running"
            )
            found[service] = f"{name} is {why}"
    if all(isinstance(part, str) for part in found.values()):
        raise BackupError(
            "nothing to back up: none of shared_seaweedfs, shared_grafana, shared_n8n runs. "
            "Deploy the shared stack (invoke deploy.shared)."
        )
    return found


def backup_shared(
    settings: Settings,
    report: Report = print,
    client: docker.DockerClient | None = None,
    label: str = "",
    note: str = "",
) -> BackupResult:
    """Back up the object store's buckets (with each object's content type and metadata) and
    Grafana's and n8n's data directories into BACKUP_ROOT/shared/<time>/."""
    client = _long_client(settings, client)
    with contextlib.ExitStack() as stack:
        return _backup_shared(settings, report, client, label, note, stack)


def _backup_shared(settings, report, client, label, note, stack) -> BackupResult:
    containers = shared_containers(settings, client, stack)
    parent = settings.backups / SHARED
    partial = _partial_dir(parent)
    notes: list[str] = []
    manifest: dict = {
        "format": FORMAT,
        "kind": "shared",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": note,
        "images": {},
        "skipped": {},
        "files": {},
    }
    try:
        for service, container in containers.items():
            name = f"{SHARED}_{service}"
            if isinstance(container, str):
                manifest["skipped"][service] = container
                notes.append(f"{service}: skipped ({container})")
                report(f"backup shared: {service} skipped ({container})")
                continue
            manifest["images"][service] = _service_image(client, name)
            if service == "seaweedfs":
                if container.remote:
                    report(f"backup shared: {name} runs on another node; read through a "
                           "helper container on this node")  # fmt: skip
                manifest["s3"] = {"buckets": export_buckets(client, container, partial, report)}
            else:
                remote = isinstance(container, shared_remote.RemoteData)
                image = transfer_image(settings) if remote else ""
                data = copy_data_directory(client, container, service, partial, image=image)
                manifest.setdefault("data", {})[service] = data
                checked = ", ".join(sorted(data["sqlite"])) or "no SQLite database"
                source = f" from {container.where}" if remote else ""
                report(
                    f"backup shared: {service}'s data copied{source} "
                    f"({len(data['entries'])} entries; integrity_check ok: {checked})"
                )
        for file in sorted(p for p in partial.rglob("*") if p.is_file()):
            manifest["files"][file.relative_to(partial).as_posix()] = file_entry(file)
        write_manifest(partial, manifest)
        validate(partial, "shared")
        final = _finalise(partial, parent, label)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupResult(path=final, manifest=manifest, notes=notes)
