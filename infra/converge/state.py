"""The state of a service as a deploy's wait and `invoke status` see it: running and desired
tasks, update state, recent task errors, and whether Swarm still means to start it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import docker
from docker.errors import APIError, NotFound

from infra.engine import STACK_NAMESPACE

# Where a failed update ends: paused, or rolled back (waited for: rollback_started is not yet).
FAILED_UPDATE_STATES = ("paused", "rollback_paused", "rollback_completed")


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
    # The nodes of the tasks Swarm wants running ("" for one not placed yet).
    task_nodes: tuple[str, ...] = field(default=())
    health_checked: bool = False  # its spec has a health check: running means healthy

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
        """One word for the operator: ok, gave-up, retrying, failed, rolled-back, starting.

        What its tasks do now comes before what its last update did: a service whose update
        rolled back long ago and whose tasks now fail is retrying (or gave up), and once they
        run again it is rolled-back (serving its previous spec), not "failed"; "failed" is an
        update that Swarm paused or is still rolling back.
        """
        if self.converged:
            return "ok"
        if self.gave_up:
            return "gave-up"
        if self.running < self.desired and self.errors:
            return "retrying"
        if self.update_state == "rollback_completed" and self.settled:
            return "rolled-back"
        if self.rolled_back or self.update_state == "paused":
            return "failed"
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


def service_state(service, tasks: list[dict] | None = None) -> ServiceState:
    """The state of a service (an SDK Service); `tasks` are its tasks if already read, else
    they are read (one API call)."""
    attrs = service.attrs
    spec = attrs["Spec"]
    mode = _mode(spec)
    status = attrs.get("ServiceStatus") or {}
    if tasks is None:
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
        task_nodes=tuple(t.get("NodeID", "") for t in wanted),
        health_checked=_health_checked(spec["TaskTemplate"]["ContainerSpec"]),
    )


def _health_checked(container_spec: dict) -> bool:
    test = (container_spec.get("Healthcheck") or {}).get("Test") or []
    return bool(test) and test[0] != "NONE"


def _comparable(task_spec: dict) -> dict:
    # Swarm fills Runtime in the service spec but not in the tasks made from it.
    return {key: value for key, value in task_spec.items() if key != "Runtime"}


def _recent_errors(tasks: list[dict], limit: int = 3) -> tuple[str, ...]:
    failed = [t for t in tasks if t["Status"].get("Err")]
    failed.sort(key=lambda t: t["Status"].get("Timestamp", ""), reverse=True)
    return tuple(f"{t['Status']['State']}: {t['Status']['Err']}" for t in failed[:limit])


def stack_states(
    client: docker.DockerClient, stack: str, names: Collection[str] | None = None
) -> list[ServiceState]:
    """The states of a stack's services (only those in `names`, if given), in two API calls
    whatever their number: the stack's services, then the tasks of those looked at."""
    services = client.services.list(filters={"label": f"{STACK_NAMESPACE}={stack}"}, status=True)
    if names is not None:
        services = [service for service in services if service.name in names]
    if not services:
        return []
    try:
        tasks = client.api.tasks(filters={"service": [service.id for service in services]})
    except NotFound:  # one was removed meanwhile: ask service by service
        tasks = None
    return _states(services, tasks)


def platform_states(
    client: docker.DockerClient, services: list | None = None
) -> dict[str, list[ServiceState]]:
    """The states of every deployed stack's services, by stack, in two API calls whatever
    the number of stacks and services: every service (unless `services`, every service read
    with status=True, is given), then every task."""
    if services is None:
        services = client.services.list(status=True)
    services = [
        service
        for service in services
        if (service.attrs["Spec"].get("Labels") or {}).get(STACK_NAMESPACE)
    ]
    if not services:
        return {}
    tasks = client.api.tasks()
    stack_of = {s.name: s.attrs["Spec"]["Labels"][STACK_NAMESPACE] for s in services}
    by_stack: dict[str, list[ServiceState]] = {}
    for state in _states(services, tasks):
        by_stack.setdefault(stack_of[state.name], []).append(state)
    return by_stack


def _states(services: list, tasks: list[dict] | None) -> list[ServiceState]:
    """The services' states from their tasks read at once (None: read service by service)."""
    by_service: dict[str, list[dict]] = {service.id: [] for service in services}
    for task in tasks or []:
        by_service.setdefault(task.get("ServiceID", ""), []).append(task)
    states = []
    for service in services:
        try:
            states.append(
                service_state(service, by_service[service.id] if tasks is not None else None)
            )
        except (NotFound, APIError):  # removed while we looked
            continue
    return sorted(states, key=lambda s: s.name)
