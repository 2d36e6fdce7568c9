"""Wait until a stack's services have converged, and explain the ones that did not.

A service has converged when every task Swarm wants running is running (Swarm reports a task
with a health check as running only once it is healthy), their number equals the desired
count, and no update is in progress. Jobs have converged when they completed.
Polls, never sleeps blindly; the error lists each failing service with its task errors and
last log lines (DESIGN decision 4).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import docker
from docker.errors import APIError, NotFound

from infra.engine import STACK_NAMESPACE
from infra.errors import ConvergeError

# Where a failed update ends: paused, or rolled back (waited for: rollback_started is not yet).
FAILED_UPDATE_STATES = ("paused", "rollback_paused", "rollback_completed")
# wait_converged looks every POLL_FAST seconds for the first POLL_FAST_FOR, then every POLL_SLOW.
POLL_FAST, POLL_FAST_FOR, POLL_SLOW = 0.25, 60.0, 2.0


@dataclass(frozen=True)
class ServiceState:
    name: str
    mode: str  # replicated, global, replicated-job, global-job
    running: int
    desired: int
    update_state: str  # "" when no update has happened
    pending_tasks: int  # tasks Swarm wants running that are not running yet
    errors: tuple[str, ...] = field(default=())
    image: str = ""
    ports: tuple[str, ...] = field(default=())
    # Tasks Swarm still means to run: running, starting, or waiting out the restart delay
    # (desired state "ready"). None left on a service that should run means Swarm gave up.
    live_tasks: int = 0
    failed_tasks: int = 0  # tasks of its history that failed or were rejected

    @property
    def is_job(self) -> bool:
        return self.mode.endswith("job")

    @property
    def converged(self) -> bool:
        if self.update_state in (*FAILED_UPDATE_STATES, "updating", "rollback_started"):
            return False
        return self.settled

    @property
    def settled(self) -> bool:
        """Its tasks run as wanted, whatever an earlier update left in its update state."""
        if self.update_state in ("updating", "rollback_started"):
            return False
        if self.is_job:
            return self.pending_tasks == 0 and self.running >= self.desired
        return self.running == self.desired and self.pending_tasks == 0

    @property
    def missing_image(self) -> bool:
        """Never started because the engine cannot get its image (a fresh service only: during
        an update, Swarm's own failure action decides)."""
        return (
            not self.update_state
            and self.running == 0
            and len(self.errors) >= 3
            and all("No such image" in error for error in self.errors)
        )

    @property
    def gave_up(self) -> bool:
        """Swarm stopped retrying: fewer tasks run than wanted and none is left to start (a
        restart policy with max_attempts reached, or tasks it cannot place)."""
        return (
            not self.is_job
            and self.update_state not in ("updating", "rollback_started")
            and self.running < self.desired
            and self.live_tasks == 0
        )

    @property
    def health(self) -> str:
        """One word for the operator: ok, failed (rolled back), gave-up, retrying, starting."""
        if self.converged:
            return "ok"
        if self.rolled_back:
            return "failed"
        if self.gave_up:
            return "gave-up"
        if self.running < self.desired and self.errors:
            return "retrying"
        return "starting"

    @property
    def rolled_back(self) -> bool:
        return self.update_state.startswith("rollback")

    def summary(self) -> str:
        update = f", update {self.update_state}" if self.update_state else ""
        done = "completed" if self.is_job else "running"
        return f"{self.running}/{self.desired} {done}{update}"


def _mode(spec: dict) -> str:
    mode = spec.get("Mode", {})
    for key, name in (
        ("Replicated", "replicated"),
        ("Global", "global"),
        ("ReplicatedJob", "replicated-job"),
        ("GlobalJob", "global-job"),
    ):
        if key in mode:
            return name
    return "replicated"


def _ports(service_attrs: dict) -> tuple[str, ...]:
    ports = service_attrs.get("Spec", {}).get("EndpointSpec", {}).get("Ports", []) or []
    return tuple(
        f"{p.get('PublishedPort')}->{p.get('TargetPort')}/{p.get('Protocol', 'tcp')}"
        f" ({p.get('PublishMode', 'ingress')})"
        for p in ports
    )


def service_state(service) -> ServiceState:
    attrs = service.attrs
    spec = attrs["Spec"]
    mode = _mode(spec)
    status = attrs.get("ServiceStatus") or {}
    tasks = service.tasks()
    wanted = [t for t in tasks if t.get("DesiredState") == "running"]
    live = [t for t in tasks if t.get("DesiredState") in ("running", "ready")]
    # A task counts once it runs the service's current spec: right after an update, the old
    # tasks still run before Swarm reports the update as started.
    template = _comparable(spec["TaskTemplate"])
    running = [
        t
        for t in wanted
        if t["Status"]["State"] == "running" and _comparable(t.get("Spec", {})) == template
    ]
    if mode == "replicated":
        desired = spec["Mode"]["Replicated"].get("Replicas", 1)
    elif mode == "replicated-job":
        desired = spec["Mode"]["ReplicatedJob"].get("TotalCompletions", 1)
    else:
        desired = status.get("DesiredTasks", len(wanted))
    if mode.endswith("job"):
        completed = sum(1 for t in tasks if t["Status"]["State"] == "complete")
        running_count, pending = completed, len(wanted)
    else:
        running_count, pending = len(running), len(wanted) - len(running)
    errors = _recent_errors(tasks)
    image = spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@", 1)[0]
    return ServiceState(
        name=spec["Name"],
        mode=mode,
        running=running_count,
        desired=desired,
        update_state=(attrs.get("UpdateStatus") or {}).get("State", ""),
        pending_tasks=pending,
        errors=errors,
        image=image,
        ports=_ports(attrs),
        live_tasks=len(live),
        failed_tasks=sum(1 for t in tasks if t["Status"]["State"] in ("failed", "rejected")),
    )


def _comparable(task_spec: dict) -> dict:
    # Swarm fills Runtime in the service spec but not in the tasks made from it.
    return {key: value for key, value in task_spec.items() if key != "Runtime"}


def _recent_errors(tasks: list[dict], limit: int = 3) -> tuple[str, ...]:
    failed = [t for t in tasks if t["Status"].get("Err")]
    failed.sort(key=lambda t: t["Status"].get("Timestamp", ""), reverse=True)
    return tuple(f"{t['Status']['State']}: {t['Status']['Err']}" for t in failed[:limit])


def stack_states(client: docker.DockerClient, stack: str) -> list[ServiceState]:
    services = client.services.list(filters={"label": f"{STACK_NAMESPACE}={stack}"}, status=True)
    states = []
    for service in services:
        try:
            states.append(service_state(service))
        except (NotFound, APIError):  # removed while we looked
            continue
    return sorted(states, key=lambda s: s.name)


def poll_interval(elapsed: float) -> float:
    """Seconds until the next look: often while a deploy usually finishes (a poll costs one
    API call per service), then less often for the slow ones."""
    return POLL_FAST if elapsed < POLL_FAST_FOR else POLL_SLOW


def wait_converged(
    client: docker.DockerClient,
    stack: str,
    changed: set[str] | None = None,
    timeout: float = 300,
    progress: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[ServiceState]:
    """Poll until every service of `stack` has converged; raise ConvergeError on timeout or
    when an update of this deploy failed (paused or rolled back). `changed` names the
    services this deploy updated (None: all); the others may keep an old failed update state
    as long as their tasks run."""
    started = clock()
    deadline = started + timeout
    shown: dict[str, str] = {}
    while True:
        states = stack_states(client, stack)
        for state in states:
            line = state.summary()
            if shown.get(state.name) != line:
                shown[state.name] = line
                progress(f"  {state.name:<28} {line}")
        mine = [s for s in states if changed is None or s.name in changed]
        failed = [s for s in mine if s.update_state in FAILED_UPDATE_STATES]
        done = all(s.converged if s in mine else s.settled for s in states)
        if states and done and not failed:
            return states
        missing = [s for s in mine if s.missing_image]
        if missing:
            names = ", ".join(f"{s.name} ({s.image})" for s in missing)
            raise ConvergeError(
                f"stack {stack}: no node can get the image of {names}. Check the registry "
                "is reachable from the nodes, or point the image variable (stacks/images.env, "
                "IMAGES_FILE) at an image they have."
            )
        if failed or clock() >= deadline:
            unconverged = [s for s in states if not s.converged] or states
            raise ConvergeError(_failure_report(client, stack, unconverged, timeout, failed))
        sleep(poll_interval(clock() - started))


def _failure_report(client, stack, states, timeout, failed) -> str:
    names = ", ".join(s.name for s in states) or "(no services)"
    if failed:
        verdicts = [
            f"{s.name} was rolled back to its previous spec"
            if s.rolled_back
            else f"{s.name} update {s.update_state}"
            for s in failed
        ]
        head = f"stack {stack}: {'; '.join(verdicts)}."
    else:
        head = f"stack {stack} did not converge within {timeout:.0f} s: {names}."
    lines = [head]
    for state in states:
        lines.append(f"  {state.name}: {state.summary()}")
        lines += [f"    task error: {err}" for err in state.errors]
        lines += [f"    log: {line}" for line in service_log_tail(client, state.name)]
    lines.append(
        "See `invoke status -v` and `invoke logs --service=<name>`; raise --timeout if slow."
    )
    return "\n".join(lines)


def service_log_tail(client: docker.DockerClient, name: str, lines: int = 20) -> list[str]:
    try:
        service = client.services.get(name)
        raw = service.logs(stdout=True, stderr=True, tail=lines, timestamps=False)
        text = (
            b"".join(raw).decode(errors="replace") if not isinstance(raw, bytes) else raw.decode()
        )
    except (NotFound, APIError):
        return []
    return text.splitlines()[-lines:]


def wait_removed(
    client: docker.DockerClient,
    stack: str,
    timeout: float = 120,
    interval: float = 1,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """`docker stack rm` returns at once; wait until the stack's containers are gone."""
    deadline = clock() + timeout
    while True:
        services = client.services.list(filters={"label": f"{STACK_NAMESPACE}={stack}"})
        containers = client.containers.list(
            all=True, filters={"label": f"{STACK_NAMESPACE}={stack}"}
        )
        networks = client.networks.list(filters={"label": f"{STACK_NAMESPACE}={stack}"})
        if not services and not containers and not networks:
            return
        if clock() >= deadline:
            left = [c.name for c in containers] or [s.name for s in services]
            left = left or [n.name for n in networks]
            raise ConvergeError(
                f"stack {stack} was removed but {len(left)} of its objects are still there "
                f"after {timeout:.0f} s ({', '.join(left[:5])}). Check `docker ps` on each node."
            )
        time.sleep(interval)
