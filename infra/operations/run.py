"""The frame every mutating task runs in: take the deploy lock, look at the services, run the
operation, look again, append the history record, give the lock back."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import docker
from docker.errors import DockerException

from infra import engine
from infra.errors import InfraError
from infra.operations import config, history, lock
from infra.settings import Settings

Report = Callable[[str], None]


@dataclass
class Operation:
    client: docker.DockerClient
    record: history.Record
    holder: lock.Holder | None = None  # None: no swarm yet, so nobody to share a lock with
    # The stacks it applied, rendered (deploy.DeployResult.rendered): kept in the record
    # when the operation succeeded, for a later rollback.
    stacks: dict[str, dict] = field(default_factory=dict)


def result_of(exc: BaseException | None) -> str:
    if exc is None:
        return history.OK
    if isinstance(exc, KeyboardInterrupt):
        return "failed: interrupted"
    if isinstance(exc, InfraError):
        return f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@contextmanager
def operation(
    settings: Settings,
    action: str,
    target: str,
    command: str,
    lock_wait: float = 0.0,
    message: str = "",
    client: docker.DockerClient | None = None,
    report: Report = print,
) -> Iterator[Operation]:
    """Run the block holding the deploy lock and record it in the history.

    On an engine whose swarm is not active yet (the first deploy initialises it) there is no
    lock to take: nobody else can be operating that swarm."""
    ttl = config.number(settings.values, "DEPLOY_LOCK_TTL")
    keep = config.number(settings.values, "HISTORY_KEEP")
    client = client or engine.connect(settings.docker_host)
    state, manager = engine.swarm_state(client)
    active = state == "active"
    if active and not manager:
        engine.require_manager(client)
    holder = lock.Holder(lock.whoami(), command, message, ttl, os.getpid())
    record = history.new_record(holder.who, command, action, target, message)
    guard = lock.held(client, holder, lock_wait, report) if active else nullcontext(None)
    with guard as taken:
        op = Operation(client, record, taken)
        before = history.snapshot(client) if active else {}
        failure: BaseException | None = None
        try:
            yield op
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _record(client, op, before, result_of(failure), keep, report)


def _record(client, op: Operation, before: dict, result: str, keep: int, report: Report) -> None:
    """Append the record; a failure to record is reported, never hides the operation's own
    result."""
    record = op.record
    record.result = result
    try:
        if engine.swarm_state(client)[0] != "active":
            return
        record.services = history.changes(before, history.snapshot(client))
        if record.ok:
            record.stacks = {name: history.re_applicable(r) for name, r in op.stacks.items()}
        stored = history.append(client, record, keep)
    except (InfraError, DockerException) as exc:
        report(f"warning: the history record of this {record.action} was not stored ({exc})")
        return
    report(
        f"history: #{stored.seq} {record.action} {record.target}: {record.result}, "
        f"{len(record.services)} services changed"
    )
