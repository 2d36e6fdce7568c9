"""Backups without a daemon: names, BACKUP_ROOT, manifest validation, refusals on the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra import backup
from infra.backup import BackupError
from infra.settings import REPO_ROOT, load_settings

INVOKE = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT)]
RDB = b"REDIS0012" + bytes(range(64)) + b"\xff" + b"\x00" * 8
DUMP = b"PGDMP" + bytes(range(200))


def make_backup(directory: Path, files: dict[str, bytes] | None = None, **fields) -> Path:
    """A well-formed env backup directory, as backup_env writes it."""
    files = files or {backup.POSTGRES_DUMP: DUMP, backup.REDIS_RDB: RDB}
    directory.mkdir(parents=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    manifest = {
        "format": backup.FORMAT,
        "kind": "env",
        "env": "prod",
        "created": "2026-11-26T15:15:00+00:00",
        "postgres": {"tables": {"public.items": 3}},
        "redis": {"keys": 2, "expires": 0},
        "files": {name: backup.file_entry(directory / name) for name in files},
        **fields,
    }
    (directory / backup.MANIFEST).write_text(json.dumps(manifest))
    return directory


# --- names and settings ------------------------------------------------------------------


def test_backup_names_are_utc_timestamps():
    moment = datetime(2026, 11, 26, 15, 15, 0, tzinfo=UTC)
    assert backup.backup_name(moment) == "20261126T151500Z"
    assert backup.backup_name(moment, "before-restore") == "20261126T151500Z-before-restore"


@pytest.mark.parametrize(
    "name, valid",
    [
        ("20261126T151500Z", True),
        ("20261126T151500Z-before-restore", True),
        ("20261126T151500Z-2", True),
        (".partial-20261126T151500Z-abcd1234", False),
        ("latest", False),
    ],
    ids=["plain", "labelled", "second-in-one-second", "partial", "other"],
)
def test_only_finished_backups_carry_a_backup_name(name, valid):
    assert backup.is_backup_name(name) is valid


def test_backup_root_defaults_to_the_repository(environ):
    assert load_settings(REPO_ROOT, environ).backups == REPO_ROOT / ".backups"


def test_relative_backup_root_is_resolved_against_the_repository(environ):
    settings = load_settings(REPO_ROOT, {**environ, "BACKUP_ROOT": "../elsewhere"})
    assert settings.backups == (REPO_ROOT.parent / "elsewhere").resolve()


def test_backup_root_from_the_env_file(tmp_path, environ):
    Path(environ["ENV_FILE"]).write_text(f"BACKUP_ROOT={tmp_path}/b\n")
    assert load_settings(REPO_ROOT, environ).backups == tmp_path / "b"


def test_finalise_renames_the_partial_directory_privately(tmp_path):
    partial = backup._partial_dir(tmp_path / "prod")
    (partial / "sub").mkdir(mode=0o755)
    final = backup._finalise(partial, tmp_path / "prod", "")
    again = backup._finalise(backup._partial_dir(tmp_path / "prod"), tmp_path / "prod", "")
    assert backup.is_backup_name(final.name) and not partial.exists()
    assert again.name.startswith(final.name)  # same second: a numbered sibling, no overwrite
    assert final.stat().st_mode & 0o777 == 0o700
    assert (final / "sub").stat().st_mode & 0o777 == 0o700


def test_manifest_file_is_private(tmp_path):
    backup.write_manifest(tmp_path, {"format": 1})
    assert (tmp_path / backup.MANIFEST).stat().st_mode & 0o777 == 0o600


def test_aof_base_manifest_names_the_rdb_as_its_base():
    files = backup.aof_base_files(RDB)
    assert files["appendonly.aof.1.base.rdb"] == RDB
    lines = files["appendonly.aof.manifest"].decode().splitlines()
    assert lines == [
        "file appendonly.aof.1.base.rdb seq 1 type b",
        "file appendonly.aof.1.incr.aof seq 1 type i",
    ]


# --- validation --------------------------------------------------------------------------


def test_a_complete_backup_validates(tmp_path):
    manifest = backup.validate(make_backup(tmp_path / "b"), "env")
    assert manifest["env"] == "prod"


def test_missing_backup_is_refused(tmp_path):
    with pytest.raises(BackupError, match="does not exist"):
        backup.validate(tmp_path / "nothing", "env", tmp_path)


def test_backup_without_manifest_is_refused(tmp_path):
    directory = make_backup(tmp_path / "b")
    (directory / backup.MANIFEST).unlink()
    with pytest.raises(BackupError, match="no manifest.json"):
        backup.validate(directory, "env")


def test_unreadable_manifest_is_refused(tmp_path):
    directory = make_backup(tmp_path / "b")
    (directory / backup.MANIFEST).write_text("{not json")
    with pytest.raises(BackupError, match="not readable JSON"):
        backup.validate(directory, "env")


@pytest.mark.parametrize("damaged", [backup.POSTGRES_DUMP, backup.REDIS_RDB])
def test_flipped_bytes_are_caught_by_the_checksum(tmp_path, damaged):
    directory = make_backup(tmp_path / "b")
    data = bytearray((directory / damaged).read_bytes())
    data[20] ^= 0xFF
    (directory / damaged).write_bytes(bytes(data))
    with pytest.raises(BackupError, match=f"{damaged} is corrupt \\(its sha256 differs"):
        backup.validate(directory, "env")


def test_truncated_file_is_refused_by_its_size(tmp_path):
    directory = make_backup(tmp_path / "b")
    (directory / backup.POSTGRES_DUMP).write_bytes(DUMP[:50])
    with pytest.raises(BackupError, match="50 bytes, the manifest says"):
        backup.validate(directory, "env")


def test_missing_file_is_refused(tmp_path):
    directory = make_backup(tmp_path / "b")
    (directory / backup.REDIS_RDB).unlink()
    with pytest.raises(BackupError, match="redis.rdb is missing"):
        backup.validate(directory, "env")


def test_env_backup_without_a_dump_is_refused(tmp_path):
    directory = make_backup(tmp_path / "b", files={backup.REDIS_RDB: RDB})
    with pytest.raises(BackupError, match="lists no postgres.dump"):
        backup.validate(directory, "env")


def test_manifest_cannot_point_outside_the_backup(tmp_path):
    directory = make_backup(tmp_path / "b")
    manifest = json.loads((directory / backup.MANIFEST).read_text())
    manifest["files"]["../../etc/passwd"] = {"size": 1, "sha256": "0"}
    (directory / backup.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="bad file"):
        backup.validate(directory, "env")


def test_a_shared_backup_is_not_restored_into_an_environment(tmp_path):
    directory = make_backup(tmp_path / "b", kind="shared")
    with pytest.raises(BackupError, match="backup of 'shared', not of an environment"):
        backup.validate(directory, "env")


def test_rdb_without_its_header_is_refused(tmp_path):
    directory = make_backup(tmp_path / "b", files={backup.POSTGRES_DUMP: DUMP, "redis.rdb": DUMP})
    with pytest.raises(BackupError, match="not a Redis RDB file"):
        backup.validate(directory, "env")


def test_prod_needs_yes():
    with pytest.raises(BackupError, match="add --yes"):
        backup.refuse_prod_without_yes("prod", False, "/b")
    backup.refuse_prod_without_yes("prod", True, "/b")
    backup.refuse_prod_without_yes("stg", False, "/b")


@pytest.mark.parametrize(
    "size, text", [(0, "0 B"), (1536, "1.5 KiB"), (3 * 1024**3, "3.0 GiB")], ids=str
)
def test_sizes_read_as_people_write_them(size, text):
    assert backup.human_size(size) == text


# --- the command line (no daemon) --------------------------------------------------------


@pytest.fixture
def operator_env(tmp_path, environ):
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    return {
        **env,
        **environ,
        "BACKUP_ROOT": str(tmp_path / "backups"),
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
    }


def run(args, env):
    return subprocess.run([*INVOKE, *args], env=env, capture_output=True, text=True, check=False)


def one_line_error(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def test_cli_lists_the_backup_and_restore_tasks(operator_env):
    listing = run(["--list"], operator_env).stdout
    for name in ("backup.env", "backup.shared", "backup.prune", "restore.env"):
        assert name in listing


def test_cli_restore_from_a_missing_path_is_one_line(operator_env, tmp_path):
    result = run(["restore.env", "--name=stg", f"--from={tmp_path}/gone"], operator_env)
    line = one_line_error(result)
    assert "does not exist" in line and str(tmp_path / "backups") in line


def test_cli_restore_from_a_corrupt_backup_is_one_line(operator_env, tmp_path):
    directory = make_backup(tmp_path / "b")
    (directory / backup.REDIS_RDB).write_bytes(RDB[:30] + b"\x00" + RDB[31:])
    line = one_line_error(run(["restore.env", "--name=stg", f"--from={directory}"], operator_env))
    assert "redis.rdb is corrupt" in line


def test_cli_restore_into_prod_without_yes_is_refused(operator_env, tmp_path):
    directory = make_backup(tmp_path / "b")
    line = one_line_error(run(["restore.env", "--name=prod", f"--from={directory}"], operator_env))
    assert "--yes" in line and "prod" in line


def test_cli_restore_without_from_is_one_line(operator_env):
    assert "--from=PATH" in one_line_error(run(["restore.env", "--name=stg"], operator_env))


@pytest.mark.parametrize(
    "args",
    [["backup.env", "--name=qa"], ["restore.env", "--name=qa", "--from=/x"]],
    ids=["backup", "restore"],
)
def test_cli_unknown_environment_is_one_line(operator_env, args):
    assert "unknown environment 'qa'" in one_line_error(run(args, operator_env))


@pytest.mark.parametrize("args", [["backup.env", "--name=dev"], ["backup.shared"]], ids=str)
def test_cli_backup_without_docker_is_one_line_and_writes_nothing(operator_env, tmp_path, args):
    line = one_line_error(run(args, operator_env))
    assert "Docker is not reachable" in line
    assert not (tmp_path / "backups").exists()
    assert not (tmp_path / "data").exists()  # no record either: the run never started


def test_cli_backup_with_a_malformed_backup_keep_is_one_line(operator_env, tmp_path):
    line = one_line_error(run(["backup.env", "--name=dev"], {**operator_env, "BACKUP_KEEP": "7"}))
    assert line.startswith("error: BACKUP_KEEP='7'") and "7d,4w,6m" in line
    assert not (tmp_path / "backups").exists()
