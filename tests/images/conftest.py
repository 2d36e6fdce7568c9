"""Fixtures for the stand-in contract tests: the local Docker engine, the stand-in images, and
containers/volumes that are labelled and removed afterwards.

A missing engine or stand-in image skips locally and fails when CI=true."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from . import build

TEST_LABEL = "org.nextcandle.test"
TEST_LABEL_VALUE = "standin-contract"
LABELS = {TEST_LABEL: TEST_LABEL_VALUE}
REPO = Path(__file__).resolve().parents[2]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str):
    """Skip with the reason; in CI, where everything must be there, fail instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this cannot be skipped)", pytrace=False)
    pytest.skip(reason)


def repo_file(relative: str) -> Path:
    """A file another part of the repository provides (configs/...); skip (fail in CI) while
    it does not exist yet."""
    path = REPO / relative
    if not path.is_file():
        unavailable(f"{relative} does not exist yet")
    return path


@pytest.fixture(scope="session")
def docker_client():
    try:
        import docker

        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as error:  # ImportError, DockerException, connection refused
        unavailable(
            f"no Docker engine to run the stand-ins on ({error}); start one: bash .ci/start-docker"
        )
    yield client
    remove_labelled(client)


def remove_labelled(client) -> None:
    for container in client.containers.list(
        all=True, filters={"label": f"{TEST_LABEL}={TEST_LABEL_VALUE}"}
    ):
        container.remove(force=True, v=True)
    for volume in client.volumes.list(filters={"label": f"{TEST_LABEL}={TEST_LABEL_VALUE}"}):
        volume.remove(force=True)
    for network in client.networks.list(filters={"label": f"{TEST_LABEL}={TEST_LABEL_VALUE}"}):
        network.remove()


@pytest.fixture(scope="session")
def standin_tags() -> dict[str, str]:
    return {s.name: s.tag for s in build.standins() if s.name}


@pytest.fixture(scope="session")
def standin(docker_client, standin_tags):
    """standin("redis") -> the local tag of that stand-in; skips (fails in CI) when not built."""

    def get(name: str) -> str:
        tag = standin_tags[name]
        try:
            docker_client.images.get(tag)
        except Exception:
            unavailable(
                f"stand-in image {tag} is not built; "
                f"build it: python -m tests.images.build --only {name}"
            )
        return tag

    return get


class Containers:
    """Starts labelled containers, volumes and networks; removes them when the owning fixture
    ends."""

    def __init__(self, client):
        self.client = client
        self.started = []
        self.volumes = []
        self.networks = []

    def volume(self, purpose: str):
        volume = self.client.volumes.create(
            name=f"standin-test-{purpose}-{uuid.uuid4().hex[:8]}", labels=LABELS
        )
        self.volumes.append(volume)
        return volume.name

    def network(self, purpose: str) -> str:
        """A user-defined bridge network: its containers reach each other by container name."""
        network = self.client.networks.create(
            f"standin-test-{purpose}-{uuid.uuid4().hex[:8]}", driver="bridge", labels=LABELS
        )
        self.networks.append(network)
        return network.name

    def create(self, image: str, *, files: dict[str, tuple[bytes, int]] | None = None, **kwargs):
        kwargs.setdefault("name", f"standin-test-{uuid.uuid4().hex[:10]}")
        kwargs["labels"] = {**LABELS, **kwargs.get("labels", {})}
        container = self.client.containers.create(image, **kwargs)
        self.started.append(container)
        if files:
            put_files(container, files)
        return container

    def adopt(self, container):
        """Remove a container created elsewhere (e.g. dind.create) with the others."""
        self.started.append(container)
        return container

    def run(self, image: str, *, files: dict[str, tuple[bytes, int]] | None = None, **kwargs):
        container = self.create(image, files=files, **kwargs)
        container.start()
        container.reload()
        return container

    def close(self):
        # Best effort: the session fixture removes whatever is left by label.
        for container in self.started:
            with contextlib.suppress(Exception):
                container.remove(force=True, v=True)
        for volume in self.volumes:
            with contextlib.suppress(Exception):
                volume.remove(force=True)
        for network in self.networks:
            with contextlib.suppress(Exception):
                network.remove()


@pytest.fixture(scope="module")
def containers(docker_client):
    owner = Containers(docker_client)
    yield owner
    owner.close()


def put_files(container, files: dict[str, tuple[bytes, int]]) -> None:
    """Copy {absolute path: (content, mode)} into a (created or running) container, as root.
    Missing parent directories are created (0755); existing ones are left as they are. Paths
    under a mount made inside the container (dind's /tmp) are hidden by that mount."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, (content, mode) in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(content), mode, int(time.time())
            archive.addfile(info, io.BytesIO(content))
    container.put_archive("/", buffer.getvalue())


def wait_for(condition, *, timeout: float, what: str, container=None, interval: float = 0.5):
    """Poll `condition` until it returns a truthy value; on timeout fail with the container's
    last log lines."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # the thing is not up yet
            last_error = error
        if container is not None:
            container.reload()
            if container.status == "exited":
                break
        time.sleep(interval)
    details = f"; last error: {last_error}" if last_error else ""
    if container is not None:
        container.reload()
        logs = container.logs(tail=30).decode(errors="replace")
        details += f"\ncontainer {container.name} is {container.status}; last log lines:\n{logs}"
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{details}")


def exec_ok(
    container, command, *, environment: dict[str, str] | None = None, user: str = ""
) -> str:
    """Run a command in the container; fail with its output unless it exits 0."""
    code, output = container.exec_run(command, environment=environment, user=user)
    text = output.decode(errors="replace")
    assert code == 0, f"{command!r} in {container.name} exited {code}:\n{text}"
    return text


def host_port(container, port: str) -> int:
    """The 127.0.0.1 port Docker published for the container's `port` (e.g. '5432/tcp')."""
    container.reload()
    bindings = container.attrs["NetworkSettings"]["Ports"].get(port) or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "0.0.0.0", ""):  # noqa: S104 (reading, not binding)
            return int(binding["HostPort"])
    raise AssertionError(f"{container.name} publishes no host port for {port}: {bindings}")


def loopback(port: str) -> dict:
    """ports= argument publishing `port` on a free 127.0.0.1 port."""
    return {port: ("127.0.0.1", None)}


def process_uid(container, pid: int = 1) -> int:
    status = exec_ok(container, ["cat", f"/proc/{pid}/status"])
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line in /proc/{pid}/status of {container.name}")
