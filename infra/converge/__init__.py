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

from infra.converge.events import EventStream, event_signal, open_events
from infra.converge.state import (
    FAILED_UPDATE_STATES,
    ServiceState,
    platform_states,
    service_state,
    stack_states,
)
from infra.converge.wait import (
    FOLLOW_UPS,
    POLL_QUIET,
    POLL_REMOTE,
    POLL_WITHOUT_EVENTS,
    WAIT_CALLS_PER_CHANGED_SERVICE,
    WAIT_CONSTANT_CALLS,
    Convergence,
    local_node_id,
    service_log_tail,
    wait_converged,
    wait_removed,
)

__all__ = [
    "FAILED_UPDATE_STATES",
    "FOLLOW_UPS",
    "POLL_QUIET",
    "POLL_REMOTE",
    "POLL_WITHOUT_EVENTS",
    "WAIT_CALLS_PER_CHANGED_SERVICE",
    "WAIT_CONSTANT_CALLS",
    "Convergence",
    "EventStream",
    "ServiceState",
    "event_signal",
    "local_node_id",
    "open_events",
    "platform_states",
    "service_log_tail",
    "service_state",
    "stack_states",
    "wait_converged",
    "wait_removed",
]
