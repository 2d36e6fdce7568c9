"""Off-site copies and restore.shared against a real swarm, through the invoke CLI.

The remote is a second SeaweedFS (the shared stack's image) started by this module as a
throwaway container on this machine's engine, its S3 port published on 127.0.0.1, where the
backup tasks run; its keys are generated here and reach the tasks only through a copy of the
suite's secrets.yml (backup_s3_access_key, backup_s3_secret_key).

prod is seeded and backed up with BACKUP_S3_* set: the copy must be in the bucket, file by
file, with the local files' sha256. The local backup is then moved away and stg restored from
the s3:// address: stg must hold prod's row counts, row checksums and keys. A copy that cannot
be made fails with one line and keeps the local backup; a damaged or missing remote copy is
refused before stg changes.

restore.shared: objects with content types and user metadata and a file in n8n's data are
backed up, then changed, and restored: every object's bytes, content type and metadata, and
n8n's files with their owners and modes, must be back, and n8n running.

Every run uses its own BACKUP_ROOT, so test_backup.py's retention counts stay its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets as random_tokens
import shutil
import socket
import sqlite3
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
import yaml
from botocore.client import Config

from infra import secrets
from infra.backup import records
from tests.acceptance.dind import LABEL
from tests.acceptance.test_backup import (
    PROD_KEYS,
    _seed_prod,
    redis_state,
    retention_fakes,
    table_state,
)

REMOTE_S3_PORT = 8333
REGION = "eu-central-1"


@dataclass
class Remote:
    endpoint: str
    bucket: str
    secrets_file: Path
    keys: dict[str, str]

    def client(self, secret_key: str = ""):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.keys["backup_s3_access_key"],
            aws_secret_access_key=secret_key or self.keys["backup_s3_secret_key"],
            region_name=REGION,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def settings(self, root: Path, **overrides: str) -> dict[str, str]:
        """The task environment that copies backups to this remote, backups under `root`."""
        return {
            "BACKUP_ROOT": str(root),
            "BACKUP_S3_BUCKET": self.bucket,
            "BACKUP_S3_ENDPOINT": self.endpoint,
            "BACKUP_S3_REGION": REGION,
            "SECRETS_FILE": str(self.secrets_file),
            **overrides,
        }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _one_line(result, words: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert words in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def remote(platform, tmp_path_factory):
    """A second SeaweedFS with one S3 identity, and a secrets.yml that holds its keys."""
    image = platform.require("SEAWEEDFS_IMAGE")
    keys = {
        "backup_s3_access_key": random_tokens.token_hex(10).upper(),
        "backup_s3_secret_key": random_tokens.token_urlsafe(30),
    }
    workdir = tmp_path_factory.mktemp("offsite")
    secrets.generate(platform.settings)  # as the first deploy would; nothing if it exists
    secrets_file = workdir / "secrets.yml"
    secrets_file.write_text(platform.settings.secrets_file.read_text() + yaml.safe_dump(keys))
    secrets_file.chmod(0o600)
    identity = {
        "identities": [
            {
                "name": "offsite",
                "credentials": [
                    {
                        "accessKey": keys["backup_s3_access_key"],
                        "secretKey": keys["backup_s3_secret_key"],
                    }
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    outer = platform.swarm.outer
    container = outer.containers.create(
        image,
        [
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=0.0.0.0",
            "-volume.max=10",
            "-master.volumePreallocate=false",
            "-s3",
            f"-s3.port={REMOTE_S3_PORT}",
            "-s3.config=/etc/offsite/s3.json",
        ],
        name=f"nc-offsite-{uuid.uuid4().hex[:8]}",
        labels={LABEL: platform.swarm.run_id},
        ports={f"{REMOTE_S3_PORT}/tcp": ("127.0.0.1", None)},
    )
    try:
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            content = json.dumps(identity).encode()
            info = tarfile.TarInfo("offsite/s3.json")
            info.size, info.mode, info.uid, info.gid = len(content), 0o444, 1000, 1000
            tar.addfile(info, io.BytesIO(content))
        assert container.put_archive("/etc", archive.getvalue())
        container.start()
        container.reload()
        port = container.attrs["NetworkSettings"]["Ports"][f"{REMOTE_S3_PORT}/tcp"][0]["HostPort"]
        found = Remote(
            endpoint=f"http://127.0.0.1:{port}",
            bucket=f"offsite-{uuid.uuid4().hex[:8]}",
            secrets_file=secrets_file,
            keys=keys,
        )
        s3 = found.client()
        platform.wait_for(
            lambda: s3.create_bucket(Bucket=found.bucket),
            timeout=120,
            what="the off-site SeaweedFS to take a bucket",
        )
        yield found
    finally:
        container.remove(force=True, v=True)


def _objects(remote: Remote, prefix: str) -> dict[str, bytes]:
    s3 = remote.client()
    listing = s3.list_objects_v2(Bucket=remote.bucket, Prefix=prefix).get("Contents", [])
    return {
        item["Key"][len(prefix) :]: s3.get_object(Bucket=remote.bucket, Key=item["Key"])[
            "Body"
        ].read()
        for item in listing
    }


# --- off-site copies ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def offsite_round_trip(platform, remote, tmp_path_factory):
    """prod backed up with its off-site copy, the local backup moved away, and stg restored
    from the s3:// address."""
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    platform.deploy("prod")
    platform.deploy("stg")
    _seed_prod(platform)
    root = tmp_path_factory.mktemp("offsite-backups")
    made = platform.invoke("backup.env", "--name=prod", **remote.settings(root))
    assert made.returncode == 0, made.stdout + made.stderr
    (local,) = sorted((root / "prod").iterdir())
    url = f"s3://{remote.bucket}/prod/{local.name}/"
    local_files = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*")}
    uploaded = _objects(remote, f"prod/{local.name}/")

    elsewhere = tmp_path_factory.mktemp("moved-away") / local.name
    shutil.move(local, elsewhere)  # the restore can only come from the bucket
    stg_data = platform.settings.data_root / "stg"
    before = set(stg_data.iterdir())
    restored = platform.invoke(
        "restore.env", "--name=stg", f"--from={url.rstrip('/')}", **remote.settings(root)
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    print(made.stdout, restored.stdout, sep="\n")
    yield {
        "root": root,
        "url": url,
        "name": local.name,
        "local_files": local_files,
        "uploaded": uploaded,
        "backup_output": made.stdout,
        "restore_output": restored.stdout,
        "prod_tables": table_state(platform, "prod"),
    }
    _remove_moved_aside(set(stg_data.iterdir()) - before)


def _remove_moved_aside(paths) -> None:
    """The data a restore moved aside, which the operator would remove: other modules count
    the moved-aside directories of their own restores in the same DATA_ROOT."""
    for path in paths:
        if ".before-restore-" in path.name:
            shutil.rmtree(path)


def test_every_file_of_the_backup_is_in_the_bucket_with_its_checksum(offsite_round_trip):
    local, uploaded = offsite_round_trip["local_files"], offsite_round_trip["uploaded"]
    assert set(uploaded) == set(local) == {"manifest.json", "postgres.dump", "redis.rdb"}
    assert {k: _sha256(v) for k, v in uploaded.items()} == {k: _sha256(v) for k, v in local.items()}


def test_the_backup_run_prints_its_offsite_copy(offsite_round_trip):
    output = offsite_round_trip["backup_output"]
    assert f"off-site copy: {offsite_round_trip['url']}" in output
    assert "sizes and sha256 equal" in output


def test_stg_holds_prods_rows_after_the_restore_from_the_bucket(platform, offsite_round_trip):
    prod = offsite_round_trip["prod_tables"]
    assert prod["backup_items"][0] == 250 and prod["backup_events"][0] == 40
    assert table_state(platform, "stg") == prod  # row counts and an md5 of every row


def test_stg_holds_prods_keys_after_the_restore_from_the_bucket(platform, offsite_round_trip):
    assert redis_state(platform, "stg") == PROD_KEYS


def test_the_restore_from_the_bucket_saved_stg_first_and_left_no_download(offsite_round_trip):
    root = offsite_round_trip["root"]
    saved = [p for p in (root / "stg").iterdir() if p.name.endswith("-before-restore")]
    assert len(saved) == 1, saved
    assert str(saved[0]) in offsite_round_trip["restore_output"]
    assert offsite_round_trip["url"].rstrip("/") in offsite_round_trip["restore_output"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_a_copy_that_cannot_be_made_fails_and_keeps_the_local_backup(
    platform, remote, offsite_round_trip, tmp_path
):
    wrong_keys = tmp_path / "secrets.yml"
    text = remote.secrets_file.read_text().replace(
        remote.keys["backup_s3_secret_key"], "not-the-secret-key-0000000000000000"
    )
    wrong_keys.write_text(text)
    wrong_keys.chmod(0o600)
    result = platform.invoke(
        "backup.env",
        "--name=prod",
        **remote.settings(tmp_path / "backups", SECRETS_FILE=str(wrong_keys)),
    )
    line = _one_line(result, "off-site copy of")
    assert "is written and verified" in line and "backup.upload" in line
    assert "not-the-secret-key" not in result.stdout + result.stderr
    (kept,) = sorted((tmp_path / "backups" / "prod").iterdir())
    assert str(kept) in line
    assert (kept / "manifest.json").is_file() and (kept / "postgres.dump").is_file()
    record = records.read_offsite(platform.settings, "prod")  # OffsiteCopyFailed reads it
    assert record is not None and not record.success
    assert record.last_success is not None  # the round trip's copy, kept from before


def test_an_unreachable_bucket_fails_in_one_line(platform, remote, offsite_round_trip, tmp_path):
    closed = f"http://127.0.0.1:{_free_port()}"
    result = platform.invoke(
        "backup.env",
        "--name=prod",
        **remote.settings(tmp_path / "backups", BACKUP_S3_ENDPOINT=closed),
    )
    _one_line(result, "off-site copy of")
    (kept,) = sorted((tmp_path / "backups" / "prod").iterdir())
    assert (kept / "manifest.json").is_file()


def test_backup_upload_copies_a_backup_again(platform, remote, offsite_round_trip, tmp_path):
    source = tmp_path / "backups" / "prod" / offsite_round_trip["name"]
    source.parent.mkdir(parents=True)
    for name, content in offsite_round_trip["local_files"].items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(content)
    s3 = remote.client()
    s3.delete_object(Bucket=remote.bucket, Key=f"prod/{source.name}/redis.rdb")
    result = platform.invoke(
        "backup.upload", "--name=prod", f"--from={source}", **remote.settings(tmp_path / "b")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    uploaded = _objects(remote, f"prod/{source.name}/")
    assert _sha256(uploaded["redis.rdb"]) == _sha256(offsite_round_trip["local_files"]["redis.rdb"])


def test_a_damaged_remote_copy_is_refused_and_stg_is_unchanged(
    platform, remote, offsite_round_trip, tmp_path
):
    name = offsite_round_trip["name"]
    data = bytearray(offsite_round_trip["local_files"]["postgres.dump"])
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    damaged = f"s3://{remote.bucket}/damaged/{name}"
    s3 = remote.client()
    for file, content in offsite_round_trip["local_files"].items():
        body = bytes(data) if file == "postgres.dump" else content
        s3.put_object(Bucket=remote.bucket, Key=f"damaged/{name}/{file}", Body=body)
    before = (table_state(platform, "stg"), redis_state(platform, "stg"))
    result = platform.invoke(
        "restore.env", "--name=stg", f"--from={damaged}", **remote.settings(tmp_path / "b")
    )
    _one_line(result, "postgres.dump is corrupt")
    assert (table_state(platform, "stg"), redis_state(platform, "stg")) == before
    assert not (tmp_path / "b" / "stg").exists()  # no before-restore backup: nothing started
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".")]


def test_a_missing_remote_copy_is_one_line(platform, remote, offsite_round_trip, tmp_path):
    missing = f"s3://{remote.bucket}/prod/20000101T000000Z"
    result = platform.invoke(
        "restore.env", "--name=stg", f"--from={missing}", **remote.settings(tmp_path / "b")
    )
    _one_line(result, "holds no backup")


def test_the_bucket_keeps_what_backup_keep_keeps(platform, remote, offsite_round_trip, tmp_path):
    """Last of the off-site tests: the run below prunes the round trip's copy (no longer the
    newest of its day) from the bucket."""
    s3 = remote.client()
    fakes, unverified = retention_fakes()  # an upload cut short has no manifest
    for name in fakes:
        for file, content in offsite_round_trip["local_files"].items():
            if file != "manifest.json" or name != unverified:
                s3.put_object(Bucket=remote.bucket, Key=f"prod/{name}/{file}", Body=content)
    before = {key.split("/")[0] for key in _objects(remote, "prod/")}

    result = platform.invoke("backup.env", "--name=prod", **remote.settings(tmp_path / "b"))
    assert result.returncode == 0, result.stdout + result.stderr
    (new,) = sorted((tmp_path / "b" / "prod").iterdir())
    round_trip = offsite_round_trip["name"]
    # The round trip's copy is pruned too, unless midnight (UTC) passed between the two.
    round_trip_pruned = round_trip[:8] == new.name[:8]
    expected = {name for name, pruned in fakes.items() if pruned}
    expected |= {round_trip} if round_trip_pruned else set()
    lines = [line for line in result.stdout.splitlines() if line.startswith("pruned off-site")]
    assert sorted(lines) == sorted(
        f"pruned off-site copy s3://{remote.bucket}/prod/{name}/" for name in expected
    )
    after = {key.split("/")[0] for key in _objects(remote, "prod/")}
    assert after == (before | {new.name}) - expected
    assert records.read_offsite(platform.settings, "prod").success
    kept = _objects(remote, f"prod/{new.name}/")
    assert {name: _sha256(data) for name, data in kept.items() if name != "manifest.json"} == {
        name: _sha256((new / name).read_bytes()) for name in kept if name != "manifest.json"
    }


# --- restore.shared ----------------------------------------------------------------------

OBJECTS = {
    # key: (body, content type or None, user metadata)
    "reports/2026/summary.csv": (b"day,rows\n1,250\n", "text/csv", {"owner": "alice", "run": "42"}),
    "images/probe.bin": (os.urandom(90_000), "application/x-probe", {"source": "acceptance"}),
    "plain.txt": (b"no type given", None, {}),
    "empty.json": (b"", "application/json", {"note": "zero bytes"}),
}
PROBE = "restore-probe.txt"


def _object_state(s3, bucket: str) -> dict[str, tuple[str, str, dict[str, str]]]:
    """Every object of the bucket: sha256 of its bytes, content type, user metadata."""
    state = {}
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        got = s3.get_object(Bucket=bucket, Key=item["Key"])
        state[item["Key"]] = (_sha256(got["Body"].read()), got["ContentType"], got["Metadata"])
    return state


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@dataclass
class Seeded:
    """A bucket of OBJECTS and a probe file in n8n's data, backed up by backup.shared."""

    s3: object
    bucket: str
    gone: str  # a second bucket, deleted with its objects after the backup
    gone_before: dict
    n8n_data: Path
    n8n: bool  # n8n has an image here, so its data directory is in the round trip
    probe: bytes
    before: dict
    made: object  # the backup's completed process
    root: Path  # BACKUP_ROOT
    source: Path  # the backup


def seed_and_back_up(platform, prefix: str, root: Path) -> Seeded:
    """Objects with their types and metadata, and a probe file owned 1000:1000 with mode 0640
    in n8n's data directory, then backup.shared into `root`."""
    s3 = platform.s3()
    bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
    platform.wait_for(lambda: s3.create_bucket(Bucket=bucket), what="S3 bucket creation")
    for key, (body, content_type, metadata) in OBJECTS.items():
        extra = {"ContentType": content_type} if content_type else {}
        s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata, **extra)
    gone = f"{prefix}-gone-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=gone)
    s3.put_object(
        Bucket=gone, Key="kept/notes.txt", Body=b"in a bucket deleted after the backup",
        ContentType="text/plain", Metadata={"owner": "bob"},
    )  # fmt: skip
    # DATA_ROOT is the same host directory in every dind node, whichever holds shared's data.
    n8n_data = platform.settings.data_root / "shared" / "n8n"
    n8n = platform.images["N8N_IMAGE"].ref is not None
    probe = os.urandom(64)
    if n8n:
        (n8n_data / PROBE).write_bytes(probe)
        os.chown(n8n_data / PROBE, 1000, 1000)
        (n8n_data / PROBE).chmod(0o640)
    before, gone_before = _object_state(s3, bucket), _object_state(s3, gone)
    made = platform.invoke("backup.shared", BACKUP_ROOT=str(root))
    assert made.returncode == 0, made.stdout + made.stderr
    (source,) = sorted((root / "shared").iterdir())
    return Seeded(s3, bucket, gone, gone_before, n8n_data, n8n, probe, before, made, root, source)


