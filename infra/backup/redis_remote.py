"""restore.env's Redis step when Redis runs on another node than this engine's.

Locally (restore.restore_redis) the data directory is moved aside and the backup's RDB
written as the base of a new append-only directory, Redis stopped meanwhile. Here neither
the directory nor the node's engine is in reach, so the same files are made on the data node
in three moves, the RDB never leaving the swarm's own channels:

1. the companion on this node (swarm/companion.py, the Redis image, the target's network and
   secrets), which already holds the backup's RDB, serves it with a temporary redis-server on
   TEMP_PORT that loads it (password: the target's own `requirepass` file, from its secret);
2. the target is scaled to 0 and waited for until its task stopped (its files are closed);
3. a one-off job on the data node (swarm/datadirs.run_job: the host's / mounted, the
   target's network and password secret) renames the directory aside, makes the new one
   with the old one's owner and mode, fetches the temporary server's snapshot with
   `redis-cli --rdb` straight into appendonlydir as the AOF base, and writes the AOF manifest.
   If any of that fails, the job puts the old directory back before it ends.

Redis is then scaled back and loads the AOF (appendonly on: only the AOF is read at start),
so once it answers with the backup's keys, they are in its files on its node. The previous
data is kept twice: the moved-aside directory on the node, and the before-restore backup.
Passwords are read from /run/secrets in each container, never in an argument or a
service's environment.
"""

from __future__ import annotations

import time

import docker

from infra import converge, engine
from infra.backup.containers import _exec
from infra.backup.manifest import BackupError, Report, stamp
from infra.swarm import datadirs
from infra.swarm.companion import Reach
from infra.swarm.placement import hostname

TEMP_PORT = 6390
DATA_TARGET = "/data"  # where the Redis image keeps its data (the stack's bind mount)
_STOPPED = {"complete", "failed", "rejected", "shutdown", "orphaned", "remove"}
_MANIFEST = "appendonly.aof.manifest"

# Runs in the job; $1 the data directory, $2 where it goes aside (both host paths), $3 and
# $4 the temporary server, $5 the AOF manifest. The trap is set only once the directory is
# aside, so a failure before that removes nothing.
_MOVE_AND_FETCH = (
    'set -e; d="/host$1"; aside="/host$2"; '
    'owner=$(stat -c %u:%g "$d"); mode=$(stat -c %a "$d"); '
    'mv "$d" "$aside"; '
    'trap \'if [ "$ok" != 1 ]; then rm -rf "$d"; mv "$aside" "$d"; '
    'echo "the previous data is back in place" >&2; fi\' EXIT; '
    'mkdir -m "$mode" "$d"; a="$d/appendonlydir"; mkdir -m 700 "$a"; '
    'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" '
    'redis-cli -h "$3" -p "$4" --rdb "$a/appendonly.aof.1.base.rdb" >&2; '
    ': > "$a/appendonly.aof.1.incr.aof"; '
    f'printf "%s" "$5" > "$a/{_MANIFEST}"; '
    'chmod 600 "$a"/*; chown -R "$owner" "$d"; ok=1; echo "moved aside $2"'
)
# In the companion: a Redis that loads the backup's RDB and writes nothing back.
_TEMP_SERVER = (
    'exec redis-server /run/secrets/redis_auth_conf --port "$1" --dir "$2" '
    "--dbfilename dump.rdb --appendonly no --save ''"
)
_REDIS_WRAPPER = (
    'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" && export REDISCLI_AUTH && exec "$0" "$@"'
)


def data_directory(spec: dict, service: str) -> str:
    """The host path of the service's data directory, on its node, from its live spec."""
    mounts = spec["TaskTemplate"]["ContainerSpec"].get("Mounts") or []
    for mount in mounts:
        if mount.get("Target") == DATA_TARGET and mount.get("Type") == "bind":
            return mount["Source"]
    raise BackupError(
        f"{service} has no data directory bind-mounted at {DATA_TARGET}. Deploy its stack "
        "again (invoke deploy.env), then retry."
    )


def job_command(data_dir: str, aside: str, server: str) -> list[str]:
    """The job's command: move `data_dir` to `aside`, fetch the RDB from `server`."""
    from infra.backup.restore import aof_base_files  # restore.py imports this module

    manifest = aof_base_files()[_MANIFEST].decode()
    return ["sh", "-c", _MOVE_AND_FETCH, "restore", data_dir, aside, server, str(TEMP_PORT),
            manifest]  # fmt: skip


