"""backup.shared: the object store's buckets through its filer, and Grafana's database."""

from __future__ import annotations

import base64
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

from infra.backup.containers import _check, _exec, _long_client, _service_image, running_container
from infra.backup.manifest import (
    FORMAT,
    GRAFANA_DB,
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
from infra.settings import Settings

FILER = "http://127.0.0.1:8888"  # SeaweedFS's filer, inside its own container
BUCKETS = "/buckets"  # where the filer keeps the S3 buckets


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


SHARED_PARTS = ("seaweedfs", "grafana")


def shared_containers(settings: Settings, client) -> dict[str, object]:
    """Each part's running container, or (a str) why it is skipped. Raises, before anything
    is written, when no part runs."""
    found: dict[str, object] = {}
    for service in SHARED_PARTS:
        name = f"{SHARED}_{service}"
        try:
            found[service] = running_container(client, name)
        except BackupError:
            why = (
                "left out by DISABLED_SERVICES"
                if name in settings.disabled_services
                else "not deployed or not running"
            )
            found[service] = f"{name} is {why}"
    if all(isinstance(part, str) for part in found.values()):
        raise BackupError(
            "nothing to back up: neither shared_seaweedfs nor shared_grafana runs. "
            "Deploy the shared stack (invoke deploy.shared)."
        )
    return found


def backup_shared(
    settings: Settings,
    report: Report = print,
    client: docker.DockerClient | None = None,
) -> BackupResult:
    """Back up the object store's buckets and Grafana's database into BACKUP_ROOT/shared/."""
    client = _long_client(settings, client)
    containers = shared_containers(settings, client)
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
        for service, container in containers.items():
            name = f"{SHARED}_{service}"
            if isinstance(container, str):
                manifest["skipped"][service] = container
                notes.append(f"{service}: skipped ({container})")
                report(f"backup shared: {service} skipped ({container})")
                continue
            manifest["images"][service] = _service_image(client, name)
            if service == "seaweedfs":
                manifest["s3"] = {"buckets": export_buckets(client, container, partial, report)}
            else:
                manifest["grafana"] = copy_grafana_db(client, container, partial)
                report("backup shared: grafana.db copied and checked")
        for file in sorted(p for p in partial.rglob("*") if p.is_file()):
            manifest["files"][file.relative_to(partial).as_posix()] = file_entry(file)
        write_manifest(partial, manifest)
        validate(partial, "shared")
        final = _finalise(partial, parent, "")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupResult(path=final, manifest=manifest, notes=notes)