def change_after_backup(seeded: Seeded) -> None:
    """What the restore must undo: an object changed, one deleted, a whole bucket deleted,
    the probe file's bytes and mode changed and a file added next to it."""
    s3, bucket = seeded.s3, seeded.bucket
    s3.put_object(Bucket=bucket, Key="reports/2026/summary.csv", Body=b"changed", Metadata={})
    s3.delete_object(Bucket=bucket, Key="images/probe.bin")
    s3.delete_object(Bucket=seeded.gone, Key="kept/notes.txt")
    s3.delete_bucket(Bucket=seeded.gone)
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert seeded.gone not in names and bucket in names
    if seeded.n8n:
        (seeded.n8n_data / PROBE).write_bytes(b"changed after the backup")
        (seeded.n8n_data / PROBE).chmod(0o666)
        (seeded.n8n_data / "after-backup.txt").write_text("not in the backup")


def assert_gone_bucket_restored(platform, seeded: Seeded, restore_output: str) -> None:
    """The bucket deleted after the backup is there again, with its object's bytes, type
    and metadata, and the restore said it made it."""
    assert _object_state(platform.s3(), seeded.gone) == seeded.gone_before
    assert f"bucket {seeded.gone} was gone from the store; made again" in restore_output


def assert_probe_restored(platform, probe: bytes) -> Path:
    """n8n's probe file is back with its bytes, owner and mode, and the file added after the
    backup is gone; returns n8n's data directory."""
    data = platform.settings.data_root / "shared" / "n8n"
    restored = data / PROBE
    assert restored.read_bytes() == probe
    info = restored.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (1000, 1000, 0o640)
    assert not (data / "after-backup.txt").exists()
    return data