def _password_secret(spec: dict, service: str) -> list[dict]:
    found = [
        s
        for s in spec["TaskTemplate"]["ContainerSpec"].get("Secrets") or []
        if s.get("File", {}).get("Name") == "redis_password"
    ]
    if not found:
        raise BackupError(
            f"{service} has no redis_password secret. Deploy its stack again, then retry."
        )
    return found


def _serve_rdb(client, companion: Reach, rdb_inside: str, timeout: float) -> None:
    """Start the temporary server in the companion and wait until it has loaded the RDB."""
    directory = rdb_inside.rsplit("/", 1)[0]
    exec_id = client.api.exec_create(
        companion.id, ["sh", "-c", _TEMP_SERVER, "sh", str(TEMP_PORT), directory]
    )["Id"]
    client.api.exec_start(exec_id, detach=True)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        code, out, err = _exec(
            client,
            companion,
            ["sh", "-c", _REDIS_WRAPPER, "redis-cli", "-p", str(TEMP_PORT), "DBSIZE"],
        )
        text = out.decode(errors="replace").strip()
        if code == 0 and text.split()[-1:] and text.split()[-1].isdigit():
            return
        last = (err or out).decode(errors="replace").strip() or "no answer"
        state = client.api.exec_inspect(exec_id)
        if not state.get("Running"):
            raise BackupError(
                f"the temporary Redis holding the backup stopped before it answered "
                f"({last}); nothing restored."
            )
        if time.monotonic() > deadline:
            raise BackupError(
                f"the temporary Redis holding the backup did not answer in {timeout:.0f} s "
                f"({last}); nothing restored."
            )
        time.sleep(0.3)


def _wait_stopped(client, service: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = [t["Status"]["State"] for t in client.services.get(service).tasks()]
        if all(state in _STOPPED for state in states):
            return
        if time.monotonic() > deadline:
            raise BackupError(f"{service} did not stop within {timeout:.0f} s; nothing restored.")
        time.sleep(0.5)


def restore_redis_remote(
    client: docker.DockerClient,
    companion: Reach,
    rdb_inside: str,
    report: Report = print,
    timeout: float = 300,
) -> str:
    """Replace the data of the Redis that `companion` reaches with the RDB at `rdb_inside`
    (a path in the companion). Returns where the previous data went, on which node."""
    from infra.backup.restore import scale  # restore.py imports this module

    service = companion.service
    attrs = client.api.inspect_service(service)
    spec = attrs["Spec"]
    data_dir = data_directory(spec, service)
    aside = f"{data_dir.rstrip('/').rsplit('/', 1)[0]}/redis.before-restore-{stamp()}"
    _, node_id = engine.running_task(client, service)
    node = client.nodes.get(node_id)
    where = f"{aside} on node {hostname(node)}"
    networks = [n["Target"] for n in spec["TaskTemplate"].get("Networks") or []]
    secret = _password_secret(spec, service)
    image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
    replicas = spec["Mode"]["Replicated"]["Replicas"]

    _serve_rdb(client, companion, rdb_inside, timeout)
    report(f"restore {service}: the backup's RDB is loaded in a temporary Redis on this node")
    report(f"restore {service}: stopping {service} (on node {hostname(node)})")
    scale(client, service, 0)
    try:
        _wait_stopped(client, service, timeout)
        datadirs.run_job(
            client,
            node,
            "redis-restore",
            image,
            job_command(data_dir, aside, f"tasks.{companion.companion}"),
            timeout=timeout,
            failed=lambda error: (
                f"restore {service}: replacing its files on node {hostname(node)} failed "
                f"({error}); its previous data stays in {data_dir} there."
            ),
            late=lambda states: (
                f"restore {service}: replacing its files on node {hostname(node)} did not "
                f"finish in {timeout:.0f} s (tasks: {states}). Check {data_dir} and "
                f"{aside} there."
            ),
            then=lambda *_: None,
            networks=networks,
            secrets=secret,
        )
        report(f"restore {service}: previous Redis data moved to {where}")
    finally:
        report(f"restore {service}: starting {service}")
        scale(client, service, replicas)
    # The temporary server ends with the companion.
    stack = service.rsplit("_", 1)[0]
    converge.wait_converged(client, stack, changed=set(), timeout=timeout, progress=report)
    return where
