"""backup.shared's data directories and restore.shared without a daemon: a directory's tar
stream unpacked with its owners, SQLite databases made self-contained and checked, the
entries written back, object metadata as headers, and the CLI's refusals."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import io
import json
import os
import sqlite3
import stat
import tarfile

import pytest

from infra import backup
from infra.backup import BackupError, shared, shared_restore
from tests.unit.test_backup import make_backup, one_line_error, run


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> list[bytes]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    data = buffer.getvalue()
    return [data[i : i + 4096] for i in range(0, len(data), 4096)]  # as get_archive streams


def _info(name: str, kind=tarfile.REGTYPE, mode=0o640, uid=472, gid=0, size=0, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.size, info.linkname = (
        kind,
        mode,
        uid,
        gid,
        size,
        link,
    )
    return info


def _grafana_stream(files: dict[str, bytes]) -> list[bytes]:
    members = [(_info("grafana", tarfile.DIRTYPE, mode=0o755), None)]
    members.append((_info("grafana/plugins", tarfile.DIRTYPE, mode=0o750), None))
    for name, content in files.items():
        members.append((_info(f"grafana/{name}", size=len(content)), content))
    members.append((_info("grafana/current", tarfile.SYMTYPE, link="plugins"), None))
    return _tar(members)


def test_a_data_directory_is_unpacked_privately_with_its_owners_recorded(tmp_path):
    target = tmp_path / "grafana"
    target.mkdir()
    stream = _grafana_stream({"grafana.db": b"not sqlite", "plugins/p.json": b"{}"})
    entries = shared._extract(stream, target, "/var/lib/grafana")
    assert entries == {
        "": {"type": "dir", "mode": 0o755, "uid": 472, "gid": 0},
        "plugins": {"type": "dir", "mode": 0o750, "uid": 472, "gid": 0},
        "grafana.db": {"type": "file", "mode": 0o640, "uid": 472, "gid": 0},
        "plugins/p.json": {"type": "file", "mode": 0o640, "uid": 472, "gid": 0},
        "current": {"type": "link", "target": "plugins", "mode": 0o640, "uid": 472, "gid": 0},
    }
    assert (target / "plugins" / "p.json").read_bytes() == b"{}"
    assert stat.S_IMODE((target / "grafana.db").stat().st_mode) == 0o600
    assert not (target / "current").exists()  # a link is recorded, not followed


def test_a_member_leaving_the_directory_is_refused(tmp_path):
    target = tmp_path / "n8n"
    target.mkdir()
    stream = _tar([(_info(".n8n/../../etc/passwd", size=1), b"x")])
    with pytest.raises(BackupError, match="cannot be a file path"):
        shared._extract(stream, target, "/home/node/.n8n")


def _wal_database(path) -> None:
    """A SQLite database in WAL mode whose last rows are only in its -wal file, as a running
    n8n leaves it: copied while the writer still holds it open."""
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE workflow (id INTEGER PRIMARY KEY, name TEXT)")
    writer.executemany("INSERT INTO workflow (name) VALUES (?)", [("a",), ("b",), ("c",)])
    writer.commit()
    return writer


def test_a_database_copied_with_its_wal_keeps_every_row_and_needs_no_wal(tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    writer = _wal_database(live / "database.sqlite")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("database.sqlite", "database.sqlite-wal", "database.sqlite-shm"):
        (copy / name).write_bytes((live / name).read_bytes())
    writer.close()
    entries = {
        name: {"type": "file", "mode": 0o644, "uid": 1000, "gid": 1000}
        for name in ("database.sqlite", "database.sqlite-wal", "database.sqlite-shm")
    }
    assert shared._check_sqlite(copy, entries) == {"database.sqlite": "ok"}
    assert sorted(p.name for p in copy.iterdir()) == ["database.sqlite"]
    assert set(entries) == {"database.sqlite"}
    with sqlite3.connect(f"file:{copy / 'database.sqlite'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM workflow").fetchone()[0] == 3


def test_a_damaged_database_fails_its_check(tmp_path):
    path = tmp_path / "grafana.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE dashboard (id INTEGER PRIMARY KEY, data TEXT)")
        db.executemany("INSERT INTO dashboard (data) VALUES (?)", [("x" * 500,)] * 400)
        db.execute("CREATE INDEX by_data ON dashboard (data)")
    data = bytearray(path.read_bytes())
    page = 4096 * 3
    data[page + 100 : page + 400] = os.urandom(300)
    path.write_bytes(bytes(data))
    entries = {"grafana.db": {"type": "file", "mode": 0o640, "uid": 472, "gid": 0}}
    assert shared._check_sqlite(tmp_path, entries)["grafana.db"] != "ok"


def test_a_database_too_damaged_to_open_fails_its_check(tmp_path):
    (tmp_path / "grafana.db").write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    entries = {"grafana.db": {"type": "file", "mode": 0o640, "uid": 472, "gid": 0}}
    assert shared._check_sqlite(tmp_path, entries)["grafana.db"] != "ok"


def test_files_that_are_not_databases_are_left_alone(tmp_path):
    (tmp_path / "config").write_text('{"encryptionKey": "from the secret"}')
    entries = {"config": {"type": "file", "mode": 0o600, "uid": 1000, "gid": 1000}}
    assert shared._check_sqlite(tmp_path, entries) == {}
    assert (tmp_path / "config").exists()


def test_entries_are_written_back_with_their_modes(tmp_path):
    files = tmp_path / "backup"
    (files / "plugins").mkdir(parents=True)
    (files / "grafana.db").write_bytes(b"db")
    (files / "plugins" / "p.json").write_bytes(b"{}")
    uid, gid = os.geteuid(), os.getegid()
    entries = {
        "": {"type": "dir", "mode": 0o750, "uid": uid, "gid": gid},
        "plugins": {"type": "dir", "mode": 0o500, "uid": uid, "gid": gid},
        "grafana.db": {"type": "file", "mode": 0o640, "uid": uid, "gid": gid},
        "plugins/p.json": {"type": "file", "mode": 0o444, "uid": uid, "gid": gid},
        "current": {"type": "link", "target": "plugins", "mode": 0o777, "uid": uid, "gid": gid},
    }
    directory = tmp_path / "data" / "grafana"
    directory.parent.mkdir()
    shared_restore._write_entries(directory, files, entries)
    try:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750
        assert stat.S_IMODE((directory / "plugins").stat().st_mode) == 0o500
        assert stat.S_IMODE((directory / "grafana.db").stat().st_mode) == 0o640
        assert (directory / "plugins" / "p.json").read_bytes() == b"{}"
        assert os.readlink(directory / "current") == "plugins"
    finally:
        (directory / "plugins").chmod(0o700)  # so that tmp_path can be removed


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_an_objects_type_and_metadata_become_the_upload_forms_fields():
    entry = {
        "mime": "text/csv",
        "extended": {
            "X-Amz-Meta-Owner": _b64("alice"),
            "X-Amz-Meta-Run": _b64("42"),
            "Cache-Control": _b64("max-age=60"),
            # The store's own attributes: it makes them anew from the upload.
            "Seaweed-X-Amz-ETag": _b64("d41d8cd98f00b204e9800998ecf8427e"),
            "x-seaweedfs-checksum-value": _b64("AAAAAA=="),
        },
    }
    assert shared_restore.form_fields(entry) == {
        "Content-Type": "text/csv",
        "Cache-Control": "max-age=60",
        "x-amz-meta-owner": "alice",
        "x-amz-meta-run": "42",
    }


def test_an_object_without_a_type_leaves_it_to_the_store():
    assert shared_restore.form_fields({"mime": "", "extended": {}}) == {}


SIGNED = {
    "url": "http://127.0.0.1:8333/bucket",
    "fields": {"Content-Type": "text/csv", "key": "a/b.csv", "policy": "cG9saWN5", "x": "y"},
}


@pytest.mark.parametrize(
    "content",
    [
        b"day,rows\r\n1,250\r\n",
        bytes(range(256)) * 700,  # NUL bytes, line breaks, more than one chunk
        b"trailing spaces and tabs \t \n",
        b"",
    ],
    ids=["text", "binary", "whitespace", "empty"],
)
def test_an_object_travels_as_the_file_of_a_signed_upload_form(tmp_path, content):
    """Parsed back as the store parses it (email's MIME parser standing in for Go's)."""
    source = tmp_path / "object"
    source.write_bytes(content)
    body = tmp_path / "body"
    content_type, url = shared_restore.upload_form(SIGNED, source, body)
    assert url == SIGNED["url"]
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body.read_bytes(),
        policy=email.policy.HTTP,
    )
    *fields, file = message.iter_parts()
    assert {
        part.get_param("name", header="content-disposition"): part.get_content() for part in fields
    } == SIGNED["fields"]
    assert file.get_param("name", header="content-disposition") == "file"  # last, as S3 wants
    assert file.get_payload(decode=True) == content
    assert b"\x00" not in body.read_bytes()  # busybox's wget stops at a NUL


def test_metadata_with_a_line_break_is_refused():
    entry = {"mime": "text/plain", "extended": {"X-Amz-Meta-X": _b64("a\r\nInjected: 1")}}
    with pytest.raises(BackupError, match="line break"):
        shared_restore.form_fields(entry)


def _sigv4(secret: str, date: str, stamp: str, canonical: str) -> str:
    """AWS Signature Version 4 of a canonical request, from the specification's steps."""
    scope = f"{date}/us-east-1/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in (date, "us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), "sha256").digest()
    return hmac.new(key, to_sign.encode(), "sha256").hexdigest()


