"""Reaching a stateful service's task from the engine `invoke` talks to, wherever it runs.

Backups, restores and rotations run the service's own tools (pg_dump, redis-cli, psql) next
to the data, through the exec API. Exec reaches only containers on the engine's own node, so
when the task runs on another node (its data node is a worker, or `invoke` runs on a second
manager) they go through a *companion*: a short-lived service pinned to this engine's node
(`node.id == <its NodeID>`), with the target's image (the same client tools, the same
versions), on the target's networks (without its aliases: nothing resolves the service's
name to the companion), with the target's Docker secrets mounted at the same paths, running
only a sleep. Operations exec into the companion and reach the database over the overlay
network at `tasks.<service>` (DESIGN decision 1: no virtual IP); passwords are read from
/run/secrets inside the container as on the task itself, so none is in an argument or a
service's environment (decision 7).

Why a companion rather than a job on the data node: a job's container is on another engine,
out of reach of exec and put_archive, so a backup file could not be streamed in or out; the
companion is local, so files move as they do with a local task. Why not always: when the task
is here, exec into it is as fast as before and needs no service; the companion costs a few
seconds of scheduling.

A companion is removed when the operation ends, also on error. Its command is a sleep of
LIFETIME (the longest an operation waits on the API), with no restart: one left behind by a
killed run stops by itself, and the next run removes every companion older than that or no
longer running (they are labelled COMPANION_LABEL, named nextcandle-companion-<service>-...).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import docker
from docker.types import RestartPolicy

from infra import engine
from infra.errors import EngineError
from infra.swarm.placement import node_id_here, remove_service_quietly

COMPANION_LABEL = "com.nextcandle.companion"  # value: the service it reaches
PREFIX = "nextcandle-companion-"
LIFETIME = 6 * 3600  # seconds; as LONG_TIMEOUT of the backups
START_TIMEOUT = 120.0
_FINISHED = {"complete", "failed", "rejected", "shutdown", "orphaned", "remove"}


@dataclass(frozen=True)
class Reach:
    """Where to exec to reach `service`: its own task's container (host ""), or a companion
    on this node that connects to `host`."""

    service: str
    container: object  # a docker Container
    host: str = ""
    companion: str = ""  # the companion's service name, when it is one

    @property
    def name(self) -> str:
        return self.container.name

    @property
    def id(self) -> str:
        return self.container.id

    def put_archive(self, path: str, data) -> bool:
        return self.container.put_archive(path, data)

    @property
    def remote(self) -> bool:
        return bool(self.host)

    def environment(self) -> list[str]:
        """Variables for an exec: libpq's PGHOST when the server is elsewhere (a host name,
        never a secret)."""
        return [f"PGHOST={self.host}"] if self.host else []

    def redis_args(self) -> list[str]:
        """redis-cli's arguments to reach the server (it has no variable for the host)."""
        return ["-h", self.host] if self.host else []


def service_host(service: str) -> str:
    """The DNS name of the service's tasks on its overlay networks."""
    return f"tasks.{service}"


def companion_name(service: str) -> str:
    return f"{PREFIX}{service}-{uuid.uuid4().hex[:8]}"


def companion_spec(service: str, target_spec: dict, node_id: str) -> dict:
    """Keyword arguments of services.create for a companion of `service` (its live spec
    `target_spec`) pinned to `node_id`."""
    template = target_spec["TaskTemplate"]
    container = template["ContainerSpec"]
    networks = [n["Target"] for n in template.get("Networks") or []]
    if not networks:
        raise EngineError(
            f"service {service} is on no overlay network, so nothing on another node can "
            "reach it. Deploy its stack again (invoke deploy), then retry."
        )
    return {
        "image": container["Image"],
        # The whole command: the image's entrypoint (which would start a server) is replaced.
        "command": ["sleep", str(LIFETIME)],
        "name": companion_name(service),
        "labels": {COMPANION_LABEL: service},
        "constraints": [f"node.id == {node_id}"],
        "networks": networks,
        "secrets": [dict(s) for s in container.get("Secrets") or []],
        "restart_policy": RestartPolicy(condition="none"),
        "stop_grace_period": 1_000_000_000,  # ns: the sleep ignores SIGTERM as PID 1
    }


