"""Stack rollback: re-apply a stack as a recorded deploy left it (Swarm has none of its own,
docker/cli#595).

The record keeps the stack rendered, with its configs and secrets by name (history.py);
deploy.py keeps those versions for the last ROLLBACK_KEEP recorded deploys instead of
pruning them. A rollback deploys that rendered stack through the same path as a deploy
(`deploy.deploy_rendered`): only services whose definition differs from what runs are
updated, then it waits for convergence. Data directories and volumes are never touched.

Secrets: a rotation changes a value where the service keeps its own copy too (Postgres's
ALTER ROLE), and putting an older secret version back would not change that copy: a
rollback that would bring back an older secret refuses unless told `with_secrets`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import docker

from infra import converge, deploy, engine
from infra.errors import InfraError
from infra.operations import diff, history
from infra.plan import LABEL_SPEC_HASH, StackPlan
from infra.settings import Settings

Report = Callable[[str], None]


class RollbackError(InfraError):
    """No recorded deploy to go back to, or what it needs is gone."""


@dataclass
class Rollback:
    record: history.Record  # the deploy rolled back to
    rendered: dict
    diffs: list[diff.ServiceDiff] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def _hashes(stack: str, rendered: dict) -> dict[str, str]:
    return {
        f"{stack}_{name}": service["deploy"]["labels"][LABEL_SPEC_HASH]
        for name, service in rendered["services"].items()
    }


def choose(records: list[history.Record], stack: str, live: dict[str, str], to: int = 0):
    """The record to go back to: number `to`, or the newest recorded deploy of the stack
    whose services differ from what runs now (after a rollback, the next one undoes it;
    --to=N goes further back)."""
    candidates = history.re_applicable_records(records, stack)
    numbers = ", ".join(f"#{r.seq}" for r in candidates) or "none"
    if to:
        for record in candidates:
            if record.seq == to:
                return record
        raise RollbackError(
            f"history record #{to} is not a successful deploy of {stack} that the swarm still "
            f"keeps. Deploys of {stack} to roll back to: {numbers} (invoke history --name={stack})."
        )
    for record in candidates:
        if _hashes(stack, record.stacks[stack]) != live:
            return record
    raise RollbackError(
        f"no recorded deploy of {stack} differs from what runs now (recorded: {numbers}). "
        f"See invoke history --name={stack}."
    )


def plan(
    settings: Settings, stack: str, to: int = 0, client: docker.DockerClient | None = None
) -> Rollback:
    """Which record, and what re-applying it changes. Reads only."""
    client = client or engine.connect(settings.docker_host)
    engine.require_manager(client)
    live = {
        service.name: (service.attrs["Spec"].get("Labels") or {}).get(LABEL_SPEC_HASH, "")
        for service in engine.stack_services(client, stack)
    }
    record = choose(history.read(client), stack, live, to)
    rendered = record.stacks[stack]
    existing = {c.name for c in client.configs.list()} | {s.name for s in client.secrets.list()}
    missing = sorted(history.object_names(rendered) - existing)
    if missing:
        raise RollbackError(
            f"rollback to #{record.seq} needs {', '.join(missing)}, no longer in the swarm "
            f"(ROLLBACK_KEEP={deploy.rollback_keep(settings)} keeps the versions of that many "
            f"recorded deploys; `stop --cleanup` removes them). Choose a later one: "
            f"invoke history --name={stack}"
        )
    return Rollback(record, rendered, diff.diff_stack(client, stack, rendered))


def secrets_changing(rollback: Rollback) -> list[str]:
    return sorted(
        {
            change.split(" ")[1]
            for service in rollback.diffs
            for change in service.changes
            if change.startswith("secret ")
        }
    )


def apply(
    settings: Settings,
    stack: str,
    to: int = 0,
    with_secrets: bool = False,
    timeout: float = 300,
    report: Report = print,
    client: docker.DockerClient | None = None,
) -> Rollback:
    """Re-apply the recorded stack and wait until it converged."""
    client = client or engine.connect(settings.docker_host)
    rollback = plan(settings, stack, to, client)
    secrets = secrets_changing(rollback)
    if secrets and not with_secrets:
        raise RollbackError(
            f"rollback to #{rollback.record.seq} would bring back older versions of "
            f"{', '.join(secrets)}; a database keeps the password it was given since. Roll "
            "back with --with-secrets only if no rotation came in between."
        )
    report(
        f"rollback {stack}: to #{rollback.record.seq} ({rollback.record.command}, "
        f"{history.clock(rollback.record.time)})"
    )
    target = StackPlan(
        name=stack,
        files=(),
        variables=settings.engine_variables(),
        secrets=(),
        configs=(),
        data_dirs=(),
        ports={},
        resolve_image=settings.get("RESOLVE_IMAGE") or "changed",
    )
    since = time.time()
    rollback.changed = deploy.deploy_rendered(client, target, rollback.rendered, report)
    converge.wait_converged(
        client, stack, changed=set(rollback.changed), timeout=timeout, progress=report, since=since
    )
    report(f"rollback {stack}: converged, {len(rollback.changed)} services changed")
    return rollback