def test_a_bucket_made_from_another_node_is_a_put_signed_for_the_host_it_is_sent_to():
    keys = ("access-key-id", "the-secret-key")
    raw = shared_restore.create_bucket_request("files", "tasks.shared_seaweedfs", keys)
    head, _, body = raw.decode().partition("\r\n\r\n")
    request_line, *header_lines = head.split("\r\n")
    headers = {name.lower(): value for name, value in (h.split(": ", 1) for h in header_lines)}
    assert request_line == "PUT /files HTTP/1.1" and body == ""
    assert headers["host"] == "tasks.shared_seaweedfs:8333"
    assert headers["content-length"] == "0"
    assert "the-secret-key" not in raw.decode()
    auth = dict(
        part.split("=", 1)
        for part in headers["authorization"].removeprefix("AWS4-HMAC-SHA256 ").split(", ")
    )
    stamp = headers["x-amz-date"]
    assert auth["Credential"] == f"access-key-id/{stamp[:8]}/us-east-1/s3/aws4_request"
    signed = auth["SignedHeaders"].split(";")
    assert "host" in signed  # the Host it is sent to is the one it is signed for
    canonical = "\n".join(
        ["PUT", "/files", ""]
        + [f"{name}:{headers[name]}" for name in signed]
        + ["", auth["SignedHeaders"], hashlib.sha256(b"").hexdigest()]
    )
    assert headers["x-amz-content-sha256"] == hashlib.sha256(b"").hexdigest()
    assert auth["Signature"] == _sigv4("the-secret-key", stamp[:8], stamp, canonical)


