"""Data survives: rows in Postgres, keys in Redis (dev) and objects in the S3 store (shared)
outlive a stop and deploy, a redeploy, a forced restart of their tasks and a restart of the
node's Docker engine.

Each test writes a value nobody wrote before, disrupts the services, then reads it back from
outside, as an application would."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
import redis
from botocore.exceptions import ClientError

from infra import converge, deploy, engine
from infra.catalog import STACKS

DATA_SERVICES = ("dev_postgres", "dev_redis", "shared_seaweedfs")
BUCKET = "acceptance-persistence"
# Redis appends to its AOF at once but fsyncs once a second (appendfsync everysec): a key
# written less than a second before the engine kills Redis may be lost, by design. The tests
# wait this long after writing before any disruption, so a lost key means a real loss.
AOF_FSYNC_MARGIN = 2.0


class Stores:
    """The three stores as an application of dev sees them, through the published ports."""

    def __init__(self, platform):
        self.platform = platform

    def _postgres(self):
        values = self.platform.secrets()
        return psycopg.connect(
            host="127.0.0.1",
            port=self.platform.port(5432),
            user=values["dev_postgres_user"],
            password=values["dev_postgres_password"],
            dbname=values["dev_postgres_db"],
            connect_timeout=10,
        )

    def _redis(self):
        return redis.Redis(
            host="127.0.0.1",
            port=self.platform.port(6379),
            password=self.platform.secrets()["dev_redis_password"],
            socket_timeout=10,
        )

    @staticmethod
    def _ensure_bucket(s3) -> bool:
        try:
            s3.create_bucket(Bucket=BUCKET)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":  # made earlier
                raise
        return True

    def write(self, marker: str) -> None:
        with self._postgres() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS persistence_probe (marker text PRIMARY KEY)")
            conn.execute("INSERT INTO persistence_probe VALUES (%s)", (marker,))
        self._redis().set(f"persistence:{marker}", marker)
        s3 = self.platform.s3()
        # Right after a deploy Traefik may not route s3.localhost yet (it polls every 5 s).
        self.platform.wait_for(
            lambda: self._ensure_bucket(s3), what="the S3 store to answer through Traefik"
        )
        s3.put_object(Bucket=BUCKET, Key=f"{marker}.txt", Body=marker.encode())
        time.sleep(AOF_FSYNC_MARGIN)

    def read(self, marker: str) -> dict[str, str | None]:
        """What each store holds under `marker` (None: nothing)."""
        with self._postgres() as conn:
            row = conn.execute(
                "SELECT marker FROM persistence_probe WHERE marker = %s", (marker,)
            ).fetchone()
        key = self._redis().get(f"persistence:{marker}")
        try:
            body = self.platform.s3().get_object(Bucket=BUCKET, Key=f"{marker}.txt")["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("NoSuchKey", "NoSuchBucket"):
                raise
            body = None
        return {
            "postgres": row[0] if row else None,
            "redis": key.decode() if key is not None else None,
            "s3": body.decode() if body is not None else None,
        }

    def wait_until_read(self, marker: str) -> None:
        """Poll until every store returns the value: right after a restart a store may not
        answer yet (Traefik needs a few seconds to route to a new task). On a timeout the
        failure shows what each store returned last."""
        expected = dict.fromkeys(("postgres", "redis", "s3"), marker)

        def all_returned():
            got = self.read(marker)
            if got != expected:
                raise AssertionError(f"read {got}")
            return True

        self.platform.wait_for(
            all_returned, timeout=180, what=f"Postgres, Redis and S3 to return {marker}"
        )


@pytest.fixture(scope="module")
def stores(platform):
    for variable in ("POSTGRES_IMAGE", "REDIS_IMAGE", "TRAEFIK_IMAGE", "SEAWEEDFS_IMAGE"):
        platform.require(variable)
    platform.deploy("dev")
    platform.deploy("shared")
    return Stores(platform)


def _marker() -> str:
    return f"kept-{uuid.uuid4().hex}"


def _running_task(platform, service: str) -> str:
    tasks = platform.client.services.get(service).tasks(filters={"desired-state": "running"})
    running = [t["ID"] for t in tasks if t["Status"]["State"] == "running"]
    assert len(running) == 1, f"{service}: {len(running)} running tasks"
    return running[0]


def test_data_survives_stop_and_deploy(stores):
    platform, marker = stores.platform, _marker()
    stores.write(marker)
    for stack in ("dev", "shared"):
        deploy.stop(platform.settings, stack, report=lambda _: None, client=platform.client)
    assert not platform.client.containers.list(
        all=True, filters={"label": "com.docker.stack.namespace=dev"}
    ), "dev's containers are still there: the stop proved nothing"
    for stack in ("dev", "shared"):
        platform.apply(stack)
    stores.wait_until_read(marker)


def test_data_survives_a_redeploy(stores):
    platform, marker = stores.platform, _marker()
    stores.write(marker)
    for stack in ("dev", "shared"):
        platform.apply(stack)
    stores.wait_until_read(marker)


def test_data_survives_a_forced_restart_of_the_tasks(stores):
    platform, marker = stores.platform, _marker()
    stores.write(marker)
    before = {name: _running_task(platform, name) for name in DATA_SERVICES}
    for name in DATA_SERVICES:
        platform.client.services.get(name).force_update()
    for stack in ("dev", "shared"):
        names = {name for name in DATA_SERVICES if name.startswith(f"{stack}_")}
        converge.wait_converged(
            platform.client, stack, changed=names, timeout=300, progress=lambda _: None
        )
    after = {name: _running_task(platform, name) for name in DATA_SERVICES}
    assert all(after[name] != before[name] for name in DATA_SERVICES), (before, after)
    stores.wait_until_read(marker)


def _started_after(task: dict, moment: datetime) -> bool:
    # Task times are RFC 3339 with nanoseconds; microseconds are enough to compare.
    created = re.sub(r"(\.\d{6})\d*", r"\1", task["CreatedAt"]).replace("Z", "+00:00")
    return datetime.fromisoformat(created) > moment


def _every_task_replaced(platform, stacks: list[str], moment: datetime) -> list[str]:
    """Services of `stacks` that do not yet run all their tasks as tasks created after
    `moment`: right after a restart the swarm still reports the old tasks as running."""
    nodes = [
        n
        for n in platform.client.nodes.list()
        if n.attrs["Status"]["State"] == "ready" and n.attrs["Spec"]["Availability"] == "active"
    ]
    waiting = []
    for stack in stacks:
        for service in engine.stack_services(platform.client, stack):
            mode = service.attrs["Spec"]["Mode"]
            desired = mode["Replicated"]["Replicas"] if "Replicated" in mode else len(nodes)
            running = [
                t
                for t in service.tasks(filters={"desired-state": "running"})
                if t["Status"]["State"] == "running" and _started_after(t, moment)
            ]
            if desired == 0 or len(running) < desired:
                waiting.append(f"{service.name} {len(running)}/{desired}")
    return waiting


def test_data_survives_a_restart_of_the_docker_engine(stores):
    """Restarts the manager's engine, then waits until every service of every deployed stack
    runs on tasks started after the restart, so the modules after this one find the
    platform as it was."""
    platform, marker = stores.platform, _marker()
    stores.write(marker)
    before = {name: _running_task(platform, name) for name in DATA_SERVICES}
    stacks = sorted(engine.deployed_stacks(platform.client) & set(STACKS))
    restarted_at = datetime.now(UTC)
    platform.restart_manager()

    def all_replaced() -> bool:
        waiting = _every_task_replaced(platform, stacks, restarted_at)
        assert not waiting, f"not yet on new tasks: {', '.join(waiting)}"
        return True

    platform.wait_for(
        all_replaced,
        timeout=600,
        interval=2,
        what="every service to run on new tasks after the restart",
    )
    for stack in stacks:
        converge.wait_converged(
            platform.client, stack, changed=set(), timeout=300, progress=lambda _: None
        )
    after = {name: _running_task(platform, name) for name in DATA_SERVICES}
    assert all(after[name] != before[name] for name in DATA_SERVICES), (before, after)
    stores.wait_until_read(marker)
