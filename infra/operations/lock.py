"""The deploy lock: one Docker config of a fixed name in the swarm.

Creating a config is atomic by name in swarmkit: of two creators of `nextcandle.deploy-lock`,
one gets it and the other a conflict (HTTP 409), whichever manager or runner each talks to.
The holder record (who, what command, a message, the TTL) is the config's data and labels.
Configs are immutable, so a lock is never renewed: its TTL (DEPLOY_LOCK_TTL) is longer than
any operation, and only a holder that died leaves it to expire. Expiry is counted from the
config's CreatedAt, stamped by the manager, so every reader measures from the same clock.

Taking over an expired lock removes that config by its ID, not by name: of two takers, only
the first removal succeeds (the second finds the ID gone), and the create that follows is
atomic again. So two processes never both hold the lock.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import docker
from docker.errors import APIError, NotFound

from infra.errors import EngineError, InfraError

LOCK_NAME = "nextcandle.deploy-lock"
LABEL_LOCK = "org.nextcandle.lock"
POLL_SECONDS = 1.0  # while waiting with --lock-wait: one config read per second

Report = Callable[[str], None]


class LockHeld(InfraError):
    """Another operation holds the deploy lock."""


def whoami(environ: Mapping[str, str] | None = None) -> str:
    """user@host, or the CI job: GitHub Actions sets GITHUB_ACTIONS and the run's ids."""
    environ = os.environ if environ is None else environ
    if environ.get("GITHUB_ACTIONS") == "true":
        repo = environ.get("GITHUB_REPOSITORY", "?")
        run = environ.get("GITHUB_RUN_ID", "?")
        job = environ.get("GITHUB_JOB", "?")
        return f"github-actions {repo} run {run} job {job} ({socket.gethostname()})"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry, as in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def parse_time(text: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as seconds since the epoch."""
    main, _, rest = text.rstrip("Z").partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())[:6]
    moment = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return moment.timestamp() + (int(fraction.ljust(6, "0")) / 1e6 if fraction else 0.0)


def clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class Holder:
    """Who holds (or asks for) the lock."""

    who: str
    command: str
    message: str = ""
    ttl: int = 1800
    pid: int = 0
    taken: float = 0.0  # the config's CreatedAt; 0 before it exists
    id: str = ""  # the config's ID

    def data(self) -> bytes:
        record = {
            "who": self.who,
            "command": self.command,
            "message": self.message,
            "ttl": self.ttl,
            "pid": self.pid,
        }
        return json.dumps(record, sort_keys=True).encode()

    @classmethod
    def from_config(cls, attrs: Mapping) -> Holder:
        spec = attrs.get("Spec") or {}
        try:
            record = json.loads(base64.b64decode(spec.get("Data") or "") or b"{}")
        except ValueError:
            record = {}
        return cls(
            who=str(record.get("who", "unknown")),
            command=str(record.get("command", "unknown")),
            message=str(record.get("message", "")),
            ttl=int(record.get("ttl", 0) or 0),
            pid=int(record.get("pid", 0) or 0),
            taken=parse_time(attrs.get("CreatedAt") or "1970-01-01T00:00:00Z"),
            id=attrs.get("ID", ""),
        )

    @property
    def expires(self) -> float:
        return self.taken + self.ttl

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        message = f", {self.message!r}" if self.message else ""
        left = self.expires - now
        expiry = f"expired {int(-left)} s ago" if left <= 0 else f"expires in {int(left) + 1} s"
        return (
            f"{self.who} (pid {self.pid}: {self.command}{message}) since "
            f"{clock(self.taken)}, {expiry}"
        )


def read(client: docker.DockerClient) -> Holder | None:
    """The current holder, or None when the lock is free."""
    for config in client.configs.list(filters={"name": LOCK_NAME}):
        if config.name == LOCK_NAME:  # the name filter matches prefixes
            if "Data" not in (config.attrs.get("Spec") or {}):
                config.reload()
            return Holder.from_config(config.attrs)
    return None


def _create(client: docker.DockerClient, holder: Holder) -> bool:
    labels = {LABEL_LOCK: "deploy", f"{LABEL_LOCK}.who": holder.who[:200]}
    try:
        client.configs.create(name=LOCK_NAME, data=holder.data(), labels=labels)
    except APIError as exc:
        if exc.status_code == 409:
            return False
        raise EngineError(f"taking the deploy lock failed: {exc.explanation}") from None
    return True


def _remove(client: docker.DockerClient, config_id: str) -> bool:
    """Remove the lock config with this ID; False when it is already gone."""
    try:
        client.api.remove_config(config_id)
    except NotFound:
        return False
    except APIError as exc:
        raise EngineError(f"removing the deploy lock failed: {exc.explanation}") from None
    return True


def acquire(
    client: docker.DockerClient,
    holder: Holder,
    wait: float = 0.0,
    report: Report = print,
) -> Holder:
    """Take the lock, waiting up to `wait` seconds for its holder; an expired lock is taken
    over. Raises LockHeld with one line naming the holder. Returns the lock as taken."""
    deadline = time.monotonic() + max(wait, 0.0)
    announced = ""
    vanished = 0  # times the lock could be neither created nor read
    while True:
        if _create(client, holder):
            taken = read(client)
            if taken is not None:
                return taken
        current = read(client)
        if current is None:  # released in the instant between two calls: try again
            vanished += 1
            if vanished > 10:
                raise EngineError(
                    f"the deploy lock ({LOCK_NAME}) can be neither created nor read. Check "
                    "`docker config ls` on a manager, then retry."
                )
            continue
        if current.expired():
            if _remove(client, current.id):
                report(f"lock: took over the expired deploy lock of {current.describe()}")
            continue
        if time.monotonic() >= deadline:
            how = f"waited {wait:.0f} s; " if wait > 0 else ""
            raise LockHeld(
                f"the deploy lock is held by {current.describe()}. {how}Wait for it "
                "(--lock-wait=SECONDS), or if that holder is gone: invoke lock.release --yes"
            )
        if announced != current.id:
            report(f"lock: waiting up to {wait:.0f} s for {current.describe()}")
            announced = current.id
        time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.05)))


def release(client: docker.DockerClient, held: Holder) -> bool:
    """Give back a lock we hold; one taken over by now (ours expired) is left alone."""
    current = read(client)
    if current is None or current.id != held.id:
        return False
    return _remove(client, held.id)


def force_release(client: docker.DockerClient) -> Holder | None:
    """`lock.release --yes`: remove whatever lock there is; the holder it had, or None."""
    current = read(client)
    if current is not None:
        _remove(client, current.id)
    return current


@contextmanager
def held(
    client: docker.DockerClient,
    holder: Holder,
    wait: float = 0.0,
    report: Report = print,
) -> Iterator[Holder]:
    """The lock for the duration of a block; given back however the block ends (an
    exception, Ctrl-C). Only a killed process leaves it, to expire after its TTL."""
    taken = acquire(client, holder, wait, report)
    try:
        yield taken
    finally:
        release(client, taken)
