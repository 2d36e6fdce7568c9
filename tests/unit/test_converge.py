"""The convergence wait's logic without an engine: scripted service states over a fake clock,
and the events an engine would send. What is checked is what it costs (looks, each two API
calls) and what it tells, not how the engine behaves (tests/acceptance does that)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from infra.converge import (
    FOLLOW_UPS,
    POLL_REMOTE,
    POLL_WITHOUT_EVENTS,
    Convergence,
    EventStream,
    ServiceState,
    event_signal,
)
from infra.errors import ConvergeError

HERE = "node-here"


def state(name: str, **overrides) -> ServiceState:
    values = dict(
        name=name,
        mode="replicated",
        running=1,
        desired=1,
        update_state="",
        pending_tasks=0,
        live_tasks=1,
        task_nodes=(HERE,),
        health_checked=True,
    )
    return ServiceState(**{**values, **overrides})


def starting(name: str, **overrides) -> ServiceState:
    return state(name, running=0, pending_tasks=1, **overrides)


def healthy_event(name: str) -> dict:
    return {
        "Type": "container",
        "Action": "health_status: healthy",
        "Actor": {"Attributes": {"com.docker.swarm.service.name": name}},
    }


def service_event(name: str, **attributes: str) -> dict:
    return {
        "Type": "service",
        "Action": "update",
        "Actor": {"Attributes": {"name": name, **attributes}},
    }


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Swarm:
    """Each service's state from a moment on; what each look asked for."""

    clock: Clock
    timeline: dict[str, list[tuple[float, ServiceState]]]
    looks: list[set[str] | None] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def look(self, names):
        self.looks.append(None if names is None else set(names))
        self.times.append(self.clock.now)
        found = []
        for name, changes in self.timeline.items():
            if names is not None and name not in names:
                continue
            current = [s for at, s in changes if at <= self.clock.now]
            if current:
                found.append(current[-1])
        return found


@dataclass
class Events:
    """The events an engine sends, each at its moment; `next` advances the clock as waiting
    for them would. `end_at`: the stream breaks then."""

    clock: Clock
    script: list[tuple[float, dict]]
    end_at: float | None = None

    def next(self, timeout: float):
        until = self.clock.now + timeout
        if self.end_at is not None and self.end_at <= until:
            self.clock.now = max(self.clock.now, self.end_at)
            return None
        due = [(at, e) for at, e in self.script if at <= until]
        if not due:
            self.clock.now = until
            return []
        first = min(at for at, _ in due)
        self.clock.now = max(self.clock.now, first)
        burst = [e for at, e in self.script if at <= self.clock.now]
        self.script = [(at, e) for at, e in self.script if at > self.clock.now]
        return burst


def wait(swarm: Swarm, events: Events | None, changed, timeout: float = 300, lines=None):
    listened = []

    def listen():
        listened.append(True)
        return HERE, events

    convergence = Convergence(
        stack="dev",
        changed=changed,
        timeout=timeout,
        look=swarm.look,
        listen=listen,
        progress=(lines.append if lines is not None else lambda _line: None),
        clock=swarm.clock,
        sleep=swarm.clock.sleep,
    )
    return convergence.run(), listened


def test_a_redeploy_that_changed_nothing_looks_once_and_never_listens():
    clock = Clock()
    swarm = Swarm(
        clock,
        {"dev_postgres": [(0, state("dev_postgres"))], "dev_redis": [(0, state("dev_redis"))]},
    )
    states, listened = wait(swarm, Events(clock, []), changed=set())
    assert [s.name for s in states] == ["dev_postgres", "dev_redis"]
    assert swarm.looks == [None]
    assert not listened


def test_changed_services_that_already_run_cost_one_look_and_no_stream():
    """A stack deployed together with one waited on before it: its changed services may
    have converged meanwhile; one look says so, and no event stream is opened."""
    clock = Clock()
    swarm = Swarm(
        clock,
        {"dev_postgres": [(0, state("dev_postgres"))], "dev_redis": [(0, state("dev_redis"))]},
    )
    states, listened = wait(swarm, Events(clock, []), changed={"dev_postgres"})
    assert all(s.converged for s in states)
    assert swarm.looks == [None]
    assert not listened


