"""Running commands inside a service's task container (or a companion that reaches it) through
the Docker API: exec with its output streamed to a file, a private temporary directory, the
service's image."""

from __future__ import annotations

import contextlib
import tarfile
import tempfile
from pathlib import Path

import docker
from docker.errors import APIError, NotFound

from infra import engine
from infra.backup.manifest import BackupError
from infra.settings import Settings
from infra.swarm.companion import Reach

SERVICE_LABEL = "com.docker.swarm.service.name"
LONG_TIMEOUT = 6 * 3600  # a dump or restore may stay silent on the API for a long time


# --- containers --------------------------------------------------------------------------


def put_file(container, directory: str, local: Path, name: str, mode: int) -> None:
    """Copy a local file into `directory` of a container as `name`, owned by root with
    `mode`, as a tar stream from disk (never whole in memory)."""
    with tempfile.TemporaryFile(dir=local.parent) as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tar.gettarinfo(str(local), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = mode
            with local.open("rb") as handle:
                tar.addfile(info, handle)
        archive.seek(0)
        if not container.put_archive(directory, archive):
            raise BackupError(f"copying {local.name} into {container.name} failed.")


def _exec(client, container, cmd: list[str], stdout=None) -> tuple[int, bytes, bytes]:
    """Run `cmd` in the container; stdout goes to the file `stdout` when given, else is
    returned. Returns (exit code, stdout, stderr). `container` may be a Reach: its
    variables (where the server is) come with the exec."""
    environment = container.environment() if isinstance(container, Reach) else None
    exec_id = client.api.exec_create(
        container.id, cmd, stdout=True, stderr=True, environment=environment or None
    )["Id"]
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
        put_file(self.container, self.path, local, name, 0o600)
        return f"{self.path}/{name}"

    def __exit__(self, *exc) -> None:
        if self.path:
            # A container that is gone took its /tmp with it.
            with contextlib.suppress(APIError, NotFound):
                _exec(self.client, self.container, ["rm", "-rf", self.path])


def redis_args(container) -> list[str]:
    """redis-cli's arguments that reach the server from `container` (none in its own task)."""
    return container.redis_args() if isinstance(container, Reach) else []


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