@pytest.fixture(scope="module")
def shared_round_trip(platform, tmp_path_factory):
    """Objects and a file in n8n's data backed up, both changed, then restore.shared."""
    platform.require("TRAEFIK_IMAGE")
    platform.require("SEAWEEDFS_IMAGE")
    platform.deploy("core")
    platform.deploy("shared")
    seeded = seed_and_back_up(platform, "restore", tmp_path_factory.mktemp("shared-backups"))
    s3, bucket, source, root = seeded.s3, seeded.bucket, seeded.source, seeded.root
    # What happens after the backup, which the restore must undo.
    change_after_backup(seeded)
    s3.put_object(  # the same bytes, another type and metadata
        Bucket=bucket,
        Key="plain.txt",
        Body=OBJECTS["plain.txt"][0],
        ContentType="text/changed",
        Metadata={"changed": "yes"},
    )
    changed = _object_state(s3, bucket)
    assert changed != seeded.before

    refused = platform.invoke("restore.shared", f"--from={source}", BACKUP_ROOT=str(root))
    n8n_data = seeded.n8n_data
    shared_data = set(n8n_data.parent.iterdir())
    after_refusal = _object_state(s3, bucket), sorted((root / "shared").iterdir())
    restored = platform.invoke("restore.shared", f"--from={source}", "--yes", BACKUP_ROOT=str(root))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    print(seeded.made.stdout, restored.stdout, sep="\n")
    yield {
        "seeded": seeded,
        "changed": changed,
        "refused": refused,
        "after_refusal": after_refusal,
        "restore_output": restored.stdout,
    }
    _remove_moved_aside(set(n8n_data.parent.iterdir()) - shared_data)
    (n8n_data / PROBE).unlink(missing_ok=True)


