"""restore.shared: put a backup.shared backup back: the objects with their content type and
metadata, and Grafana's and n8n's data directories.

Everything is checked before anything changes: the backup (manifest, sizes, sha256), --yes,
the services it needs, and that the data directories are on this machine. Then the shared
stack's current data is saved as a backup of its own (<time>-before-restore), and:
- each object is written back through SeaweedFS's own S3 API inside its container, as an S3
  POST upload (a multipart/form-data form signed with the platform's S3 keys, the way a
  browser upload form is): its content type, user metadata (X-Amz-Meta-*) and plain HTTP
  headers travel as the form's fields, so the S3 API stores them exactly as it stored the
  original PUT. The filer's own upload keeps none of the user metadata, which is why the S3
  API is used. Then everything is read back from the filer's listing: MD5, content type and
  metadata must equal the backup's. Objects that are in the store but not in the backup stay;
  a bucket that is gone is made again first (`s3.bucket.create` in `weed shell`, or from
  another node an S3 CreateBucket signed here and sent by bash from a companion);
- Grafana and n8n are stopped (scaled to 0: both keep SQLite databases open), their data
  directories moved aside to DATA_ROOT/shared/<service>.before-restore-<time>/, the backup's
  files put in their place with the modes and owners the backup recorded, and the services
  started again.

When the shared stack's data node is another node than this engine's, the S3 uploads run
in a companion on this node (swarm/companion.py: the store's image, on its
networks) against tasks.shared_seaweedfs, and each data directory is replaced on its node by a
job that unpacks the backup's files sent over the overlay (backup/shared_remote.py), the old
directory moved aside there and put back if a step fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from secrets import token_hex

import docker
from docker.errors import NotFound

from infra import converge, engine, secrets
from infra.backup import shared_remote
from infra.backup.containers import _check, _ContainerDir, _long_client
from infra.backup.manifest import BackupError, Report, stamp, validate
from infra.backup.redis_remote import _wait_stopped
from infra.backup.restore import _wait_no_containers, scale
from infra.backup.shared import (
    BUCKETS,
    DATA_PARTS,
    _filer_list,
    _is_dir,
    _walk,
    backup_shared,
    transfer_image,
)
from infra.catalog import SHARED
from infra.errors import EngineError
from infra.settings import Settings
from infra.swarm import companion
from infra.swarm.companion import Reach
from infra.swarm.placement import hostname

# The object's metadata a restore puts back, by its name among the filer's extended
# attributes: user metadata (X-Amz-Meta-*) and three plain HTTP headers, each an S3 POST form
# field. The store's own attributes (Seaweed-X-Amz-ETag, -Owner, checksums) it makes anew.
_USER_METADATA = "X-Amz-Meta-"
_HTTP_FIELDS = ("Cache-Control", "Content-Disposition", "Expires")
S3_PORT = 8333  # SeaweedFS's S3 API (-s3.port)
S3_API = f"http://127.0.0.1:{S3_PORT}"  # inside the store's own container
MASTER_PORT = 9333  # SeaweedFS's master (weed server's default)
_POST_EXPIRES = 900  # seconds a signed upload form stays valid
_CREATE_BUCKET = 'echo "s3.bucket.create -name $1" | weed shell'  # the name is an argument
# S3's bucket naming rules: what a backup names must be one before it reaches a shell.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass
class SharedRestoreResult:
    source: Path
    safety_backup: Path
    buckets: int = 0
    objects: int = 0
    directories: list[str] = field(default_factory=list)
    moved_aside: list[tuple[str, Path | str]] = field(default_factory=list)


def refuse_without_yes(yes: bool, source: Path) -> None:
    if not yes:
        raise BackupError(
            "restoring the shared stack replaces its objects and Grafana's and n8n's data "
            "(both stop meanwhile). If you mean it, add --yes: "
            f"invoke restore.shared --from={source} --yes"
        )


def restore_shared(
    settings: Settings,
    source: Path,
    yes: bool = False,
    report: Report = print,
    client: docker.DockerClient | None = None,
    timeout: float = 300,
) -> SharedRestoreResult:
    """Replace the shared stack's objects and Grafana's and n8n's data with a backup."""
    source = source.expanduser().resolve()
    buckets, parts = check_backup(settings, source, yes)
    keys = _s3_keys(settings) if buckets else None
    client = _long_client(settings, client)
    store_here = _require_running(client, f"{SHARED}_seaweedfs") if buckets else True
    remotes = {part: _check_part(settings, client, part, data) for part, data in parts.items()}
    # A job or companion with the Postgres image: for a directory on another node, or a
    # bucket made again when the store runs on another node.
    image = transfer_image(settings) if any(remotes.values()) or not store_here else ""
    report(f"restore shared: backup {source} is complete and readable")

    safety = backup_shared(
        settings,
        report=report,
        client=client,
        label="before-restore",
        note=f"the shared stack's data before it was restored from {source}",
    )
    report(f"restore shared: its current data is saved in {safety.path}")
    result = SharedRestoreResult(source=source, safety_backup=safety.path)

    if buckets:
        with companion.reach(client, f"{SHARED}_seaweedfs") as store:
            if store.remote:
                report(f"restore shared: {SHARED}_seaweedfs runs on another node; written "
                       "through a helper container on this node")  # fmt: skip
            result.objects = restore_objects(client, store, source, buckets, keys, report, image)
        result.buckets = len(buckets)
    for part, data in parts.items():
        remote = remotes[part]
        if remote is not None:
            moved = restore_directory_remote(client, part, remote, image, source, data, report,
                                             timeout)  # fmt: skip
        else:
            moved = restore_directory(settings, client, part, source, data, report, timeout)
        result.directories.append(part)
        result.moved_aside.append((part, moved))
    if parts:
        converge.wait_converged(client, SHARED, changed=set(), timeout=timeout, progress=report)
    return result


