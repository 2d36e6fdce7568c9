"""The Docker engine, through the docker SDK: swarm, networks, secrets, services, tasks.

Get-or-create everywhere, matching names exactly (the API's name filter is a prefix match).
The `docker` CLI is used only for what the SDK cannot do: `docker stack deploy|config|rm`.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import docker
from docker.errors import APIError, DockerException, NotFound

from infra.errors import EngineError
from infra.labels import LABEL_STACK, STACK_NAMESPACE
from infra.targets import SwarmNode

if TYPE_CHECKING:  # the planner (and with it the secrets) only where a deploy needs it
    from infra.plan import DockerObject

__all__ = ["STACK_NAMESPACE"]


def connect(docker_host: str = "") -> docker.DockerClient:
    """A client of the engine at `docker_host` (the DOCKER_HOST setting), else the default."""
    host = docker_host or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        # Asks the engine its API version (no ping needed: an engine that does not answer
        # fails here).
        client = docker.DockerClient(base_url=host, timeout=120)
    except DockerException as exc:
        reason = str(exc).split("(", 1)[0].strip() or type(exc).__name__
        raise EngineError(
            f"Docker is not reachable at {host} ({reason}). "
            "Start the Docker daemon (or set DOCKER_HOST) and retry."
        ) from None
    return client


# Health checks' start_interval is honoured from this API version (Docker 25) on.
START_INTERVAL_API = (1, 44)


def api_version(client: docker.DockerClient) -> tuple[int, int]:
    """The newest API version the engine speaks (not the one this client pinned)."""
    text = str(client.version().get("ApiVersion") or "0.0")
    major, _, minor = text.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return (0, 0)


def start_interval_warning(version: tuple[int, int]) -> str:
    """One line for an engine that ignores start_interval (it still works, only slower), or
    "" for one that honours it."""
    if version >= START_INTERVAL_API:
        return ""
    have = ".".join(map(str, version))
    need = ".".join(map(str, START_INTERVAL_API))
    return (
        f"warning: the Docker engine speaks API {have}, older than {need} (Docker 25): health "
        "checks ignore start_interval, so services take up to one interval longer to become "
        "healthy. Upgrade Docker to 25 or later for fast deploys."
    )


def swarm_state(client: docker.DockerClient, info: dict | None = None) -> tuple[str, bool]:
    """(LocalNodeState, whether this node is a manager), from `info` (the engine's, read
    already) when given."""
    swarm = (client.info() if info is None else info).get("Swarm", {})
    return swarm.get("LocalNodeState", "inactive"), bool(swarm.get("ControlAvailable"))


def ensure_swarm(client: docker.DockerClient, advertise_addr: str = "") -> bool:
    """Initialise a single-node swarm if the engine is in none. Returns True if it did."""
    state, manager = swarm_state(client)
    if state == "active":
        if not manager:
            raise EngineError(
                "this Docker engine is a swarm worker, not a manager. "
                "Run the command on a manager node (see `docker node ls` there)."
            )
        return False
    if state != "inactive":
        raise EngineError(
            f"the swarm on this engine is {state}. "
            "Fix it with `docker swarm` (e.g. unlock) and retry."
        )
    try:
        client.swarm.init(advertise_addr=advertise_addr or None)
    except APIError as exc:
        raise EngineError(
            f"docker swarm init failed: {exc.explanation}. "
            "Set SWARM_ADVERTISE_ADDR in .env to this node's address and retry."
        ) from None
    return True


def require_manager(client: docker.DockerClient) -> None:
    state, manager = swarm_state(client)
    if state != "active":
        raise EngineError("this Docker engine is not in a swarm. Run: invoke swarm.init")
    if not manager:
        raise EngineError(
            "this Docker engine is a swarm worker, not a manager. Run the command on a manager."
        )


def ensure_network(client: docker.DockerClient, name: str) -> bool:
    """An attachable overlay network of this exact name. Returns True if it was created."""
    for network in client.networks.list(names=[name]):
        if network.name != name:
            continue
        driver = network.attrs.get("Driver")
        if driver != "overlay":
            raise EngineError(
                f"network {name} exists with driver {driver}, not overlay. "
                f"Remove it (docker network rm {name}) and retry."
            )
        return False
    client.networks.create(
        name, driver="overlay", attachable=True, scope="swarm", labels={LABEL_STACK: "platform"}
    )
    return True


def existing_secret_names(client: docker.DockerClient) -> set[str]:
    return {secret.name for secret in client.secrets.list()}


def existing_config_names(client: docker.DockerClient) -> set[str]:
    return {config.name for config in client.configs.list()}


def ensure_secret(
    client: docker.DockerClient, obj: DockerObject, existing: Collection[str] | None = None
) -> bool:
    """Create a content-named secret unless it exists (in `existing`, the names read once for
    many, when given). Returns True if it was created."""
    if existing is None:
        existing = {s.name for s in client.secrets.list(filters={"name": obj.name})}
    if obj.name in existing:
        return False
    try:
        client.secrets.create(name=obj.name, data=obj.data, labels=obj.labels)
    except APIError as exc:
        if exc.status_code == 409:  # created meanwhile by another deploy: same content
            return False
        raise EngineError(f"creating secret {obj.name} failed: {exc.explanation}") from None
    return True


def ensure_config(
    client: docker.DockerClient, obj: DockerObject, existing: Collection[str] | None = None
) -> bool:
    """Create a content-named config infra generated, unless it exists (in `existing`, when
    given). It carries the stack label `docker stack deploy` puts on the configs it creates,
    so it is pruned like them. Returns True if it was created."""
    if existing is None:
        existing = {c.name for c in client.configs.list(filters={"name": obj.name})}
    if obj.name in existing:
        return False
    try:
        client.configs.create(
            name=obj.name, data=obj.data, labels={**obj.labels, STACK_NAMESPACE: obj.stack}
        )
    except APIError as exc:
        if exc.status_code == 409:  # created meanwhile by another deploy: same content
            return False
        raise EngineError(f"creating config {obj.name} failed: {exc.explanation}") from None
    return True


def swarm_nodes(client: docker.DockerClient) -> list[SwarmNode]:
    """The swarm's nodes, as the plan needs them (a manager's view)."""
    return [SwarmNode.from_api(node.attrs) for node in client.nodes.list()]


def stack_services(client: docker.DockerClient, stack: str, status: bool = False) -> list:
    """The stack's services; with `status`, each carries ServiceStatus (running and desired
    task counts) at no extra API call."""
    return client.services.list(filters={"label": f"{STACK_NAMESPACE}={stack}"}, status=status)


def deployed_stacks(client: docker.DockerClient) -> set[str]:
    return {
        service.attrs["Spec"].get("Labels", {}).get(STACK_NAMESPACE, "")
        for service in client.services.list()
    } - {""}


def docker_cli(
    args: Sequence[str],
    variables: Mapping[str, str] | None = None,
    check: bool = True,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI with stack variables in its environment (never secret values)."""
    env = {**os.environ, **(variables or {})}
    try:
        result = subprocess.run(
            list(args), env=env, input=stdin, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise EngineError(
            "the docker command is not installed. Install the Docker CLI and retry."
        ) from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise EngineError(f"{' '.join(args[:3])} failed: {detail[-1] if detail else 'no output'}")
    return result


def render_stack(files: Sequence[str], variables: Mapping[str, str]) -> dict:
    """The stack as `docker stack deploy` would see it: `docker stack config`, client-side."""
    command = ["docker", "stack", "config"]
    for path in files:
        command += ["-c", str(path)]
    from infra.plan import load_yaml

    result = docker_cli(command, variables)
    return load_yaml(result.stdout)


def running_task(client: docker.DockerClient, service: str) -> tuple[str, str]:
    """(the container id of `service`'s running task when it is on this engine's node, else
    ""; the node it runs on)."""
    try:
        tasks = client.services.get(service).tasks(filters={"desired-state": "running"})
    except NotFound:
        raise EngineError(
            f"service {service} is not deployed. Deploy its stack first, then retry."
        ) from None
    running = [task for task in tasks if task["Status"].get("State") == "running"]
    if not running:
        raise EngineError(
            f"service {service} has no running task. Check `invoke status -v`, then retry."
        )
    here = client.info().get("Swarm", {}).get("NodeID")
    for task in running:
        if task.get("NodeID") == here:
            return task["Status"]["ContainerStatus"]["ContainerID"], here
    return "", running[0]["NodeID"]


def running_container(client: docker.DockerClient, service: str) -> str:
    """The id of `service`'s running container, which must be on this engine's node (exec
    reaches only the engine it talks to). Data operations use swarm.companion.reach, which
    also reaches a task on another node."""
    container, node_id = running_task(client, service)
    if container:
        return container
    node = client.nodes.get(node_id).attrs["Description"]["Hostname"]
    raise EngineError(
        f"service {service} runs on node {node}, not on the engine at DOCKER_HOST. "
        f"Point DOCKER_HOST at {node}'s engine (a manager) and retry."
    )


def exec_with_stdin(
    client: docker.DockerClient,
    container: str,
    command: Sequence[str],
    stdin: bytes,
    user: str = "",
) -> tuple[int, str, str]:
    """Run `command` in a container with `stdin` on its standard input, through the exec API's
    hijacked socket: what it reads (a password, say) is in no argument, variable or log.
    Returns (exit code, stdout, stderr)."""
    from docker.utils.socket import frames_iter

    api = client.api
    created = api.exec_create(
        container, list(command), stdin=True, stdout=True, stderr=True, user=user
    )
    sock = api.exec_start(created["Id"], socket=True)
    raw = getattr(sock, "_sock", sock)
    try:
        raw.sendall(stdin)
        raw.shutdown(socket.SHUT_WR)  # end of input: the command sees EOF
        out: dict[int, bytes] = {1: b"", 2: b""}
        for stream, data in frames_iter(sock, tty=False):
            out[stream] = out.get(stream, b"") + data
    finally:
        sock.close()
    exit_code = None
    # The stream ends as the process exits; its state follows shortly, mostly within a few
    # milliseconds: asked again soon at first, then every 0.1 s, for some 5 s in all.
    for delay in (0.005, 0.01, 0.02, 0.05, *[0.1] * 49):
        state = api.exec_inspect(created["Id"])
        exit_code = state.get("ExitCode")
        if not state.get("Running") and exit_code is not None:
            break
        time.sleep(delay)
    return (
        -1 if exit_code is None else exit_code,
        out[1].decode(errors="replace"),
        out[2].decode(errors="replace"),
    )


def update_service_spec(
    client: docker.DockerClient,
    service: str,
    mode: dict | None = None,
    task_template: dict | None = None,
) -> None:
    """Give the live spec back to the engine with only `mode` or `task_template` replaced.

    The SDK's Service.scale and Service.update rebuild parts of the spec from their own
    defaults, which would differ from what the deploy made; this changes nothing else."""
    attrs = client.api.inspect_service(service)
    spec = attrs["Spec"]
    client.api.update_service(
        attrs["ID"],
        attrs["Version"]["Index"],
        task_template=task_template or spec["TaskTemplate"],
        name=spec["Name"],
        labels=spec.get("Labels"),
        mode=mode or spec["Mode"],
        update_config=spec.get("UpdateConfig"),
        rollback_config=spec.get("RollbackConfig"),
        endpoint_spec=spec.get("EndpointSpec"),
    )


def restart_service(client: docker.DockerClient, service: str) -> None:
    """New tasks for the service, its spec otherwise unchanged (`docker service update
    --force`)."""
    template = client.api.inspect_service(service)["Spec"]["TaskTemplate"]
    template = {**template, "ForceUpdate": int(template.get("ForceUpdate", 0)) + 1}
    update_service_spec(client, service, task_template=template)


# Without follow, the engine sends a service's logs at once and ends the stream, but Swarm's
# log broker sometimes never ends it (docker/cli#4678, moby#38640), and the SDK reads streams
# with no socket timeout: a read of logs that are not followed ends after this much silence.
LOG_IDLE_SECONDS = 10.0
_END = object()


def until_idle(stream: Iterable[bytes], idle: float = LOG_IDLE_SECONDS) -> Iterator[bytes | None]:
    """The stream's chunks, then None if it went silent for `idle` seconds before its end
    (it is read by a daemon thread, left behind if the stream never ends)."""
    chunks: queue.Queue = queue.Queue()

    def pump() -> None:
        try:
            for chunk in stream:
                chunks.put(chunk)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, raised there
            chunks.put(exc)
        chunks.put(_END)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            item = chunks.get(timeout=idle)
        except queue.Empty:
            yield None
            return
        if item is _END:
            return
        if isinstance(item, Exception):
            raise item
        yield item


def service_logs(service, idle: float = LOG_IDLE_SECONDS, **options) -> bytes:
    """A service's logs, not followed (`options` as the SDK's Service.logs): what the engine
    sent until the stream ended, or until it went silent for `idle` seconds without ending."""
    return b"".join(c for c in until_idle(service.logs(**options), idle) if c is not None)
