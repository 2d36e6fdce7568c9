"""The shared stack on another node than the engine's, without a daemon: where its data is,
the transfer's commands and archive, and the addresses the store's and Alertmanager's
helpers ask from a companion."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import tarfile
from types import SimpleNamespace

import pytest

from infra.alerts import api
from infra.backup import BackupError, shared, shared_remote, shared_restore
from infra.swarm import companion

SPEC = {
    "TaskTemplate": {
        "ContainerSpec": {
            "Image": "n8nio/n8n:2.20.12",
            "Mounts": [
                {"Type": "bind", "Source": "/srv/data/shared/n8n", "Target": "/home/node/.n8n"},
                {"Type": "volume", "Source": "x", "Target": "/tmp/x"},
            ],
        },
        "Networks": [{"Target": "net-traefik"}, {"Target": "net-monitoring"}],
    }
}


def test_the_data_directory_is_the_live_bind_mount():
    assert shared_remote.data_mount(SPEC, "shared_n8n", "/home/node/.n8n") == (
        "/srv/data/shared/n8n"
    )


def test_a_service_without_its_data_mount_is_one_line():
    with pytest.raises(BackupError, match=r"^shared_grafana has no data directory") as raised:
        shared_remote.data_mount(SPEC, "shared_grafana", "/var/lib/grafana")
    assert "\n" not in str(raised.value)
    assert "invoke deploy.shared" in str(raised.value)


def test_the_backup_job_sends_the_directory_with_numeric_owners_and_then_its_digest():
    command = shared_remote.send_command("/srv/data/shared/n8n", "tasks.helper")
    assert command[:2] == ["bash", "-c"]
    assert command[3:] == ["backup", "/srv/data/shared/n8n", "tasks.helper", "7070"]
    script = command[2]
    assert "tar -C" in script and "--numeric-owner" in script
    # The digest goes on a second connection only after the archive's was closed.
    assert script.index("exec 3>&-") < script.index('exec 4>"/dev/tcp/')
    # tar's exit 1 (a file changed while read) is not a failure; the SQLite check decides.
    assert '[ "$1" -gt 1 ]' in script


def test_the_restore_job_moves_the_old_directory_back_on_any_failure():
    command = shared_remote.receive_command("/d/shared/n8n", "/d/shared/n8n.aside", "tasks.h", "ab")
    assert command[3:] == ["restore", "/d/shared/n8n", "/d/shared/n8n.aside", "tasks.h", "7070",
                           "ab"]  # fmt: skip
    script = command[2]
    # Nothing moves before the connection is open, and the trap is set once it moved.
    assert script.index('exec 3<"/dev/tcp/') < script.index('mv "$d" "$aside"')
    assert script.index('mv "$d" "$aside"') < script.index("trap ")
    assert 'mv "$aside" "$d"' in script.split("trap ", 1)[1]
    assert '"$got" != "$want"' in script  # the stream's digest is checked before ok=1
    assert script.index('"$got" != "$want"') < script.index("ok=1")
    assert "--same-owner" in script and "--numeric-owner" in script


def test_a_restore_job_that_cannot_move_the_directory_aside_leaves_it_untouched(tmp_path):
    """Run for real with bash: the move aside fails (its parent does not exist), so the job
    ends before the trap that would remove the directory is set."""
    data = tmp_path / "shared" / "n8n"
    data.mkdir(parents=True)
    (data / "database.sqlite").write_text("the data")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        command = shared_remote.receive_command(
            "/shared/n8n", "/missing/n8n.aside", "127.0.0.1", "ab"
        )
        script = (
            command[2]
            .replace('"/host$1"', f'"{tmp_path}$1"')
            .replace('"/host$2"', f'"{tmp_path}$2"')
        )
        args = [*command[3:5], command[5], command[6], str(port), command[8]]
        result = subprocess.run(
            ["bash", "-c", script, *args], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 7, result.stderr
    assert "cannot move /shared/n8n aside" in result.stderr
    assert (data / "database.sqlite").read_text() == "the data"


def test_the_listener_is_core_perl_and_names_no_secret():
    command = shared_remote.listener_command("send", "/tmp/t/data.tar", timeout=90)
    assert command[:2] == ["perl", "-e"]
    assert command[3:] == ["7070", "send", "/tmp/t/data.tar", "90"]
    modules = {
        line.split()[1].rstrip(";") for line in command[2].split(";") if " use " in f" {line}"
    }
    assert modules <= {"strict", "IO::Socket::INET"}


def test_the_restore_archive_carries_the_backups_modes_and_owners(tmp_path):
    files = tmp_path / "n8n"
    (files / "nodes").mkdir(parents=True)
    (files / "database.sqlite").write_bytes(b"db")
    (files / "nodes" / "x.json").write_bytes(b"{}")
    entries = {
        "": {"type": "dir", "mode": 0o750, "uid": 1000, "gid": 1000},
        "nodes": {"type": "dir", "mode": 0o500, "uid": 1000, "gid": 1000},
        "nodes/x.json": {"type": "file", "mode": 0o600, "uid": 1000, "gid": 1000},
        "database.sqlite": {"type": "file", "mode": 0o644, "uid": 1000, "gid": 1000},
        "current": {"type": "link", "target": "nodes", "mode": 0o777, "uid": 1000, "gid": 1000},
    }
    archive = tmp_path / "n8n.tar"
    digest = shared_remote.write_archive(archive, "n8n", files, entries)
    assert digest == hashlib.sha256(archive.read_bytes()).hexdigest()
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar}
    assert next(iter(members)) == "n8n"  # the directory itself first, as tar lists it
    assert set(members) == {"n8n", "n8n/nodes", "n8n/nodes/x.json", "n8n/database.sqlite",
                            "n8n/current"}  # fmt: skip
    assert (members["n8n"].mode, members["n8n"].uid) == (0o750, 1000)
    assert members["n8n/nodes"].mode == 0o500
    assert members["n8n/current"].issym() and members["n8n/current"].linkname == "nodes"
    assert members["n8n/nodes/x.json"].uname == ""  # numeric owners only
    # What a backup of that directory would read back is the same entries.
    target = tmp_path / "back"
    target.mkdir()
    with archive.open("rb") as handle:
        assert shared._extract_archive(handle, target, "/home/node/.n8n") == entries


def test_the_senders_digest_is_read_from_the_listeners_line():
    assert shared_remote._digest_line(b"listening\nsha256 abc123\n") == "abc123"
    assert shared_remote._digest_line(b"listening\n") == ""


def _reach(host: str) -> companion.Reach:
    return companion.Reach("shared_seaweedfs", SimpleNamespace(id="c1", name="c"), host=host)


@pytest.mark.parametrize(
    ("host", "filer", "s3"),
    [
        ("", "http://127.0.0.1:8888", "http://127.0.0.1:8333"),
        ("tasks.shared_seaweedfs", "http://tasks.shared_seaweedfs:8888",
         "http://tasks.shared_seaweedfs:8333"),
    ],
    ids=["in-its-own-task", "from-a-companion"],
)  # fmt: skip
def test_the_store_is_asked_at_its_loopback_or_its_tasks_name(host, filer, s3):
    assert shared.filer_url(_reach(host)) == filer
    assert shared_restore.s3_url(_reach(host)) == s3


@pytest.mark.parametrize(
    ("host", "url"),
    [("", "http://127.0.0.1:9093"), ("tasks.shared_alertmanager", "http://tasks.shared_alertmanager:9093")],
    ids=["in-its-own-task", "from-a-companion"],
)  # fmt: skip
def test_alertmanager_is_asked_at_its_loopback_or_its_tasks_name(host, url):
    assert api.base_url(host) == url


def test_a_transfer_companion_has_the_tools_image_the_networks_and_no_secret():
    target = {
        "TaskTemplate": {
            "ContainerSpec": {"Image": "pgvector/pgvector:0.8.1-pg17-trixie"},
            "Networks": [{"Target": "net-monitoring"}],
        }
    }
    spec = companion.companion_spec("shared_n8n", target, "node-1")
    assert spec["image"] == "pgvector/pgvector:0.8.1-pg17-trixie"
    assert spec["networks"] == ["net-monitoring"]
    assert spec["secrets"] == []
    assert spec["constraints"] == ["node.id == node-1"]
    assert spec["labels"] == {companion.COMPANION_LABEL: "shared_n8n"}


def test_without_a_postgres_image_the_transfer_is_one_line():
    settings = SimpleNamespace(images={})
    with pytest.raises(BackupError, match=r"^POSTGRES_IMAGE is not set") as raised:
        shared.transfer_image(settings)
    assert "\n" not in str(raised.value)


def test_a_form_signed_for_the_loopback_is_sent_to_the_stores_tasks_name():
    """botocore refuses tasks.shared_seaweedfs as an endpoint (the underscore), so forms
    are signed for 127.0.0.1 and moved; the path (bucket) stays."""
    base = shared_restore.s3_url(_reach("tasks.shared_seaweedfs"))
    moved = shared_restore.at_base("http://127.0.0.1:8333/restore-1", base)
    assert moved == "http://tasks.shared_seaweedfs:8333/restore-1"
    assert shared_restore.at_base("http://127.0.0.1:8333/b", shared_restore.S3_API) == (
        "http://127.0.0.1:8333/b"
    )