def test_a_changed_service_is_looked_at_when_it_becomes_healthy_not_on_a_clock():
    clock = Clock()
    swarm = Swarm(
        clock,
        {
            "dev_postgres": [(0, starting("dev_postgres")), (2.0, state("dev_postgres"))],
            "dev_redis": [(0, state("dev_redis"))],
        },
    )
    events = Events(clock, [(2.0, healthy_event("dev_postgres"))])
    states, listened = wait(swarm, events, changed={"dev_postgres"})
    assert all(s.converged for s in states)
    assert listened
    assert clock.now == pytest.approx(2.0)
    # The first look, the one the event asked for, the final check: no polls.
    assert swarm.looks == [None, {"dev_postgres"}, None]


def test_a_task_reported_running_after_its_health_event_is_followed_up_shortly():
    clock = Clock()
    swarm = Swarm(clock, {"dev_redis": [(0, starting("dev_redis")), (2.1, state("dev_redis"))]})
    events = Events(clock, [(2.0, healthy_event("dev_redis"))])
    wait(swarm, events, changed={"dev_redis"})
    assert clock.now == pytest.approx(2.0 + FOLLOW_UPS[0])
    assert swarm.looks == [None, {"dev_redis"}, {"dev_redis"}, None]


def test_unchanged_services_are_seen_only_by_the_first_look_and_the_final_check():
    clock = Clock()
    timeline = {f"shared_s{i:02}": [(0, state(f"shared_s{i:02}"))] for i in range(50)}
    timeline["shared_s07"] = [(0, starting("shared_s07")), (5.0, state("shared_s07"))]
    swarm = Swarm(clock, timeline)
    events = Events(clock, [(5.0, healthy_event("shared_s07"))])
    wait(swarm, events, changed={"shared_s07"})
    between = swarm.looks[1:-1]
    assert swarm.looks[0] is None and swarm.looks[-1] is None
    assert between and all(names == {"shared_s07"} for names in between), swarm.looks
    # 5 s of waiting: the event's look and at most two quiet polls (after 2 s, then 4 s).
    assert len(between) <= 3


def test_events_about_other_services_and_health_check_runs_cost_no_look():
    clock = Clock()
    swarm = Swarm(clock, {"dev_redis": [(0, starting("dev_redis")), (1.5, state("dev_redis"))]})
    noise = [
        (
            0.3 + i * 0.1,
            {
                "Type": "container",
                "Action": "exec_start: redis-cli ping",
                "Actor": {"Attributes": {"com.docker.swarm.service.name": "dev_redis"}},
            },
        )
        for i in range(10)
    ] + [(0.5, healthy_event("prod_redis")), (0.6, service_event("core_traefik"))]
    events = Events(clock, [*noise, (1.5, healthy_event("dev_redis"))])
    wait(swarm, events, changed={"dev_redis"})
    assert swarm.looks == [None, {"dev_redis"}, None]


def test_a_rolled_back_update_is_reported_when_the_engine_says_so():
    clock = Clock()
    swarm = Swarm(
        clock,
        {
            "dev_redis": [
                (
                    0,
                    starting(
                        "dev_redis",
                        update_state="updating",
                        errors=("rejected: No such image: redis:nope",),
                    ),
                ),
                (8.0, state("dev_redis", update_state="rollback_started")),
                (9.0, state("dev_redis", update_state="rollback_completed")),
            ]
        },
    )
    events = Events(
        clock,
        [
            (8.0, service_event("dev_redis", **{"updatestate.new": "rollback_started"})),
            (9.0, service_event("dev_redis", **{"updatestate.new": "rollback_completed"})),
        ],
    )
    with pytest.raises(ConvergeError, match="dev_redis was rolled back to its previous spec"):
        wait(swarm, events, changed={"dev_redis"})
    assert clock.now == pytest.approx(9.0)


