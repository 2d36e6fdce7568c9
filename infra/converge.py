"""Wait until a stack's services have converged, and explain the ones that did not.

A service has converged when every task Swarm wants running is running (Swarm reports a task
with a health check as running only once it is healthy), their number equals the desired
count, and no update is in progress. Jobs have converged when they completed.
Never sleeps blindly; the error lists each failing service with its task errors and last log
lines (DESIGN decision 4).

What a wait costs grows with what the deploy changed, not with services x seconds: it looks
closely only at the services this deploy changed (the others need only the final check), and
it looks when the engine's event stream says something happened to one of them (a service
update, a container of it started or became healthy on the node the engine runs) rather than
on a clock. It polls only for what events cannot tell: tasks on other nodes (every second),
images no node can get (tasks rejected before any container exists), and as a safety net:
2, 4, 8, then every 16 seconds. Every look costs two API calls (the stack's services,
then the tasks of the services looked at), whatever their number. The stream is read by a
thread, so a silent or broken stream never blocks the wait: it falls back to polling every
second.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import docker
from docker.errors import APIError, NotFound

from infra.engine import STACK_NAMESPACE
from infra.errors import ConvergeError

# Where a failed update ends: paused, or rolled back (waited for: rollback_started is not yet).
FAILED_UPDATE_STATES = ("paused", "rollback_paused", "rollback_completed")
# Seconds between looks that no event asked for: while tasks run on other nodes (no events
# from there) or the event stream is not available; and, with events, 2, 4, 8, then every 16
# seconds (tasks rejected before a container exists, e.g. a missing image, make no event).
# A look an event asked for counts as a poll when it covered every service still waited for;
# events never bring the back-off back to 2 s.
POLL_REMOTE = 1.0
POLL_WITHOUT_EVENTS = 1.0
POLL_QUIET = (2.0, 4.0, 8.0, 16.0)
# After the first event of a burst, how long to gather the rest before one look.
EVENT_GATHER = 0.15
# A container became healthy (or started, without a health check) but the manager does not
# yet report its task running: look again after these delays, then leave it to the polls.
FOLLOW_UPS = (0.25, 0.5, 1.0)
# Events are replayed from this many seconds before the wait (or its `since`), so nothing that
# happened between the deploy and the subscription is missed (a replayed event costs one look).
EVENT_REPLAY = 2.0
# The API calls a wait makes whatever changed: node id, event stream, the first look and the
# final check, a few quiet polls. The acceptance suite checks a deploy's wait stays within
# WAIT_CALLS_PER_CHANGED_SERVICE per changed service plus this.
WAIT_CONSTANT_CALLS = 12
WAIT_CALLS_PER_CHANGED_SERVICE = 10


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
    by_service: dict[str, list[dict]] = {service.id: [] for service in services}
    for task in tasks or []:
        by_service.setdefault(task.get("ServiceID", ""), []).append(task)
    states = []
    for service in services:
        try:
            states.append(service_state(service, by_service[service.id] if tasks else None))
        except (NotFound, APIError):  # removed while we looked
            continue
    return sorted(states, key=lambda s: s.name)


# --- the event stream


class EventStream:
    """The engine's service and container events, read by a thread into a queue: waiting for
    one always ends after its timeout, whatever the engine does (the SDK reads the stream
    with no timeout). Even the request is made by the thread."""

    def __init__(self, client: docker.DockerClient, since: float):
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._stream = None
        self._closed = False
        self.alive = True
        self._thread = threading.Thread(
            target=self._read, args=(client, since), name="engine-events", daemon=True
        )
        self._thread.start()

    def _read(self, client: docker.DockerClient, since: float) -> None:
        # Any end of the stream, an error included, means: poll from now on.
        with contextlib.suppress(Exception):
            stream = client.events(
                since=int(since), filters={"type": ["service", "container"]}, decode=True
            )
            with self._lock:
                self._stream = stream
                closed = self._closed
            if not closed:
                for event in stream:
                    self._queue.put(event)
            stream.close()
        self._queue.put(None)

    def next(self, timeout: float) -> list[dict] | None:
        """The events of the next burst: waits up to `timeout` for one, then EVENT_GATHER for
        the rest. [] when none came; None once the stream has ended."""
        if not self.alive:
            return None
        try:
            first = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return []
        burst = [first]
        gather_until = time.monotonic() + EVENT_GATHER
        while burst[-1] is not None:
            remaining = gather_until - time.monotonic()
            if remaining <= 0:
                break
            try:
                burst.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        if burst[-1] is None:
            self.alive = False
            burst.pop()
            return burst or None
        return burst

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()  # ends the thread's read at once
        self._thread.join(timeout=2)


def open_events(client: docker.DockerClient, since: float) -> EventStream:
    """The event stream from `since` (seconds since the epoch). If the engine gives none, its
    `next` answers None and the wait polls."""
    return EventStream(client, since)


def event_signal(
    event: dict, states: dict[str, ServiceState], watched: Collection[str]
) -> tuple[str, bool] | None:
    """(service, whether a task of it may just have become ready) for an event worth a look at
    a watched service, else None. Worth it: a service created or removed, or updated with a
    new update state, image or replica count; a container of it turning healthy, or starting
    when the service has no health check (with one, a start says nothing yet). Not worth it:
    health check runs (exec_*), stops, deaths (a failed update shows in the service's update
    state, a crash loop in the next poll) and every other container."""
    actor = (event.get("Actor") or {}).get("Attributes") or {}
    action = str(event.get("Action") or event.get("status") or "")
    if event.get("Type") == "service":
        name = actor.get("name", "")
        if name not in watched:
            return None
        # An update event carries updatestate.*, image.* or replicas.* only when those
        # changed (moby daemon/events.go); the others (the update's status message moving on
        # while Swarm works through it) change nothing a wait decides on.
        moved = any(key in actor for key in ("updatestate.new", "image.new", "replicas.new"))
        return (name, False) if action != "update" or moved else None
    if event.get("Type") != "container":
        return None
    name = actor.get("com.docker.swarm.service.name", "")
    if name not in watched:
        return None
    if action == "health_status: healthy":
        return name, True
    state = states.get(name)
    if action == "start" and not (state and state.health_checked):
        return name, True
    return None


# --- the wait


@dataclass
class Convergence:
    """The wait's logic, apart from the engine. `look(names)` gives the states of those
    services (None: the whole stack). `listen()`, called once after the first look if there
    is anything to watch, gives (this engine's node id, the event stream or None); the stream
    is anything with EventStream's `next(timeout)`. wait_converged wires both to the engine."""

    stack: str
    changed: set[str] | None
    timeout: float
    look: Callable[[Collection[str] | None], list[ServiceState]]
    listen: Callable[[], tuple[str, object | None]] = lambda: ("", None)
    progress: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    log_tail: Callable[[str], list[str]] = lambda _name: []
    states: dict[str, ServiceState] = field(default_factory=dict)
    events: object | None = None
    local_node: str = ""
    looks: int = 0
    _shown: dict[str, str] = field(default_factory=dict)

    def run(self) -> list[ServiceState]:
        deadline = self.clock() + self.timeout
        self._look(None)
        watched = self._watched()
        if watched:
            self.local_node, self.events = self.listen()
        follow_ups: dict[str, tuple[float, int]] = {}  # service -> (when, follow-ups so far)
        quiet = 0  # polls so far
        last_poll = self.clock()
        last_look = self.clock()
        whole = True  # the states come from one look at the whole stack, with nothing since
        while True:
            if self._done():
                if whole:
                    return sorted(self.states.values(), key=lambda s: s.name)
                self._look(None)  # the final check: every service, changed or not
                last_look, whole = self.clock(), True
                watched |= self._watched()
                continue
            self._check(deadline)
            next_poll = last_poll + self._poll_period(watched, quiet)
            next_follow_up = min((when for when, _ in follow_ups.values()), default=deadline)
            wake = min(next_poll, next_follow_up, deadline)
            touched: set[str] = set()
            ready: set[str] = set()
            for event in self._next_events(max(wake - self.clock(), 0.0)):
                signal = event_signal(event, self.states, watched)
                if signal:
                    touched.add(signal[0])
                    if signal[1]:
                        ready.add(signal[0])
            now = self.clock()
            due = {name for name, (when, _) in follow_ups.items() if when <= now}
            if touched or due:
                names = touched | due
                if names >= {n for n in watched if not self._converged(n)}:
                    last_poll = now
            elif now >= next_poll:
                # Nothing to watch yet (no service in the stack): the whole stack again.
                names = {n for n in watched if not self._converged(n)} or watched or None
                quiet += 1
                last_poll = now
            else:
                continue
            self._look(names)
            last_look, whole = self.clock(), names is None
            if names is None:
                watched |= self._watched()
                continue
            for name in names:
                previous = follow_ups.pop(name, None)
                if self._converged(name):
                    continue
                if not self._tasks_lag(name):
                    continue  # its tasks run: what it waits for (an update) makes events
                if name in ready:
                    follow_ups[name] = (last_look + FOLLOW_UPS[0], 1)
                elif previous and name not in due:
                    follow_ups[name] = previous  # looked at for another reason
                elif previous and previous[1] < len(FOLLOW_UPS):
                    step = previous[1]
                    follow_ups[name] = (last_look + FOLLOW_UPS[step], step + 1)

    def _next_events(self, timeout: float) -> list[dict]:
        if self.events is not None:
            burst = self.events.next(timeout)
            if burst is not None:
                return burst
            self.events = None  # the stream ended: poll from now on
            return []
        self.sleep(timeout)
        return []

    def _look(self, names: Collection[str] | None) -> None:
        self.looks += 1
        found = self.look(names)
        if names is None:
            self.states = {}
        else:
            for name in names:  # gone from the stack: removed by this deploy
                self.states.pop(name, None)
        for state in found:
            self.states[state.name] = state
            line = state.summary()
            if self._shown.get(state.name) != line:
                self._shown[state.name] = line
                self.progress(f"  {state.name:<28} {line}")

    def _tasks_lag(self, name: str) -> bool:
        """Fewer of its tasks run than should: the manager may not have heard yet."""
        state = self.states.get(name)
        return bool(state) and (state.running < state.desired or state.pending_tasks > 0)

    def _mine(self) -> list[ServiceState]:
        return [s for s in self.states.values() if self.changed is None or s.name in self.changed]

    def _watched(self) -> set[str]:
        """The changed services, and any other that does not run as it should."""
        return {s.name for s in self._mine()} | {
            s.name for s in self.states.values() if not s.settled
        }

    def _converged(self, name: str) -> bool:
        state = self.states.get(name)
        if state is None:
            return True  # removed
        mine = self.changed is None or name in self.changed
        return state.converged if mine else state.settled

    def _done(self) -> bool:
        failed = [s for s in self._mine() if s.update_state in FAILED_UPDATE_STATES]
        return bool(self.states) and not failed and all(self._converged(n) for n in self.states)

    def _poll_period(self, watched: set[str], quiet: int) -> float:
        if self.events is None:
            return POLL_WITHOUT_EVENTS
        for name in watched:
            state = self.states.get(name)
            # No events come from other nodes, nor for a task not placed yet ("").
            elsewhere = state and any(node != self.local_node for node in state.task_nodes)
            if elsewhere and not self._converged(name):
                return POLL_REMOTE
        return POLL_QUIET[min(quiet, len(POLL_QUIET) - 1)]

    def _check(self, deadline: float) -> None:
        mine = self._mine()
        missing = [s for s in mine if s.missing_image]
        if missing:
            names = ", ".join(f"{s.name} ({s.image})" for s in missing)
            raise ConvergeError(
                f"stack {self.stack}: no node can get the image of {names}. Check the registry "
                "is reachable from the nodes, or point the image variable (stacks/images.env, "
                "IMAGES_FILE) at an image they have."
            )
        failed = [s for s in mine if s.update_state in FAILED_UPDATE_STATES]
        if failed or self.clock() >= deadline:
            states = sorted(self.states.values(), key=lambda s: s.name)
            unconverged = [s for s in states if not s.converged] or states
            raise ConvergeError(
                _failure_report(self.stack, unconverged, self.timeout, failed, self.log_tail)
            )


def local_node_id(client: docker.DockerClient) -> str:
    return (client.info().get("Swarm") or {}).get("NodeID", "")


def wait_converged(
    client: docker.DockerClient,
    stack: str,
    changed: set[str] | None = None,
    timeout: float = 300,
    progress: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    since: float | None = None,
) -> list[ServiceState]:
    """Wait until every service of `stack` has converged; raise ConvergeError on timeout or
    when an update of this deploy failed (paused or rolled back). `changed` names the
    services this deploy updated (None: all): only they (and any other not running as it
    should) are watched; the others need only the final check and may keep an old failed
    update state as long as their tasks run. `since` (seconds since the epoch, taken before
    the deploy) is where the event stream starts; default: when the wait starts."""
    since = time.time() if since is None else since
    streams: list[EventStream] = []

    def listen() -> tuple[str, EventStream | None]:
        # Replayed from before the first look: nothing after it is missed.
        stream = open_events(client, since - EVENT_REPLAY)
        streams.append(stream)
        return local_node_id(client), stream

    convergence = Convergence(
        stack=stack,
        changed=changed,
        timeout=timeout,
        look=lambda names: stack_states(client, stack, names),
        listen=listen,
        progress=progress,
        clock=clock,
        sleep=sleep,
        log_tail=lambda name: service_log_tail(client, name),
    )
    try:
        return convergence.run()
    finally:
        for stream in streams:
            stream.close()


def _failure_report(stack, states, timeout, failed, log_tail) -> str:
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
        lines += [f"    log: {line}" for line in log_tail(state.name)]
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
        # Sparse: the list alone, no inspect of each container, which could be gone by then
        # (the engine removes them while we look).
        containers = client.containers.list(
            all=True, sparse=True, filters={"label": f"{STACK_NAMESPACE}={stack}"}
        )
        networks = client.networks.list(filters={"label": f"{STACK_NAMESPACE}={stack}"})
        if not services and not containers and not networks:
            return
        if clock() >= deadline:
            left = [(c.attrs.get("Names") or [c.id])[0].lstrip("/") for c in containers]
            left = left or [s.name for s in services]
            left = left or [n.name for n in networks]
            raise ConvergeError(
                f"stack {stack} was removed but {len(left)} of its objects are still there "
                f"after {timeout:.0f} s ({', '.join(left[:5])}). Check `docker ps` on each node."
            )
        time.sleep(interval)