def test_restore_shared_without_yes_refused_and_changed_nothing(shared_round_trip):
    _one_line(shared_round_trip["refused"], "--yes")
    objects, backups = shared_round_trip["after_refusal"]
    assert objects == shared_round_trip["changed"]
    assert backups == [shared_round_trip["seeded"].source]  # not even a before-restore backup


def test_every_object_is_back_with_its_bytes_type_and_metadata(platform, shared_round_trip):
    state = _object_state(platform.s3(), shared_round_trip["seeded"].bucket)
    assert state == shared_round_trip["seeded"].before
    # What the fixture put is there (S3 metadata names are case-insensitive; HTTP proxies
    # such as Traefik may send them capitalised).
    content_type, metadata = state["reports/2026/summary.csv"][1:]
    assert content_type == "text/csv"
    assert {name.lower(): value for name, value in metadata.items()} == {
        "owner": "alice",
        "run": "42",
    }


def test_a_bucket_deleted_after_the_backup_is_made_again_with_its_objects(
    platform, shared_round_trip
):
    trip = shared_round_trip
    assert_gone_bucket_restored(platform, trip["seeded"], trip["restore_output"])


def test_the_shared_stacks_state_before_the_restore_is_saved(shared_round_trip):
    root = shared_round_trip["seeded"].root
    saved = [p for p in (root / "shared").iterdir() if p.name.endswith("-before-restore")]
    assert len(saved) == 1, saved
    assert str(saved[0]) in shared_round_trip["restore_output"]
    bucket = shared_round_trip["seeded"].bucket
    manifest = json.loads((saved[0] / "manifest.json").read_text())
    objects = manifest["s3"]["buckets"][bucket]["objects"]
    assert "images/probe.bin" not in objects  # deleted after the backup, so not there then
    assert (saved[0] / "s3" / bucket / "reports/2026/summary.csv").read_bytes() == b"changed"


