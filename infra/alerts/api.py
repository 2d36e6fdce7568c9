"""What Alertmanager knows, asked inside its own task: the alerts that fire now, and a test
alert whose delivery to every configured receiver is checked on Alertmanager's counters.

Through `docker exec` of the image's own busybox wget: nothing is published on the node, and
it works wherever DOCKER_HOST points (a laptop with ssh:// to the manager included), as
`invoke logs` and the backups do. When the task runs on this engine's node, wget asks its
loopback; when it runs on another node (shared's data node is a worker), wget runs in a
companion on this node (swarm/companion.py: Alertmanager's image, on its networks) and asks
tasks.shared_alertmanager over the overlay. One companion serves a whole command
(`with reached(client)`), so `alerts.test`, which polls the counters, starts it once.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import docker
import docker.errors

from infra import engine
from infra.alerts.receivers import Receiver
from infra.errors import AlertsError, EngineError
from infra.swarm import companion

SERVICE = "shared_alertmanager"
PORT = 9093
URL = f"http://127.0.0.1:{PORT}"  # in its own task
TEST_ALERTNAME = "NextcandleTestAlert"


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    state: str  # active, suppressed (silenced or inhibited), unprocessed
    since: str  # startsAt, ISO 8601
    labels: Mapping[str, str]
    summary: str

    @classmethod
    def from_api(cls, item: Mapping) -> Alert:
        labels = dict(item.get("labels") or {})
        return cls(
            name=labels.get("alertname", "?"),
            severity=labels.get("severity", ""),
            state=(item.get("status") or {}).get("state", ""),
            since=item.get("startsAt", ""),
            labels=labels,
            summary=(item.get("annotations") or {}).get("summary", ""),
        )

    @property
    def place(self) -> str:
        """Where it fires, for people: env, service, instance, whichever it has."""
        keys = ("env", "service", "job", "instance", "node", "mountpoint")
        return " ".join(f"{k}={self.labels[k]}" for k in keys if self.labels.get(k))


def deployed(client: docker.DockerClient) -> bool:
    return any(s.name == SERVICE for s in client.services.list(filters={"name": SERVICE}))


def not_deployed() -> AlertsError:
    return AlertsError(
        f"{SERVICE} is not deployed, so nothing evaluates alerts. "
        "Run `invoke deploy.shared`, then retry."
    )


def as_json(alert: Alert) -> dict:
    return {
        "name": alert.name,
        "severity": alert.severity,
        "state": alert.state,
        "since": alert.since,
        "summary": alert.summary,
        "labels": dict(alert.labels),
    }


def describe(alerts: Sequence[Alert]) -> list[str]:
    """Lines for people: one per alert, or one saying none fires."""
    if not alerts:
        return ["alerts: none firing"]
    active = sum(1 for a in alerts if a.state == "active")
    lines = [
        f"alerts: {active} firing"
        + (f", {len(alerts) - active} silenced or inhibited" if len(alerts) > active else "")
    ]
    for a in alerts:
        state = "" if a.state == "active" else f" ({a.state})"
        lines.append(f"  {a.severity or '-':<8} {a.name}{state} {a.place} since {a.since[:19]}")
        if a.summary:
            lines.append(f"           {a.summary}")
    return lines


@dataclass(frozen=True)
class Reached:
    """Where to exec wget (`container`, an id) and the base URL it asks from there."""

    client: docker.DockerClient
    container: str
    url: str


def base_url(host: str) -> str:
    """Alertmanager's API from a container: its loopback in its own task (host ""), else
    `host` (tasks.shared_alertmanager) over the overlay."""
    return f"http://{host}:{PORT}" if host else URL


@contextlib.contextmanager
def reached(client) -> Iterator[Reached]:
    """Alertmanager, reachable by exec for the duration of the block: its own task here, or
    a companion on this node (removed on exit). A Reached passes through as it is."""
    if isinstance(client, Reached):
        yield client
        return
    try:
        with companion.reach(client, SERVICE) as found:
            yield Reached(client, found.id, base_url(found.host))
    except EngineError as exc:
        raise AlertsError(str(exc)) from None


def _run(client, command: Sequence[str], stdin: bytes = b"") -> str:
    """`command` (its "{url}" replaced by the API's base URL) where it reaches Alertmanager."""
    with reached(client) as target:
        command = [part.replace("{url}", target.url) for part in command]
        try:
            code, out, err = engine.exec_with_stdin(target.client, target.container, command, stdin)
        except docker.errors.APIError as exc:  # the task ended between the look and the exec
            raise AlertsError(
                f"Alertmanager's container did not take the request ({exc.explanation or exc}). "
                "Check `invoke status`, then retry."
            ) from None
    if code != 0:
        last = (err or out).strip().splitlines()[-1:] or ["no output"]
        raise AlertsError(
            f"Alertmanager did not answer ({' '.join(command[:3])}: {last[0]}). "
            "Check `invoke logs --service=shared_alertmanager`."
        )
    return out


def firing(client: docker.DockerClient) -> list[Alert]:
    """Every alert Alertmanager holds now (active first, then silenced or inhibited)."""
    out = _run(client, ["wget", "-q", "-O", "-", "{url}/api/v2/alerts"])
    try:
        items = json.loads(out)
    except json.JSONDecodeError:
        raise AlertsError(
            "Alertmanager's /api/v2/alerts did not return JSON. "
            "Check `invoke logs --service=shared_alertmanager`."
        ) from None
    alerts = [Alert.from_api(item) for item in items]
    order = {"active": 0, "suppressed": 1}
    return sorted(alerts, key=lambda a: (order.get(a.state, 2), a.severity != "critical", a.name))


def notification_counts(client: docker.DockerClient) -> dict[str, tuple[float, float]]:
    """(requests, failed requests) to each integration (webhook, slack, telegram, email)
    since Alertmanager started, from its own /metrics. Both are counted once a request has
    ended (notify.RetryStage), so a request under way is in neither."""
    out = _run(client, ["wget", "-q", "-O", "-", "{url}/metrics"])
    counts: dict[str, list[float]] = {}
    pattern = re.compile(
        r"^alertmanager_notification_requests_(total|failed_total)\{([^}]*)\}\s+(\S+)$", re.M
    )
    for kind, labels, value in pattern.findall(out):
        integration = re.search(r'integration="([^"]+)"', labels)
        if not integration:
            continue
        pair = counts.setdefault(integration.group(1), [0.0, 0.0])
        pair[0 if kind == "total" else 1] += float(value)
    return {name: (requests, failed) for name, (requests, failed) in counts.items()}


def send_test_alert(client: docker.DockerClient, now: datetime | None = None) -> str:
    """Post a test alert that ends by itself in five minutes; returns its unique id label."""
    now = now or datetime.now(UTC)
    marker = uuid.uuid4().hex[:12]
    alert = [
        {
            "labels": {
                "alertname": TEST_ALERTNAME,
                "severity": "warning",
                "instance": f"invoke-alerts-test-{marker}",
            },
            "annotations": {
                "summary": "Test alert from `invoke alerts.test`: the receivers work. "
                "No action needed.",
            },
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=5)).isoformat(),
        }
    ]
    _run(
        client,
        [
            "wget", "-q", "-O", "-", "--header", "Content-Type: application/json",
            "--post-file", "/dev/stdin", "{url}/api/v2/alerts",
        ],
        json.dumps(alert).encode(),
    )  # fmt: skip
    return marker


@dataclass(frozen=True)
class Delivery:
    receiver: Receiver
    outcome: str  # delivered, failed, no attempt


def deliveries(
    client: docker.DockerClient,
    receivers: Sequence[Receiver],
    before: Mapping[str, tuple[float, float]],
    timeout: float,
    interval: float = 1.0,
) -> list[Delivery]:
    """Wait until every receiver's counters moved past `before`, or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while True:
        now = notification_counts(client)  # a Reached: one companion for every poll
        outcomes = {}
        for receiver in receivers:
            requests, failed = now.get(receiver.integration, (0.0, 0.0))
            requests0, failed0 = before.get(receiver.integration, (0.0, 0.0))
            if requests - failed > requests0 - failed0:
                outcomes[receiver.integration] = "delivered"
            elif failed > failed0:
                outcomes[receiver.integration] = "failed"
        if len(outcomes) == len(receivers) or time.monotonic() >= deadline:
            return [Delivery(r, outcomes.get(r.integration, "no attempt")) for r in receivers]
        time.sleep(interval)