# --- checks ------------------------------------------------------------------------------


def check_backup(settings: Settings, source: Path, yes: bool) -> tuple[dict, dict]:
    """Everything about the backup itself, before the engine is asked: complete and readable,
    --yes given, every bucket and object name one the store can take. Returns its buckets and
    the data directories it holds."""
    manifest = validate(source, "shared", settings.backups)
    refuse_without_yes(yes, source)
    buckets = (manifest.get("s3") or {}).get("buckets") or {}
    parts = {
        part: data for part, data in (manifest.get("data") or {}).items() if part in DATA_PARTS
    }
    for name, bucket in buckets.items():
        if not _BUCKET_NAME.match(name):
            raise BackupError(f"the backup names a bucket {name!r} that cannot be restored.")
        for key in bucket["objects"]:
            _object_path(name, key)  # a damaged manifest stops here, before anything changes
    return buckets, parts


def _object_path(bucket: str, key: str) -> str:
    path = PurePosixPath(BUCKETS, bucket, key)
    if ".." in path.parts or not key or key.startswith("/"):
        raise BackupError(f"the backup names an object {bucket}/{key} that cannot be restored.")
    return path.as_posix()


def _data_dir(settings: Settings, part: str) -> Path:
    return settings.data_root / SHARED / part


def _require_running(client, service: str) -> bool:
    """The service has a running task; whether it runs on this engine's node."""
    try:
        container_id, _ = engine.running_task(client, service)
    except EngineError as exc:
        raise BackupError(str(exc)) from None
    return bool(container_id)


def _check_part(
    settings: Settings, client, part: str, data: dict
) -> shared_remote.RemoteData | None:
    """The part's service is deployed and its data directory is where the restore can
    write it: here, or on its data node (returned) when its task runs on another node."""
    service = f"{SHARED}_{part}"
    try:
        client.services.get(service)
    except NotFound:
        raise BackupError(
            f"the backup holds {part}'s data but {service} is not deployed. Deploy the shared "
            "stack (invoke deploy.shared), then restore."
        ) from None
    _require_running(client, service)
    remote = shared_remote.remote_data(client, service, DATA_PARTS[part])
    if remote is not None:
        return remote  # the job on its node checks the directory and runs as root there
    directory = _data_dir(settings, part)
    if not directory.is_dir():
        raise BackupError(
            f"{directory} does not exist on this machine. Run the restore on the swarm manager "
            "that holds DATA_ROOT, with the same DATA_ROOT as the deploy."
        )
    owners = {entry["uid"] for entry in data["entries"].values()}
    if os.geteuid() != 0 and owners - {os.geteuid()}:
        raise BackupError(
            f"{part}'s files belong to uid {', '.join(map(str, sorted(owners)))}, which only "
            "root can give them back. Run the restore as root."
        )
    return None


# --- objects -----------------------------------------------------------------------------