def test_a_rollback_monitored_for_30_s_costs_a_few_quiet_polls_and_no_follow_ups():
    clock = Clock()
    swarm = Swarm(
        clock,
        {
            "dev_redis": [
                (0, starting("dev_redis", update_state="updating")),
                (5.0, state("dev_redis", update_state="rollback_started")),
                (40.0, state("dev_redis", update_state="rollback_completed")),
            ]
        },
    )
    events = Events(
        clock,
        [
            (5.0, healthy_event("dev_redis")),
            (40.0, service_event("dev_redis", **{"updatestate.new": "rollback_completed"})),
        ],
    )
    with pytest.raises(ConvergeError, match="dev_redis was rolled back"):
        wait(swarm, events, changed={"dev_redis"})
    # Polls after 2 s, then 4, 8, 16 s after the previous look of everything; the events'.
    assert swarm.times == pytest.approx([0, 2, 5, 9, 17, 33, 40])


def test_an_old_rollback_of_an_unchanged_service_does_not_fail_a_deploy():
    clock = Clock()
    swarm = Swarm(
        clock,
        {
            "dev_redis": [(0, state("dev_redis", update_state="rollback_completed"))],
            "dev_postgres": [(0, starting("dev_postgres")), (1.0, state("dev_postgres"))],
        },
    )
    events = Events(clock, [(1.0, healthy_event("dev_postgres"))])
    states, _ = wait(swarm, events, changed={"dev_postgres"})
    assert {s.name for s in states} == {"dev_redis", "dev_postgres"}


def test_a_missing_image_fails_fast_although_it_makes_no_event():
    clock = Clock()
    errors = ("rejected: No such image: traefik:v9",) * 3
    swarm = Swarm(
        clock,
        {
            "core_traefik": [
                (0, starting("core_traefik")),
                (10.0, starting("core_traefik", errors=errors)),
            ]
        },
    )
    with pytest.raises(ConvergeError, match=r"no node can get the image of core_traefik"):
        wait(swarm, Events(clock, []), changed={"core_traefik"})
    assert clock.now <= 10.0 + 8.0  # found by a quiet poll, at most 8 s later


def test_a_wait_that_runs_out_of_time_says_which_services_and_why():
    clock = Clock()
    stuck = starting("dev_postgres", errors=("failed: task: non-zero exit (1)",))
    swarm = Swarm(clock, {"dev_postgres": [(0, stuck)], "dev_redis": [(0, state("dev_redis"))]})
    with pytest.raises(ConvergeError) as raised:
        wait(swarm, Events(clock, []), changed={"dev_postgres", "dev_redis"}, timeout=30)
    message = str(raised.value)
    assert message.startswith("stack dev did not converge within 30 s: dev_postgres.")
    assert "task error: failed: task: non-zero exit (1)" in message
    assert clock.now == pytest.approx(30)
    # 30 s without an event: polls every 2, 4, then 8 s, not four times a second.
    assert len(swarm.looks) <= 7


def test_when_the_event_stream_breaks_the_wait_polls_every_second():
    clock = Clock()
    swarm = Swarm(clock, {"dev_redis": [(0, starting("dev_redis")), (5.5, state("dev_redis"))]})
    events = Events(clock, [], end_at=0.5)
    wait(swarm, events, changed={"dev_redis"})
    # Polled every second from the first look on: the one after 6 s finds it running.
    assert clock.now == pytest.approx(6 * POLL_WITHOUT_EVENTS)
    assert len(swarm.looks) == 1 + 6 + 1


def test_without_events_at_all_the_wait_polls_every_second():
    clock = Clock()
    swarm = Swarm(clock, {"dev_redis": [(0, starting("dev_redis")), (3.0, state("dev_redis"))]})
    wait(swarm, None, changed={"dev_redis"})
    assert clock.now == pytest.approx(3.0)
    assert len(swarm.looks) == 1 + 3 + 1


