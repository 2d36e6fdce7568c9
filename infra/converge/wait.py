"""Waiting until a stack's services have converged (see the package's docstring), and until a
removed stack's containers are gone."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import docker
from docker.errors import APIError, NotFound

from infra.converge.events import EventStream, event_signal, open_events
from infra.converge.state import FAILED_UPDATE_STATES, ServiceState, stack_states
from infra.engine import STACK_NAMESPACE, service_logs
from infra.errors import ConvergeError

# Seconds between looks that no event asked for: while tasks run on other nodes (no events
# from there) or the event stream is not available; and, with events, 2, 4, 8, then every 16
# seconds (tasks rejected before a container exists, e.g. a missing image, make no event).
# A look an event asked for counts as a poll when it covered every service still waited for;
# events never bring the back-off back to 2 s.
POLL_REMOTE = 1.0
POLL_WITHOUT_EVENTS = 1.0
POLL_QUIET = (2.0, 4.0, 8.0, 16.0)
# A container became healthy (or started, without a health check) but the manager does not
# yet report its task running: look again after these delays, then leave it to the polls.
FOLLOW_UPS = (0.1, 0.25, 0.5, 1.0)
# Events are replayed from this many seconds before the wait (or its `since`), so nothing that
# happened between the deploy and the subscription is missed (a replayed event costs one look).
EVENT_REPLAY = 2.0
# The API calls a wait makes whatever changed: node id, event stream, the first look and the
# final check, a few quiet polls. The acceptance suite checks a deploy's wait stays within
# WAIT_CALLS_PER_CHANGED_SERVICE per changed service plus this.
WAIT_CONSTANT_CALLS = 12
WAIT_CALLS_PER_CHANGED_SERVICE = 10


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
        # A stack whose changed services already run (deployed together with one waited on
        # before it) is done with this one look: no stream to open and close.
        if watched and not self._done():
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
        text = service_logs(service, stdout=True, stderr=True, tail=lines).decode(errors="replace")
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