def _decoded(value: str) -> str:
    """The filer lists extended attributes base64-encoded (Go's []byte in JSON)."""
    try:
        return base64.b64decode(value, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return value


def _is_restored(name: str) -> bool:
    return name.startswith(_USER_METADATA) or name in _HTTP_FIELDS


def form_fields(entry: dict) -> dict[str, str]:
    """The object's content type and metadata as the S3 POST form's fields."""
    fields = {"Content-Type": entry["mime"]} if entry.get("mime") else {}
    for name, value in sorted((entry.get("extended") or {}).items()):
        if _is_restored(name):
            text = _decoded(value)
            if "\n" in text or "\r" in text:
                raise BackupError(f"metadata {name} holds a line break and cannot be restored.")
            fields[name.lower() if name.startswith(_USER_METADATA) else name] = text
    return fields


def _md5(path: Path) -> str:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "md5")  # the store's own checksum, not security
    return base64.b64encode(digest.digest()).decode()


def _exec_as_root(client, container, cmd: list[str]) -> tuple[int, bytes, bytes]:
    """As containers._exec, as root: the copied-in file is root's (0600), the store's image
    runs as its own user."""
    exec_id = client.api.exec_create(container.id, cmd, stdout=True, stderr=True, user="root")["Id"]
    stdout, stderr = client.api.exec_start(exec_id, demux=True)
    return client.api.exec_inspect(exec_id)["ExitCode"], stdout or b"", stderr or b""


def _s3_keys(settings: Settings) -> tuple[str, str]:
    values = secrets.load(settings)
    return values["s3_access_key"], values["s3_secret_key"]


def s3_url(store) -> str:
    """The S3 API's base URL from where `store` execs (its loopback, or its tasks' name)."""
    host = store.host if isinstance(store, Reach) else ""
    return f"http://{host}:{S3_PORT}" if host else S3_API


def at_base(url: str, base: str) -> str:
    """A signed form's URL (made for S3_API) at the address the upload runs against."""
    if not url.startswith(S3_API):
        raise BackupError(f"the signed upload form points at {url}, not at the object store.")
    return base + url[len(S3_API) :]


