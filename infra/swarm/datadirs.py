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
from collections.abc import Sequence

import docker
from docker.types import Mount, RestartPolicy, ServiceMode

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
    name = f"nextcandle-datadirs-{uuid.uuid4().hex[:8]}"
    service = client.services.create(
        image,
        command=["sh", "-c", _SCRIPT, "datadirs", *args],
        name=name,
        labels={JOB_LABEL: "datadirs"},
        mode=ServiceMode("replicated-job", concurrency=1),
        constraints=[f"node.id == {node.id}"],
        mounts=[Mount(target="/host", source="/", type="bind")],
        restart_policy=RestartPolicy(condition="none"),
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            tasks = service.tasks()
            states = [t["Status"]["State"] for t in tasks]
            if "complete" in states:
                return _created(client, service)
            failed = [t for t in tasks if t["Status"]["State"] in ("failed", "rejected")]
            if failed:
                error = failed[0]["Status"].get("Err", "") or failed[0]["Status"]["State"]
                raise EngineError(
                    f"creating the data directories on node {hostname(node)} failed ({error}). "
                    f"Create them there by hand (owners as `invoke deploy --dry-run` lists), "
                    "then deploy again."
                )
            if time.monotonic() > deadline:
                raise EngineError(
                    f"creating the data directories on node {hostname(node)} did not finish in "
                    f"{timeout:.0f} s (tasks: {', '.join(states) or 'none'}). Check the node, "
                    "then deploy again."
                )
            time.sleep(0.5)
    finally:
        remove_service_quietly(client, name)


def _created(client: docker.DockerClient, service) -> list[str]:
    # The job's output: "created PATH" lines. Logs of a service need the engine to reach the
    # node's logs; a node that cannot answer only costs the report, not the directories.
    try:
        lines = b"".join(service.logs(stdout=True, stderr=False)).decode(errors="replace")
    except docker.errors.APIError:
        return []
    return [line.split(" ", 1)[1] for line in lines.splitlines() if line.startswith("created ")]
