"""What happens on the second deploy, on a changed secret, on a broken update and on stop."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import time

import psycopg
import pytest
import redis
import yaml

from infra import converge, deploy, engine
from infra.errors import ConvergeError
from infra.operations.diff import format_diff, live_diff
from infra.settings import REPO_ROOT


def _versions(platform, *stacks) -> dict[str, int]:
    return {
        service.name: service.version
        for stack in stacks
        for service in engine.stack_services(platform.client, stack)
    }


@pytest.fixture(scope="module")
def dev(platform):
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    platform.deploy("dev")
    return platform


def test_redeploy_with_nothing_changed_updates_no_service(dev):
    before = _versions(dev, "core", "dev")
    lines = dev.apply("dev")
    assert _versions(dev, "core", "dev") == before
    assert "dev: up to date, 0 services changed" in lines
    assert "core: up to date, 0 services changed" in lines


def test_redeploy_of_shared_with_nothing_changed_updates_no_service(dev):
    dev.deploy("shared")
    before = _versions(dev, "shared")
    # What `invoke deploy.shared --diff` would say now: on a failure, which field differs
    # (a changed definition) or nothing (a service restarted because Swarm gave up on it).
    diff = format_diff(live_diff(dev.settings, "shared", tunnel=False, client=dev.client))
    lines = dev.apply("shared")
    assert _versions(dev, "shared") == before, [*lines, *diff]
    assert "shared: up to date, 0 services changed" in lines


def test_changed_secret_rolls_only_its_services_and_prunes_the_old_version(dev):
    path = dev.settings.secrets_file
    values = yaml.safe_load(path.read_text())
    old_names = {s.name for s in dev.client.secrets.list() if s.name.startswith("dev_redis_")}
    before = _versions(dev, "core", "dev")
    values["dev_redis_password"] = "rotated-" + values["dev_redis_password"]
    path.write_text(yaml.safe_dump(values))
    lines = dev.apply("dev")
    after = _versions(dev, "core", "dev")
    changed = {name for name in after if after[name] != before[name]}
    # Redis and its exporter, the two services that mount the password's secrets.
    assert changed == {"dev_redis", "dev_redis-exporter"}, lines
    remaining = {s.name for s in dev.client.secrets.list()}
    assert not old_names & remaining, "the old secret versions were not pruned"
    client = redis.Redis(
        host="127.0.0.1",
        port=dev.port(6379),
        password=values["dev_redis_password"],
        socket_timeout=10,
    )
    assert client.ping()


def test_changed_config_file_rolls_only_the_services_that_mount_it(dev, tmp_path):
    dev.require("PROMETHEUS_IMAGE")
    dev.deploy("shared")
    dev.apply("shared")  # up to date first: an earlier test changed a Redis password
    # A copy of the repository's stacks and configs, with prometheus.yml changed.
    for folder in ("stacks", "configs"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    changed_file = tmp_path / "configs" / "prometheus" / "prometheus.yml"
    changed_file.write_text(changed_file.read_text() + "# changed by the acceptance suite\n")
    changed_settings = dataclasses.replace(dev.settings, root=tmp_path)
    old = {c.name for c in dev.client.configs.list() if c.name.startswith("shared_prometheus-")}
    before = _versions(dev, "shared")
    try:
        lines = dev.apply("shared", settings=changed_settings)
        after = _versions(dev, "shared")
        assert {n for n in after if after[n] != before[n]} == {"shared_prometheus"}, lines
        remaining = {c.name for c in dev.client.configs.list()}
        assert not old & remaining, "the old prometheus config was not pruned"
    finally:
        dev.apply("shared")  # back to the repository's own files


def test_broken_update_is_rolled_back_and_the_service_keeps_serving(dev):
    broken = dataclasses.replace(
        dev.settings,
        images={**dev.settings.images, "REDIS_IMAGE": "nextcandle-standin/redis:no-such-tag"},
    )
    before = dev.client.services.get("dev_redis").attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    with pytest.raises(ConvergeError, match="dev_redis was rolled back"):
        dev.apply("dev", settings=broken)
    spec = dev.client.services.get("dev_redis").attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert spec["Image"] == before["Image"]
    password = dev.secrets()["dev_redis_password"]
    client = redis.Redis(
        host="127.0.0.1", port=dev.port(6379), password=password, socket_timeout=10
    )
    dev.wait_for(client.ping, what="dev Redis to answer after the rollback")
    # The next deploy with the good settings is calm: nothing to change, nothing failed.
    assert "dev: up to date, 0 services changed" in dev.apply("dev")


def test_stop_waits_for_the_containers_and_keeps_the_data(dev):
    values = dev.secrets()

    def connect():
        return psycopg.connect(
            host="127.0.0.1",
            port=dev.port(5432),
            user=values["dev_postgres_user"],
            password=values["dev_postgres_password"],
            dbname=values["dev_postgres_db"],
            connect_timeout=10,
        )

    with connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('survives stop and deploy')")
    deploy.stop(dev.settings, "dev", report=lambda _: None, client=dev.client)
    leftovers = dev.client.containers.list(
        all=True, filters={"label": "com.docker.stack.namespace=dev"}
    )
    assert leftovers == []
    assert (dev.settings.data_root / "dev" / "postgres" / "PG_VERSION").exists()
    dev.apply("dev")
    row = dev.wait_for(
        lambda: connect().execute("SELECT note FROM kept").fetchone(),
        what="dev Postgres after the redeploy",
    )
    assert row == ("survives stop and deploy",)


def test_deploy_hands_every_stack_to_the_engine_before_waiting(dev):
    for stack in ("dev", "core"):
        deploy.stop(dev.settings, stack, report=lambda _: None, client=dev.client)
    lines = dev.apply("dev")
    handed_over = [i for i, line in enumerate(lines) if line.startswith("stack dev: deploying")]
    first_wait = next(i for i, line in enumerate(lines) if line.startswith("  core_"))
    assert handed_over and handed_over[0] < first_wait, lines
    assert {s.name for s in engine.stack_services(dev.client, "core")} == {
        "core_traefik",
        "core_docker-proxy",
    }
    assert "stack dev: converged, 4 services changed" in lines, lines


def test_a_deploys_wait_costs_api_calls_per_changed_service_not_per_second(dev):
    """From nothing deployed to converged, the wait makes at most
    WAIT_CALLS_PER_CHANGED_SERVICE calls per changed service plus WAIT_CONSTANT_CALLS; and
    a redeploy that changes nothing waits with one look (two calls)."""
    deploy.stop(dev.settings, "dev", report=lambda _: None, client=dev.client)
    plan = deploy.prepare(dev.settings, "dev", tunnel=False)
    stack = next(s for s in plan.stacks if s.name == "dev")
    lines: list[str] = []
    since = time.time()
    changed = deploy.deploy_stack(dev.client, stack, report=lines.append)
    assert set(changed) == {
        "dev_postgres",
        "dev_postgres-exporter",
        "dev_redis",
        "dev_redis-exporter",
    }, lines
    started = time.monotonic()
    with engine.count_api_calls(dev.client) as calls:
        states = converge.wait_converged(
            dev.client,
            "dev",
            changed=set(changed),
            timeout=300,
            progress=lines.append,
            since=since,
        )
    seconds = time.monotonic() - started
    assert all(s.converged for s in states), lines
    budget = converge.WAIT_CALLS_PER_CHANGED_SERVICE * len(changed) + converge.WAIT_CONSTANT_CALLS
    print(
        f"acceptance: dev's wait took {seconds:.1f} s in {calls.total} API calls "
        f"({calls.summary()}); budget {budget}"
    )
    assert calls.by_endpoint["GET /events"] == 1, calls.summary()  # it listened
    assert calls.total <= budget, calls.summary()

    with engine.count_api_calls(dev.client) as calls:
        converge.wait_converged(dev.client, "dev", changed=set(), progress=lines.append)
    assert calls.total == 2, calls.summary()  # the stack's services and their tasks


def test_an_event_driven_wait_reports_a_rolled_back_update_within_its_budget(dev):
    """The same broken update as above, through the event-driven wait directly: reported as
    rolled back, in a number of calls that does not grow with the seconds it takes."""
    dev.apply("dev")  # up to date first
    broken = dataclasses.replace(
        dev.settings,
        images={**dev.settings.images, "REDIS_IMAGE": "nextcandle-standin/redis:no-such-tag"},
    )
    plan = deploy.prepare(broken, "dev", tunnel=False)
    stack = next(s for s in plan.stacks if s.name == "dev")
    since = time.time()
    changed = deploy.deploy_stack(dev.client, stack, report=lambda _: None)
    assert changed == ["dev_redis"]
    started = time.monotonic()
    with (
        engine.count_api_calls(dev.client) as calls,
        pytest.raises(ConvergeError, match="dev_redis was rolled back") as raised,
    ):
        converge.wait_converged(
            dev.client,
            "dev",
            changed=set(changed),
            timeout=300,
            progress=lambda _: None,
            since=since,
        )
    seconds = time.monotonic() - started
    print(
        f"acceptance: rollback reported after {seconds:.1f} s in {calls.total} API calls "
        f"({calls.summary()})"
    )
    assert "task error:" in str(raised.value)
    # Swarm declares the rollback complete only after its 30 s monitor: meanwhile the wait
    # makes its quiet polls (after 2, 4, 8, then every 16 s; two calls each). On top: the
    # calls of one changed service, the constant, and the report (the service, its log tail).
    moments = itertools.accumulate(converge.POLL_QUIET + converge.POLL_QUIET[-1:] * 100)
    polls = sum(1 for moment in moments if moment <= seconds)
    budget = converge.WAIT_CALLS_PER_CHANGED_SERVICE + converge.WAIT_CONSTANT_CALLS
    budget += 2 * polls + 2
    assert calls.total <= budget, f"{calls.summary()}; budget {budget}"
    lines = dev.apply("dev")
    assert "dev: up to date, 0 services changed" in lines
    # The dind engines are Docker 28: no warning about start_interval.
    assert not [line for line in lines if line.startswith("warning:")], lines
