"""Services never give up (DESIGN decision 11): a fault that outlasts Swarm's retries comes
back by itself once removed, with its data, and `invoke status` tells what happens meanwhile.

The fault: dev's Redis loses its data directory (moved aside, as a failed disk mount would)
and its container is killed. Every task Swarm starts is then rejected ("bind source path
does not exist") until the directory is back.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
import redis

from infra import converge, engine

SERVICE = "dev_redis"
# The old policy gave up after 5 attempts, 5 s apart: about 25 s. A minute is more than twice
# that, and long enough for a dozen rejected tasks.
FAULT_SECONDS = 60
# Redis fsyncs its AOF once a second: a key older than this survives a kill.
AOF_FSYNC_MARGIN = 2.0


@pytest.fixture(scope="module")
def dev(platform):
    platform.deploy_requiring({"core": ["TRAEFIK_IMAGE"], "dev": ["REDIS_IMAGE", "POSTGRES_IMAGE"]})
    return platform


def _redis(platform) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=platform.port(6379),
        password=platform.secrets()["dev_redis_password"],
        socket_timeout=10,
    )


def _data_dir(platform) -> Path:
    """The bind mount source of the service, as the live spec has it."""
    spec = platform.client.services.get(SERVICE).attrs["Spec"]
    (mount,) = [
        m for m in spec["TaskTemplate"]["ContainerSpec"].get("Mounts", []) if m["Type"] == "bind"
    ]
    return Path(mount["Source"])


def _kill_running_task(platform) -> None:
    containers = platform.client.containers.list(
        filters={"label": f"com.docker.swarm.service.name={SERVICE}"}
    )
    assert containers, f"no running container of {SERVICE} to kill"
    for container in containers:
        container.kill()


def _status_of(platform) -> dict:
    """The service's row of `invoke status --json`, the real command line."""
    result = platform.invoke("status", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    stacks = json.loads(result.stdout)["stacks"]
    rows = [s for stack in stacks for s in stack["services"] if s["name"] == SERVICE]
    assert rows, f"{SERVICE} missing from invoke status"
    return rows[0]


def _rejected_task_ids(platform) -> set[str]:
    return {
        task["ID"]
        for task in platform.client.services.get(SERVICE).tasks()
        if task["Status"]["State"] in ("rejected", "failed")
    }


def _write_marker(platform) -> str:
    marker = f"recovery-{uuid.uuid4().hex[:12]}"
    _redis(platform).set(f"recovery:{marker}", marker)
    time.sleep(AOF_FSYNC_MARGIN)
    return marker


def _converged(platform) -> bool:
    return converge.service_state(platform.client.services.get(SERVICE)).converged


def _running_again(platform) -> bool:
    """Its tasks run as wanted. (Converged would also need its last update not to have
    rolled back: an earlier test module may have left one behind.)"""
    return converge.service_state(platform.client.services.get(SERVICE)).settled


def _set_restart_policy(platform, policy: dict) -> None:
    template = platform.client.api.inspect_service(SERVICE)["Spec"]["TaskTemplate"]
    engine.update_service_spec(
        platform.client, SERVICE, task_template={**template, "RestartPolicy": policy}
    )
    platform.wait_for(lambda: _converged(platform), timeout=60, interval=1, what="the update")


def _moved_away(directory: Path) -> Path:
    aside = directory.with_name(directory.name + ".fault")
    os.rename(directory, aside)
    return aside


def test_a_fault_past_the_old_retry_limit_ends_with_the_service_back_by_itself(dev):
    marker = _write_marker(dev)
    # ok, or rolled-back when an earlier module left a rolled-back update behind.
    health_before = _status_of(dev)["health"]
    assert health_before in ("ok", "rolled-back"), health_before
    directory = _data_dir(dev)
    aside = _moved_away(directory)
    try:
        _kill_running_task(dev)
        rejected: set[str] = set()
        seen_health: list[str] = []
        errors: list[str] = []
        deadline = time.monotonic() + FAULT_SECONDS
        while time.monotonic() < deadline:
            rejected |= _rejected_task_ids(dev)
            row = _status_of(dev)
            seen_health.append(row["health"])
            errors += row["errors"]
            time.sleep(10)
        rejected |= _rejected_task_ids(dev)
    finally:
        os.rename(aside, directory)

    # Swarm kept trying the whole time, far past the old limit of five attempts ...
    assert len(rejected) > 5, f"only {len(rejected)} rejected tasks in {FAULT_SECONDS} s"
    # ... and the operator was told it is retrying, and why, never that it is merely starting.
    assert "gave-up" not in seen_health, seen_health
    assert seen_health.count("retrying") >= len(seen_health) - 2, seen_health
    assert any("bind source path does not exist" in error for error in errors), errors[-3:]

    # With the directory back, it recovers with no deploy, no command: by itself.
    dev.wait_for(lambda: _running_again(dev), timeout=120, interval=1, what=f"{SERVICE} to recover")
    assert _redis(dev).get(f"recovery:{marker}") == marker.encode()
    assert _status_of(dev)["health"] == health_before


def test_a_deploy_restarts_a_service_swarm_has_stopped_retrying(dev):
    """A service Swarm gave up on (as the old policy let it: here a one-attempt limit set on
    the live service) is restarted by the next deploy, which does not wait for it in vain."""
    original = dev.client.api.inspect_service(SERVICE)["Spec"]["TaskTemplate"]
    _set_restart_policy(dev, {**original["RestartPolicy"], "MaxAttempts": 1})
    marker = _write_marker(dev)
    directory = _data_dir(dev)
    aside = _moved_away(directory)
    try:
        _kill_running_task(dev)

        def gave_up():
            return converge.service_state(dev.client.services.get(SERVICE)).gave_up

        dev.wait_for(gave_up, timeout=90, interval=1, what=f"Swarm to stop retrying {SERVICE}")
        assert _status_of(dev)["health"] == "gave-up"
    finally:
        os.rename(aside, directory)
    try:
        lines = dev.apply("dev")
        assert any(line.startswith(f"{SERVICE}: Swarm had stopped retrying") for line in lines), (
            lines
        )
        assert _converged(dev)
        assert _redis(dev).get(f"recovery:{marker}") == marker.encode()
    finally:
        _set_restart_policy(dev, original["RestartPolicy"])
        dev.wait_for(lambda: _converged(dev), timeout=60, interval=1, what=f"{SERVICE} restored")
