"""What a backup is: its name, its directory, its manifest, and how it is proven complete
without a daemon."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets as random_tokens
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from infra.errors import InfraError

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
            f"backup {path} does not exist. Give a directory that `invoke backup.*` printed{where}."
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


def describe(result: BackupResult) -> str:
    """One line per file: what the operator needs to find and judge the backup."""
    entries = sorted(result.manifest["files"].items())
    files = ", ".join(f"{name} {human_size(entry['size'])}" for name, entry in entries[:6])
    more = len(result.manifest["files"]) - 6
    if more > 0:
        files += f", and {more} more"
    return f"{result.path} ({human_size(result.size)}: {files or 'no files'})"
