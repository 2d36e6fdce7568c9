"""Data directories created on the node that holds them, when that is not this machine.

A deploy creates each data directory with the owner its image expects (DESIGN decision 5).
On a one-node swarm, or where the deploy runs on the data node itself, that is a plain mkdir
here. When the labelled node is another one (the deploy runs on a second manager, or from a
laptop whose DOCKER_HOST is a manager without the data), the directories are made there by a
one-off swarm job: a replicated job constrained to that node's id, with the host's / mounted,
running mkdir and chown on the paths given as arguments (paths only: no secret is involved),
removed once it completed. The job uses the Postgres image, which has a shell and coreutils and
is already on every node an environment runs on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

import docker
from docker.types import Mount, RestartPolicy, ServiceMode

from infra.engine import service_logs
from infra.errors import EngineError
from infra.swarm.placement import hostname, remove_service_quietly

JOB_LABEL = "com.nextcandle.job"
# Each directory: mkdir -p, then chown only if just created or wrongly owned; `$@` holds
# triples of path, uid, gid.
_SCRIPT = (
    'set -e; while [ "$#" -ge 3 ]; do d="/host$1"; '
    'if [ ! -d "$d" ]; then mkdir -p "$d"; chown "$2:$3" "$d"; echo "created $1"; fi; '
    "shift 3; done"
)


def create_on_node(
    client: docker.DockerClient,
    node,
    directories: Sequence,
    image: str,
    timeout: float = 120,
) -> list[str]:
    """Create `directories` (plan.DataDir) on `node`; the paths created there."""
    if not directories:
        return []
    args: list[str] = []
    for directory in directories:
        args += [str(directory.path), str(directory.uid), str(directory.gid)]
    service = run_job(
        client,
        node,
        "datadirs",
        image,
        ["sh", "-c", _SCRIPT, "datadirs", *args],
        timeout=timeout,
        failed=lambda error: (
            f"creating the data directories on node {hostname(node)} failed ({error}). "
            f"Create them there by hand (owners as `invoke deploy --dry-run` lists), "
            "then deploy again."
        ),
        late=lambda states: (
            f"creating the data directories on node {hostname(node)} did not finish in "
            f"{timeout:.0f} s (tasks: {states}). Check the node, then deploy again."
        ),
        then=_created,
    )
    return service


def run_job(
    client: docker.DockerClient,
    node,
    kind: str,
    image: str,
    command: Sequence[str],
    timeout: float,
    failed: Callable[[str], str],
    late: Callable[[str], str],
    then: Callable,
    networks: Sequence[str] = (),
    secrets: Sequence[dict] = (),
):
    """Run `command` once on `node`, with the host's / at /host, as a replicated job; `then`
    (client, service) gives the result once it completed. The job is removed afterwards,
    whatever happened; `failed` (the task's error) and `late` (the task states) give the
    line for an EngineError."""
    name = f"nextcandle-{kind}-{uuid.uuid4().hex[:8]}"
    service = client.services.create(
        image,
        command=list(command),
        name=name,
        labels={JOB_LABEL: kind},
        mode=ServiceMode("replicated-job", concurrency=1),
        constraints=[f"node.id == {node.id}"],
        mounts=[Mount(target="/host", source="/", type="bind")],
        restart_policy=RestartPolicy(condition="none"),
        networks=list(networks) or None,
        secrets=[dict(s) for s in secrets] or None,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            tasks = service.tasks()
            states = [t["Status"]["State"] for t in tasks]
            if "complete" in states:
                return then(client, service)
            failures = [t for t in tasks if t["Status"]["State"] in ("failed", "rejected")]
            if failures:
                error = failures[0]["Status"].get("Err", "") or failures[0]["Status"]["State"]
                raise EngineError(failed(error + _last_log_line(service)))
            if time.monotonic() > deadline:
                raise EngineError(late(", ".join(states) or "none"))
            time.sleep(0.5)
    finally:
        remove_service_quietly(client, name)


def _last_log_line(service) -> str:
    try:
        text = service_logs(service, stdout=True, stderr=True, tail=5).decode(errors="replace")
    except docker.errors.APIError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f": {lines[-1]}" if lines else ""


def _created(client: docker.DockerClient, service) -> list[str]:
    # The job's output: "created PATH" lines. Logs of a service need the engine to reach the
    # node's logs; a node that cannot answer only costs the report, not the directories.
    try:
        lines = service_logs(service, stdout=True, stderr=False).decode(errors="replace")
    except docker.errors.APIError:
        return []
    return [line.split(" ", 1)[1] for line in lines.splitlines() if line.startswith("created ")]