def test_tasks_on_other_nodes_are_polled_every_second():
    clock = Clock()
    elsewhere = {"task_nodes": ("node-there",), "mode": "global"}
    swarm = Swarm(
        clock,
        {
            "shared_alloy": [
                (0, starting("shared_alloy", **elsewhere)),
                (3.2, state("shared_alloy", **elsewhere)),
            ]
        },
    )
    wait(swarm, Events(clock, []), changed={"shared_alloy"})
    assert clock.now == pytest.approx(4 * POLL_REMOTE)


def test_a_service_removed_by_the_deploy_is_not_waited_for():
    clock = Clock()
    swarm = Swarm(clock, {"dev_redis": [(0, state("dev_redis"))]})
    states, _ = wait(swarm, Events(clock, []), changed={"dev_redis", "dev_gone"})
    assert [s.name for s in states] == ["dev_redis"]


def test_progress_shows_each_change_of_a_service_once():
    clock = Clock()
    swarm = Swarm(clock, {"dev_redis": [(0, starting("dev_redis")), (2.0, state("dev_redis"))]})
    lines: list[str] = []
    wait(
        swarm,
        Events(clock, [(2.0, healthy_event("dev_redis"))]),
        changed={"dev_redis"},
        lines=lines,
    )
    assert [line.split() for line in lines] == [
        ["dev_redis", "0/1", "running"],
        ["dev_redis", "1/1", "running"],
    ]


@pytest.mark.parametrize(
    ("event", "health_checked", "signal"),
    [
        (healthy_event("dev_redis"), True, ("dev_redis", True)),
        (
            {
                "Type": "container",
                "Action": "start",
                "Actor": {"Attributes": {"com.docker.swarm.service.name": "dev_redis"}},
            },
            False,
            ("dev_redis", True),
        ),
        (
            {
                "Type": "container",
                "Action": "start",
                "Actor": {"Attributes": {"com.docker.swarm.service.name": "dev_redis"}},
            },
            True,
            None,
        ),
        (
            {
                "Type": "container",
                "Action": "die",
                "Actor": {"Attributes": {"com.docker.swarm.service.name": "dev_redis"}},
            },
            True,
            None,
        ),
        (
            service_event("dev_redis", **{"updatestate.new": "rollback_started"}),
            True,
            ("dev_redis", False),
        ),
        (service_event("prod_redis", **{"updatestate.new": "updating"}), True, None),
        (service_event("dev_redis"), True, None),
        (
            {"Type": "service", "Action": "remove", "Actor": {"Attributes": {"name": "dev_redis"}}},
            True,
            ("dev_redis", False),
        ),
        (
            {
                "Type": "network",
                "Action": "connect",
                "Actor": {"Attributes": {"name": "dev_redis"}},
            },
            True,
            None,
        ),
    ],
    ids=[
        "healthy",
        "start-without-check",
        "start-with-check",
        "die",
        "service-update",
        "other-service",
        "update-of-its-status-message",
        "service-removed",
        "network",
    ],
)
def test_which_events_are_worth_a_look(event, health_checked, signal):
    states = {"dev_redis": state("dev_redis", health_checked=health_checked)}
    assert event_signal(event, states, {"dev_redis"}) == signal


class SilentEngine:
    """An engine whose event stream never says anything, until closed."""

    def __init__(self):
        self.closed = threading.Event()

    def events(self, **_kwargs):
        engine = self

        class Stream:
            def __iter__(self):
                engine.closed.wait()
                return iter(())

            def close(self):
                engine.closed.set()

        return Stream()


def test_a_silent_event_stream_never_holds_the_wait_longer_than_its_timeout():
    engine = SilentEngine()
    stream = EventStream(engine, since=0)
    started = time.monotonic()
    assert stream.next(0.2) == []
    assert time.monotonic() - started < 1.0
    stream.close()
    assert engine.closed.is_set()
    assert stream.next(1.0) is None  # ended: the wait polls from now on


def test_a_stack_with_no_service_yet_is_looked_at_whole_until_the_timeout():
    clock = Clock()
    swarm = Swarm(clock, {})
    with pytest.raises(ConvergeError, match=r"did not converge within 5 s: \(no services\)"):
        wait(swarm, Events(clock, []), changed=None, timeout=5)
    assert swarm.looks and all(names is None for names in swarm.looks)
