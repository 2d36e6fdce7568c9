"""The engine's event stream, read by a thread so that waiting on it always ends, and which
of its events are worth a look."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Collection

import docker

from infra.converge.state import ServiceState

# After the first event of a burst, the rest are gathered before one look: for as long as the
# next comes within EVENT_QUIET (the events of one action arrive milliseconds apart), at most
# EVENT_GATHER in all. A lone event (a container turning healthy) is looked at after
# EVENT_QUIET, not after the whole EVENT_GATHER: often the last a deploy waits for.
EVENT_GATHER = 0.15
EVENT_QUIET = 0.04


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
        """The events of the next burst: waits up to `timeout` for one, then gathers those
        that follow within EVENT_QUIET of each other, for EVENT_GATHER at most. [] when none
        came; None once the stream has ended."""
        if not self.alive:
            return None
        try:
            first = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return []
        burst = [first]
        gather_until = time.monotonic() + EVENT_GATHER
        while burst[-1] is not None:
            remaining = min(gather_until - time.monotonic(), EVENT_QUIET)
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