def test_n8ns_files_are_back_with_their_owner_and_mode(platform, shared_round_trip):
    platform.require("N8N_IMAGE")
    data = assert_probe_restored(platform, shared_round_trip["seeded"].probe)
    aside = [p for p in data.parent.iterdir() if p.name.startswith("n8n.before-restore-")]
    assert len(aside) == 1, aside
    assert (aside[0] / "after-backup.txt").read_text() == "not in the backup"
    assert str(aside[0]) in shared_round_trip["restore_output"]
    source = shared_round_trip["seeded"].source
    entries = json.loads((source / "manifest.json").read_text())["data"]["n8n"]["entries"]
    root = data.stat()
    assert (root.st_uid, root.st_gid, root.st_mode & 0o7777) == (
        entries[""]["uid"],
        entries[""]["gid"],
        entries[""]["mode"],
    )


def test_n8ns_database_is_back_and_n8n_runs_on_it(platform, shared_round_trip):
    platform.require("N8N_IMAGE")
    source = shared_round_trip["seeded"].source
    data = platform.settings.data_root / "shared" / "n8n"
    assert (source / "n8n" / "database.sqlite").is_file()
    copy = Path(shutil.copy(data / "database.sqlite", source.parent / "live.sqlite"))
    try:
        assert _tables(copy) == _tables(source / "n8n" / "database.sqlite")
        assert "workflow_entity" in _tables(copy)
    finally:
        copy.unlink()
    response = platform.wait_for(
        lambda: (r := platform.web("n8n.localhost", "/healthz")).status_code == 200 and r,
        timeout=120,
        what="n8n /healthz after the restore",
    )
    assert isinstance(response, requests.Response)


def test_grafanas_data_is_back(platform, shared_round_trip):
    platform.require("GRAFANA_IMAGE")
    source = shared_round_trip["seeded"].source
    data = platform.settings.data_root / "shared" / "grafana"
    assert (data / "grafana.db").is_file()
    assert _tables(source / "grafana" / "grafana.db") <= _tables(data / "grafana.db")
