"""Off-site copies: every verified backup uploaded to an S3 bucket and read back, and a backup
brought back from there for a restore.

BACKUP_S3_BUCKET (with BACKUP_S3_ENDPOINT and BACKUP_S3_REGION in .env) names the bucket; its
keys are backup_s3_access_key and backup_s3_secret_key in secrets.yml, added by the operator
(infra/secrets.py OPERATOR_KEYS). They reach boto3 as arguments in this process only: never
a command line, an environment variable or our output (DESIGN decision 7).

A backup BACKUP_ROOT/<target>/<name>/ goes to s3://<bucket>/<target>/<name>/, file by file,
manifest.json last: like a local backup, a remote prefix with a manifest is complete. Each
object is then read back whole and its size and sha256 compared with the manifest's; S3's
ETag is no checksum of a multipart upload, so it is not what we trust. A failed copy leaves
the local backup as it is.

Downloading reads the manifest first and then only the files it lists, into a hidden
temporary directory under BACKUP_ROOT (retention ignores it), checks them as restore.env
checks a local backup, and removes the directory afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from infra.backup import retention
from infra.backup.manifest import (
    MANIFEST,
    BackupError,
    Report,
    _private_file,
    sha256_file,
    validate,
)
from infra.settings import Settings

ACCESS_KEY = "backup_s3_access_key"
SECRET_KEY = "backup_s3_secret_key"  # noqa: S105 - its name in secrets.yml
SCHEME = "s3://"
# S3's bucket naming rules (lower case, digits, dots, dashes; 3 to 63; no leading dot/dash).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9-]{2,40}$")
_ENDPOINT = re.compile(r"^https?://[^/\s?#]+/?$")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Remote:
    """Where off-site copies go, and the keys to reach it."""

    bucket: str
    endpoint: str  # "": AWS S3 of the region
    region: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    def url(self, key: str = "") -> str:
        return f"{SCHEME}{self.bucket}/{key}"


@dataclass
class OffsiteCopy:
    url: str  # s3://bucket/<target>/<name>/
    files: int
    size: int


# --- settings ----------------------------------------------------------------------------


def configured(settings: Settings) -> bool:
    return bool(settings.get("BACKUP_S3_BUCKET"))


def check_settings(settings: Settings, bucket: str | None = None) -> tuple[str, str, str]:
    """BACKUP_S3_BUCKET (or the bucket of an s3:// address), _ENDPOINT and _REGION, checked.
    Raises BackupError with one line."""
    bucket = settings.get("BACKUP_S3_BUCKET") if bucket is None else bucket
    endpoint = settings.get("BACKUP_S3_ENDPOINT")
    region = settings.get("BACKUP_S3_REGION") or "us-east-1"
    if not bucket:
        raise BackupError(
            "no off-site bucket is set. Set BACKUP_S3_BUCKET (and BACKUP_S3_ENDPOINT, "
            "BACKUP_S3_REGION) in .env, and backup_s3_access_key, backup_s3_secret_key in "
            "secrets.yml."
        )
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise BackupError(
            f"BACKUP_S3_BUCKET={bucket!r} is not an S3 bucket name: 3 to 63 lower-case "
            "letters, digits, dots and dashes, starting and ending with a letter or digit."
        )
    if endpoint and not _ENDPOINT.match(endpoint):
        raise BackupError(
            f"BACKUP_S3_ENDPOINT={endpoint!r} is not an http(s) address of an S3 service "
            "(write it like https://s3.example.com, no path), or leave it empty for AWS."
        )
    if not _REGION.match(region):
        raise BackupError(
            f"BACKUP_S3_REGION={region!r} is not a region name (like us-east-1 or eu-central-1)."
        )
    return bucket, endpoint.rstrip("/"), region


def remote(settings: Settings, bucket: str | None = None) -> Remote:
    """The off-site bucket with its keys from secrets.yml; raises before anything is sent."""
    from infra import secrets  # secrets imports settings: keep the module import light

    bucket, endpoint, region = check_settings(settings, bucket)
    values = secrets.load(settings)
    missing = [key for key in (ACCESS_KEY, SECRET_KEY) if not values.get(key)]
    if missing:
        raise BackupError(
            f"{settings.secrets_file} has no {' or '.join(missing)}, which the off-site bucket "
            f"{bucket} needs. Add the keys your S3 provider issued (see "
            "secrets/secrets.example.yml)."
        )
    return Remote(bucket, endpoint, region, values[ACCESS_KEY], values[SECRET_KEY])


def parse_url(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without slashes at either end)."""
    if not url.startswith(SCHEME):
        raise BackupError(
            f"{url} is not an s3:// address. Write it as s3://BUCKET/<target>/<time>."
        )
    bucket, _, prefix = url[len(SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        raise BackupError(
            f"{url} names no backup. Write it as s3://BUCKET/<target>/<time>, as "
            "`invoke backup.*` printed it."
        )
    if ".." in PurePosixPath(prefix).parts:
        raise BackupError(f"{url} has '..' in it. Give the address `invoke backup.*` printed.")
    return bucket, prefix


# --- the S3 client -----------------------------------------------------------------------


def _client(target: Remote):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=target.endpoint or None,
        region_name=target.region,
        aws_access_key_id=target.access_key,
        aws_secret_access_key=target.secret_key,
        config=Config(
            signature_version="s3v4",
            # Path style works with every S3 service (a bucket with dots, a plain host name).
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            # Checksums only where S3 asks for them: some S3 services refuse the newer ones.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _reason(exc: Exception) -> str:
    """One line of what went wrong at the S3 service, in its words (never the keys)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = error.get("Message") or ""
        return f"{code}{': ' + message if message else ''}".strip()
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def _s3_errors(what: str, hint: str) -> Iterator[None]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError, Boto3Error) as exc:
        raise BackupError(f"{what} failed ({_reason(exc)}). {hint}") from None


def _read_back(s3, bucket: str, key: str) -> tuple[int, str]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(_CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


# --- upload ------------------------------------------------------------------------------


def upload(
    settings: Settings, target: str, backup: Path, report: Report = print, remote_=None
) -> OffsiteCopy:
    """Copy a verified local backup to s3://BACKUP_S3_BUCKET/<target>/<name>/ and read every
    file back. The local backup is never touched."""
    manifest = validate(backup, "shared" if target == "shared" else "env")
    if manifest.get("env", target) != target:
        raise BackupError(
            f"backup {backup} is a backup of {manifest['env']}, not of {target}. Give "
            f"--name={manifest['env']}."
        )
    destination = remote_ or remote(settings)
    prefix = f"{target}/{backup.name}"
    url = destination.url(prefix + "/")
    hint = (
        f"The backup is kept at {backup}; check BACKUP_S3_* and the keys, then copy it again: "
        f"invoke backup.upload --name={target} --from={backup}"
    )
    names = sorted(manifest["files"]) + [MANIFEST]  # the manifest last: it marks it complete
    s3 = _client(destination)
    with _s3_errors(f"off-site copy of {backup} to {url}", hint):
        for name in names:
            s3.upload_file(str(backup / name), destination.bucket, f"{prefix}/{name}")
        manifest_entry = {
            "size": (backup / MANIFEST).stat().st_size,
            "sha256": sha256_file(backup / MANIFEST),
        }
        size = 0
        for name in names:
            expected = manifest_entry if name == MANIFEST else manifest["files"][name]
            got_size, got_sha = _read_back(s3, destination.bucket, f"{prefix}/{name}")
            if (got_size, got_sha) != (expected["size"], expected["sha256"]):
                raise BackupError(
                    f"off-site copy of {backup}: {url}{name} reads back as {got_size} bytes "
                    f"with another sha256 than the {expected['size']} bytes written. {hint}"
                )
            size += got_size
    report(f"off-site copy: {url} ({len(names)} files read back, sizes and sha256 equal)")
    return OffsiteCopy(url=url, files=len(names), size=size)


# --- download ----------------------------------------------------------------------------


@contextlib.contextmanager
def downloaded(
    settings: Settings, url: str, kind: str, report: Report = print
) -> Iterator[tuple[Path, dict]]:
    """The backup at `url` in a temporary local directory, checked (manifest, sizes, sha256),
    with its manifest; the directory is removed on exit."""
    bucket, prefix = parse_url(url)
    url = f"{SCHEME}{bucket}/{prefix}"  # one spelling in every message
    source = remote(settings, bucket)
    s3 = _client(source)
    parent = settings.backups
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix=".download-", dir=parent))
    except OSError as exc:
        raise BackupError(
            f"cannot write under {parent} ({exc.strerror}) to download {url}. Set BACKUP_ROOT "
            "in .env to a writable directory."
        ) from None
    try:
        local = directory / PurePosixPath(prefix).name
        local.mkdir(mode=0o700)
        hint = "Check the address (`invoke backup.*` printed it), BACKUP_S3_* and the keys."
        with _s3_errors(f"reading {url}/{MANIFEST}", hint):
            try:
                _download(s3, bucket, f"{prefix}/{MANIFEST}", local / MANIFEST)
            except Exception as exc:
                if _not_found(exc):
                    raise BackupError(
                        f"{url} holds no backup ({MANIFEST} is not there). Give an address "
                        "`invoke backup.*` printed."
                    ) from None
                raise
        try:
            files = json.loads((local / MANIFEST).read_text(encoding="utf-8")).get("files")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            files = None
        if not isinstance(files, dict):
            raise BackupError(f"{url}/{MANIFEST} is not a backup manifest. Use another backup.")
        for name in sorted(files):
            relative = PurePosixPath(name)
            if relative.is_absolute() or ".." in relative.parts:
                raise BackupError(f"{url}/{MANIFEST} names a bad file {name!r}. Damaged.")
            with _s3_errors(f"downloading {url}/{name}", hint):
                try:
                    _download(s3, bucket, f"{prefix}/{name}", local / relative)
                except Exception as exc:
                    if _not_found(exc):
                        raise BackupError(
                            f"{url}: {name} is missing (the copy is incomplete). Use another "
                            "backup."
                        ) from None
                    raise
        manifest = validate(local, kind)
        report(f"downloaded {url} into {local}: {len(files)} files, sizes and sha256 checked")
        yield local, manifest
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _not_found(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _download(s3, bucket: str, key: str, path: Path) -> None:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    with _private_file(path) as handle:
        for chunk in iter(lambda: body.read(_CHUNK), b""):
            handle.write(chunk)


# --- retention ---------------------------------------------------------------------------


@dataclass
class RemotePrune:
    url: str  # s3://bucket/<target>/
    plan: retention.RetentionPlan  # of the copies in the bucket
    removed: tuple[str, ...]  # the s3:// address of each copy removed


def _remote_entries(s3, bucket: str, target: str) -> dict[str, list[str]]:
    """Every copy of `target` in the bucket: its name and its keys."""
    copies: dict[str, list[str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{target}/"):
        for item in page.get("Contents", []):
            name, _, rest = item["Key"][len(target) + 1 :].partition("/")
            if rest:
                copies.setdefault(name, []).append(item["Key"])
    return copies


def prune(
    settings: Settings, target: str, report: Report = print, remote_: Remote | None = None
) -> RemotePrune:
    """Remove the off-site copies of `target` that BACKUP_KEEP no longer keeps, by the same
    policy as the local backups (retention.plan_retention): a copy with its manifest is a
    verified backup; one without (an upload cut short) is left alone, as locally. Each copy's
    manifest goes first, so a copy half removed is no longer a backup for a restore."""
    destination = remote_ or remote(settings)
    s3 = _client(destination)
    url = destination.url(f"{target}/")
    hint = "The copies are as they were; check BACKUP_S3_* and the keys."
    removed = []
    with _s3_errors(f"pruning the off-site copies in {url}", hint):
        copies = _remote_entries(s3, destination.bucket, target)
        entries = [
            retention.Entry(name, f"{target}/{name}/{MANIFEST}" in keys)
            for name, keys in copies.items()
        ]
        plan = retention.plan_retention(entries, datetime.now(UTC), settings.backup_keep)
        for name in plan.pruned:
            manifest = f"{target}/{name}/{MANIFEST}"
            rest = [key for key in copies[name] if key != manifest]
            s3.delete_object(Bucket=destination.bucket, Key=manifest)
            for start in range(0, len(rest), 1000):  # DeleteObjects takes up to 1000 keys
                batch = [{"Key": key} for key in rest[start : start + 1000]]
                s3.delete_objects(Bucket=destination.bucket, Delete={"Objects": batch})
            removed.append(destination.url(f"{target}/{name}/"))
            report(f"pruned off-site copy {removed[-1]}")
    return RemotePrune(url, plan, tuple(removed))