# --- the CLI -----------------------------------------------------------------------------


@pytest.fixture
def operator_env(tmp_path, environ):
    """As tests/unit/test_backup.py's: an operator's shell with no Docker engine reachable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    return {
        **env,
        **environ,
        "BACKUP_ROOT": str(tmp_path / "backups"),
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
    }


def _shared_backup(directory):
    directory.mkdir(parents=True)
    (directory / "s3" / "files").mkdir(parents=True)
    (directory / "s3" / "files" / "a.txt").write_bytes(b"a")
    manifest = {
        "format": backup.FORMAT,
        "kind": "shared",
        "created": "2026-11-26T15:15:00+00:00",
        "s3": {"buckets": {"files": {"objects": {"a.txt": {"file": "s3/files/a.txt"}}}}},
        "files": {"s3/files/a.txt": backup.file_entry(directory / "s3" / "files" / "a.txt")},
    }
    (directory / backup.MANIFEST).write_text(json.dumps(manifest))
    return directory


def test_cli_restore_shared_without_yes_is_refused(operator_env, tmp_path):
    directory = _shared_backup(tmp_path / "b")
    line = one_line_error(run(["restore.shared", f"--from={directory}"], operator_env))
    assert "--yes" in line and f"--from={directory}" in line


def test_cli_restore_shared_from_a_missing_path_is_one_line(operator_env, tmp_path):
    line = one_line_error(run(["restore.shared", f"--from={tmp_path}/gone", "--yes"], operator_env))
    assert "does not exist" in line


def test_cli_restore_shared_from_an_environments_backup_is_refused(operator_env, tmp_path):
    directory = make_backup(tmp_path / "b")
    line = one_line_error(run(["restore.shared", f"--from={directory}", "--yes"], operator_env))
    assert "is a backup of 'env', not of the shared stack" in line


def test_cli_restore_shared_without_from_is_one_line(operator_env):
    assert "--from=PATH" in one_line_error(run(["restore.shared", "--yes"], operator_env))


def test_cli_restore_shared_without_docker_is_one_line(operator_env, tmp_path):
    directory = _shared_backup(tmp_path / "b")
    line = one_line_error(run(["restore.shared", f"--from={directory}", "--yes"], operator_env))
    assert "Docker is not reachable" in line
    assert not (tmp_path / "backups").exists()  # no before-restore backup either


def _stored(path, mime="text/csv", **extended):
    return {"Md5": shared_restore._md5(path), "Mime": mime, "Extended": extended}


@pytest.fixture
def object_file(tmp_path):
    (tmp_path / "s3" / "files").mkdir(parents=True)
    (tmp_path / "s3" / "files" / "a.csv").write_bytes(b"day,rows\n")
    entry = {
        "file": "s3/files/a.csv",
        "mime": "text/csv",
        "extended": {"X-Amz-Meta-Owner": _b64("alice")},
    }
    return tmp_path, entry


def test_an_object_read_back_as_backed_up_passes(object_file):
    source, entry = object_file
    stored = _stored(source / entry["file"], **{"X-Amz-Meta-Owner": _b64("alice")})
    shared_restore._compare("files", "a.csv", entry, stored, source)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"Md5": "AAAAAAAAAAAAAAAAAAAAAA=="}, "other bytes"),
        ({"Mime": "text/plain"}, "content type 'text/plain'"),
        ({"Extended": {"X-Amz-Meta-Owner": _b64("bob")}}, "other metadata"),
        ({"Extended": {}}, "other metadata"),
    ],
    ids=["bytes", "content-type", "metadata-value", "metadata-missing"],
)
def test_an_object_read_back_otherwise_is_refused(object_file, change, words):
    source, entry = object_file
    stored = {**_stored(source / entry["file"], **{"X-Amz-Meta-Owner": _b64("alice")}), **change}
    with pytest.raises(BackupError, match=None) as raised:
        shared_restore._compare("files", "a.csv", entry, stored, source)
    assert words in str(raised.value) and "files/a.csv" in str(raised.value)


def test_an_object_missing_after_it_was_written_is_refused(object_file):
    source, entry = object_file
    with pytest.raises(BackupError, match="not in the store"):
        shared_restore._compare("files", "a.csv", entry, None, source)


def test_cli_restore_shared_of_a_bucket_s3_cannot_name_is_one_line(operator_env, tmp_path):
    directory = _shared_backup(tmp_path / "b")
    manifest = json.loads((directory / backup.MANIFEST).read_text())
    manifest["s3"]["buckets"] = {"Files;reboot": manifest["s3"]["buckets"]["files"]}
    (directory / backup.MANIFEST).write_text(json.dumps(manifest))
    line = one_line_error(run(["restore.shared", f"--from={directory}", "--yes"], operator_env))
    assert "bucket 'Files;reboot' that cannot be restored" in line