def _signer(keys: tuple[str, str]):
    """An S3 client for the store's API as seen inside its container; it only signs forms
    here (no request leaves this process). botocore refuses a host name with an underscore
    (tasks.shared_seaweedfs), so forms are always signed for the loopback address and
    at_base() moves them: a POST form's signature covers its policy, not the host."""
    import boto3  # noqa: PLC0415 - only a restore pays for the import
    from botocore.config import Config  # noqa: PLC0415

    return boto3.client(
        "s3",
        endpoint_url=S3_API,
        aws_access_key_id=keys[0],
        aws_secret_access_key=keys[1],
        region_name="us-east-1",  # SeaweedFS checks the signature, not the region
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


def upload_form(signed: dict, source: Path, destination: Path) -> tuple[str, str]:
    """The S3 POST upload of `source` as a multipart/form-data body in `destination`: the
    signed form's fields, then the file. Returns (the request's Content-Type, its URL).

    busybox's wget, the one HTTP client in the image, sends its --post-file as a C string,
    cut at the first NUL byte, so the file part is quoted-printable (no NUL, no line break
    but soft ones), which Go's multipart reader decodes on the way in."""
    while True:
        boundary = f"nextcandle-{token_hex(16)}"
        marker, clash = boundary.encode(), False
        with source.open("rb") as data, destination.open("wb") as body:
            for name, value in signed["fields"].items():
                clash = clash or marker in value.encode()
                body.write(
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                    f"{value}\r\n".encode()
                )
            body.write(
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                'filename="object"\r\nContent-Type: application/octet-stream\r\n'
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
            )
            first = True
            for chunk in iter(lambda: data.read(57 * 1024), b""):
                encoded = binascii.b2a_qp(chunk, quotetabs=True, istext=False, header=False)
                clash = clash or marker in encoded
                body.write((b"" if first else b"=\n") + encoded)  # a soft break between
                first = False
            body.write(f"\r\n--{boundary}--\r\n".encode())
        if not clash:
            return f"multipart/form-data; boundary={boundary}", signed["url"]


def create_bucket_request(bucket: str, host: str, keys: tuple[str, str]) -> bytes:
    """S3 CreateBucket of `bucket` at `host`'s S3 API as the bytes of one HTTP/1.1 request,
    signed here with SigV4 for that Host (the signature covers it). What leaves this process
    is a signature, never the secret key."""
    from botocore.auth import S3SigV4Auth  # noqa: PLC0415 - only a restore pays for it
    from botocore.awsrequest import AWSRequest  # noqa: PLC0415
    from botocore.credentials import Credentials  # noqa: PLC0415

    authority = f"{host}:{S3_PORT}"
    request = AWSRequest(method="PUT", url=f"http://{authority}/{bucket}", data=b"")
    S3SigV4Auth(Credentials(*keys), "s3", "us-east-1").add_auth(request)
    lines = [f"PUT /{bucket} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    lines += ["Content-Length: 0", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# bash sends the request on its stdin to host $1, port $2 and prints the answer's status line.
_SEND_REQUEST = 'exec 3<>"/dev/tcp/$1/$2" && cat >&3 && head -n 1 <&3'


def _create_bucket_remote(client, store: Reach, bucket: str, keys, image: str) -> None:
    """Make `bucket` from another node than the store's: a CreateBucket PUT, which busybox's
    wget cannot send and `weed shell` there cannot (it follows the master's own address,
    127.0.0.1 in the store's container), so bash sends it from a companion with the
    Postgres image on the store's networks."""
    service = f"{SHARED}_seaweedfs"
    networks = [
        n["Target"]
        for n in client.api.inspect_service(service)["Spec"]["TaskTemplate"].get("Networks") or []
    ]
    with companion.pinned(client, service, image, networks) as helper:
        code, out, err = engine.exec_with_stdin(
            client,
            helper.id,
            ["bash", "-c", _SEND_REQUEST, "send", store.host, str(S3_PORT)],
            create_bucket_request(bucket, store.host, keys),
        )
    answer = (out.strip() or err.strip() or f"exit code {code}").splitlines()[0][:200]
    words = answer.split()
    # 409: someone made it meanwhile (BucketAlreadyOwnedByYou), which is what was wanted.
    if code != 0 or len(words) < 2 or words[1] not in ("200", "409"):
        raise BackupError(f"making bucket {bucket} in the object store failed: {answer}")


def _ensure_buckets(client, store, buckets: dict, keys, image: str, report: Report) -> None:
    """Make each bucket of the backup that the store no longer has: with the store's own
    shell in its container, or from a companion when it runs on another node."""
    present = {
        entry["FullPath"].rsplit("/", 1)[-1]
        for entry in _filer_list(client, store, BUCKETS)
        if _is_dir(entry)
    }
    for bucket in sorted(set(buckets) - present):
        if isinstance(store, Reach) and store.remote:
            _create_bucket_remote(client, store, bucket, keys, image)
        else:
            _check(
                _exec_as_root(client, store, ["sh", "-c", _CREATE_BUCKET, "sh", bucket]),
                f"making bucket {bucket} in the object store",
            )
        report(f"restore shared: bucket {bucket} was gone from the store; made again")


def restore_objects(
    client,
    store,
    source: Path,
    buckets: dict,
    keys: tuple[str, str],
    report: Report,
    image: str = "",
) -> int:
    """Write every object of the backup through the store's S3 API, then compare the store's
    listing (MD5, content type, metadata) with the backup's."""
    count = 0
    signer = _signer(keys)
    base = s3_url(store)
    _ensure_buckets(client, store, buckets, keys, image, report)
    with _ContainerDir(client, store) as workdir, tempfile.TemporaryDirectory() as scratch:
        body = Path(scratch) / "object"
        for bucket, info in sorted(buckets.items()):
            for key, entry in sorted(info["objects"].items()):
                _object_path(bucket, key)
                fields = form_fields(entry)
                signed = signer.generate_presigned_post(
                    bucket,
                    key,
                    Fields=fields,
                    Conditions=[{name: value} for name, value in fields.items()],
                    ExpiresIn=_POST_EXPIRES,
                )
                content_type, url = upload_form(signed, source / entry["file"], body)
                url = at_base(url, base)
                inside = workdir.put(body, "object")
                command = ["wget", "-q", "-O", "/dev/null", "--header"]
                _check(
                    _exec_as_root(
                        client,
                        store,
                        [*command, f"Content-Type: {content_type}", "--post-file", inside, url],
                    ),
                    f"writing object {bucket}/{key} back into the object store",
                )
                body.unlink()
                count += 1
            report(f"restore shared: bucket {bucket}, {len(info['objects'])} objects written")
    for bucket, info in sorted(buckets.items()):
        stored = {
            entry["FullPath"][len(f"{BUCKETS}/{bucket}/") :]: entry
            for entry in _walk(client, store, f"{BUCKETS}/{bucket}")
        }
        for key, entry in sorted(info["objects"].items()):
            _compare(bucket, key, entry, stored.get(key), source)
    report(f"restore shared: {count} objects read back: bytes, content type and metadata equal")
    return count


def _compare(bucket: str, key: str, backed_up: dict, stored: dict | None, source: Path) -> None:
    what = f"restore shared: object {bucket}/{key}"
    if stored is None:
        raise BackupError(f"{what} is not in the store after it was written.")
    if stored.get("Md5") and stored["Md5"] != _md5(source / backed_up["file"]):
        raise BackupError(f"{what} holds other bytes than the backup after it was written.")
    if (stored.get("Mime") or "") != (backed_up.get("mime") or ""):
        raise BackupError(
            f"{what} has content type {stored.get('Mime')!r}, the backup {backed_up.get('mime')!r}."
        )
    wanted = {
        name: _decoded(value)
        for name, value in (backed_up.get("extended") or {}).items()
        if _is_restored(name)
    }
    got = {
        name: _decoded(value)
        for name, value in (stored.get("Extended") or {}).items()
        if _is_restored(name)
    }
    if got != wanted:
        differ = sorted(name for name in {*got, *wanted} if got.get(name) != wanted.get(name))
        raise BackupError(
            f"{what} has other metadata than the backup after it was written ({', '.join(differ)})."
        )


# --- Grafana's and n8n's data ------------------------------------------------------------


def restore_directory(
    settings: Settings,
    client,
    part: str,
    source: Path,
    data: dict,
    report: Report,
    timeout: float,
) -> Path:
    """Stop the service, move its data directory aside, put the backup's entries in its place
    with their modes and owners, start it. Returns where the previous data went."""
    service = f"{SHARED}_{part}"
    directory = _data_dir(settings, part)
    moved_aside = directory.with_name(f"{part}.before-restore-{stamp()}")
    replicas = client.api.inspect_service(service)["Spec"]["Mode"]["Replicated"]["Replicas"]
    report(f"restore shared: stopping {service}")
    scale(client, service, 0)
    try:
        _wait_no_containers(client, service, timeout)
        directory.rename(moved_aside)
        report(f"restore shared: previous {part} data moved to {moved_aside}")
        _write_entries(directory, source / part, data["entries"])
    finally:
        report(f"restore shared: starting {service}")
        scale(client, service, replicas)
    return moved_aside


def restore_directory_remote(
    client,
    part: str,
    remote: shared_remote.RemoteData,
    image: str,
    source: Path,
    data: dict,
    report: Report,
    timeout: float,
) -> str:
    """As restore_directory, for a data directory on another node: the backup's entries go
    there as a tar (modes and owners recorded in it) and a job unpacks it in place of the
    moved-aside directory. Returns where the previous data went, on which node."""
    service = f"{SHARED}_{part}"
    parent = remote.directory.rstrip("/").rsplit("/", 1)[0]
    name = remote.directory.rstrip("/").rsplit("/", 1)[1]
    aside = f"{parent}/{part}.before-restore-{stamp()}"
    where = f"{aside} on node {hostname(remote.node)}"
    replicas = client.api.inspect_service(service)["Spec"]["Mode"]["Replicated"]["Replicas"]
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / f"{part}.tar"
        digest = shared_remote.write_archive(archive, name, source / part, data["entries"])
        report(f"restore shared: stopping {service} (on node "
               f"{hostname(remote.node)})")  # fmt: skip
        scale(client, service, 0)
        try:
            _wait_stopped(client, service, timeout)
            shared_remote.replace_directory(client, remote, image, archive, digest, aside, report)
            report(f"restore shared: previous {part} data moved to {where}")
        finally:
            report(f"restore shared: starting {service}")
            scale(client, service, replicas)
    return where


def _write_entries(directory: Path, files: Path, entries: dict[str, dict]) -> None:
    as_root = os.geteuid() == 0
    directory.mkdir(mode=0o700)
    # Parents before children; directories get their own mode last (one without write
    # permission for its owner would refuse its children).
    order = sorted(entries, key=lambda k: (len(PurePosixPath(k).parts), k))
    for key in order:
        entry = entries[key]
        path = directory / key if key else directory
        if entry["type"] == "dir":
            path.mkdir(mode=0o700, exist_ok=True)
        elif entry["type"] == "file":
            shutil.copyfile(files / key, path)
            os.chmod(path, entry["mode"])
        else:
            os.symlink(entry["target"], path)
        if as_root:
            os.lchown(path, entry["uid"], entry["gid"])
    for key in reversed(order):
        if entries[key]["type"] == "dir":
            os.chmod(directory / key if key else directory, entries[key]["mode"])