def _created_at(attrs: dict) -> float:
    text = attrs.get("CreatedAt", "")[:19]
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return 0.0


def is_leftover(attrs: dict, task_states: list[str], now: float) -> bool:
    """A companion a previous run left: older than LIFETIME, or its sleep no longer runs."""
    if now - _created_at(attrs) > LIFETIME:
        return True
    return bool(task_states) and all(state in _FINISHED for state in task_states)


def remove_leftovers(client: docker.DockerClient) -> list[str]:
    """Remove companions left by runs that could not remove their own; their names."""
    removed = []
    now = time.time()
    for found in client.services.list(filters={"label": COMPANION_LABEL}):
        states = [t["Status"]["State"] for t in found.tasks()]
        if is_leftover(found.attrs, states, now):
            remove_service_quietly(client, found.name)
            removed.append(found.name)
    return removed


def _wait_running(client: docker.DockerClient, name: str, service: str, timeout: float):
    deadline = time.monotonic() + timeout
    states: list[str] = []
    while True:
        tasks = client.services.get(name).tasks()
        for task in tasks:
            status = task["Status"]
            container_id = (status.get("ContainerStatus") or {}).get("ContainerID")
            if status["State"] == "running" and container_id:
                return client.containers.get(container_id)
            if status["State"] in ("failed", "rejected"):
                raise EngineError(
                    f"the helper container that reaches {service} from this node failed "
                    f"({status.get('Err') or status['State']}). Check that {service}'s image "
                    "is on this node, then retry."
                )
        states = [t["Status"]["State"] for t in tasks]
        if time.monotonic() > deadline:
            raise EngineError(
                f"the helper container that reaches {service} from this node did not start "
                f"in {timeout:.0f} s (tasks: {', '.join(states) or 'none'}). Check "
                "`invoke swarm.status`, then retry."
            )
        time.sleep(0.3)


@contextlib.contextmanager
def reach(
    client: docker.DockerClient, service: str, timeout: float = START_TIMEOUT
) -> Iterator[Reach]:
    """Where to exec to work on `service`'s data: its task's container when it runs on this
    engine's node, else a companion here (removed on exit, whatever happens)."""
    container_id, _ = engine.running_task(client, service)
    if container_id:
        yield Reach(service, client.containers.get(container_id))
        return
    spec = companion_spec(
        service, client.api.inspect_service(service)["Spec"], node_id_here(client)
    )
    with _started(client, spec, service, timeout) as container:
        yield Reach(service, container, host=service_host(service), companion=spec["name"])


@contextlib.contextmanager
def pinned(
    client: docker.DockerClient,
    service: str,
    image: str,
    networks: list[str],
    timeout: float = START_TIMEOUT,
) -> Iterator[Reach]:
    """A companion on this node for work on `service` with another image than its own (one
    with the tools the work needs), on `networks`, with no secret; removed on exit. Other
    nodes reach it at tasks.<its name> (Reach.companion)."""
    target = {
        "TaskTemplate": {
            "ContainerSpec": {"Image": image},
            "Networks": [{"Target": network} for network in networks],
        }
    }
    spec = companion_spec(service, target, node_id_here(client))
    with _started(client, spec, service, timeout) as container:
        yield Reach(service, container, host=service_host(service), companion=spec["name"])


@contextlib.contextmanager
def _started(client: docker.DockerClient, spec: dict, service: str, timeout: float):
    remove_leftovers(client)
    client.services.create(**spec)
    try:
        yield _wait_running(client, spec["name"], service, timeout)
    finally:
        remove_service_quietly(client, spec["name"])
