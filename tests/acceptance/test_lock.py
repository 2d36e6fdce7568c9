"""The deploy lock, the history, the live diff and stack rollback, against the dind swarm.

Two `invoke deploy.env` processes started together: one runs, the other refuses naming the
holder, or with --lock-wait runs after it; a killed deploy's lock expires after its TTL.
Then a changed Redis config and a changed image tag: the live diff shows exactly those two,
the deploy rolls exactly those services, `invoke rollback.env` brings both back (and rolls
only them), the data is still there, and `invoke history` shows the three operations.

The module leaves dev as the repository's files describe it, and removes the lock and the
history records it made (other modules expect old versions to be pruned).
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import redis

from infra import deploy, engine
from infra.operations import diff, history, lock, run
from infra.settings import REPO_ROOT

KEEP = {"ROLLBACK_KEEP": "3"}  # the default; the session keeps none (conftest.py)


@pytest.fixture(scope="module")
def dev(platform):
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    platform.deploy("dev")
    yield platform
    lock.force_release(platform.client)
    history.remove_all(platform.client)


def _start(platform, *args: str, **overrides: str) -> subprocess.Popen:
    """`invoke ARGS` in its own process group (a kill reaches its docker children too)."""
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args],
        env=platform.command_env(**{**KEEP, **overrides}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=900)
    print(out, err)
    return process.returncode, out, err


def _holding(platform, processes: dict[str, subprocess.Popen]) -> str:
    """Wait for one of the deploys (by message) to take the lock, then stop it (SIGSTOP)
    while it holds it: a deploy of dev with nothing to change gives the lock back within a
    second, and how far apart two processes reach it depends on the machine's load. The
    caller continues it (SIGCONT). Returns its message."""
    holder = platform.wait_for(
        lambda: (h := lock.read(platform.client)) and h.message in processes and h,
        timeout=120,
        interval=0.05,
        what="a deploy to take the lock",
    )
    os.killpg(processes[holder.message].pid, signal.SIGSTOP)
    return holder.message


def test_two_deploys_at_once_one_runs_the_other_refuses_naming_the_holder(dev):
    processes = {
        m: _start(dev, "deploy.env", "--name=dev", "--no-tunnel", f"--message={m}")
        for m in ("first", "second")
    }
    won = _holding(dev, processes)
    try:
        (lost,) = [m for m in processes if m != won]
        loser = _finish(processes[lost])
    finally:
        os.killpg(processes[won].pid, signal.SIGCONT)
    winner = _finish(processes[won])
    assert (winner[0], loser[0]) == (0, 1), (winner, loser)
    lines = loser[2].strip().splitlines()
    assert len(lines) == 1, loser
    assert lines[0].startswith("error: the deploy lock is held by "), lines
    assert f"deploy.env --name=dev, '{won}')" in lines[0], lines
    assert "--lock-wait=SECONDS" in lines[0] and "invoke lock.release --yes" in lines[0]
    assert "history: #" in winner[1], winner
    assert lock.read(dev.client) is None, "the lock was not given back"


def _stdout_lines(process: subprocess.Popen) -> list[str]:
    """The process's stdout lines as they come (a thread reads them into the list)."""
    lines: list[str] = []

    def read():
        for line in process.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_with_lock_wait_the_second_deploy_runs_after_the_first(dev):
    first = _start(dev, "deploy.env", "--name=dev", "--no-tunnel", "--message=one")
    _holding(dev, {"one": first})
    try:
        second = _start(
            dev, "deploy.env", "--name=dev", "--no-tunnel", "--message=two", "--lock-wait=300"
        )
        lines = _stdout_lines(second)
        line = dev.wait_for(
            lambda: next((x for x in lines if x.startswith("lock: waiting up to 300 s")), None),
            timeout=120,
            what="the second deploy to say it waits for the lock",
        )
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    code, out, err = _finish(first)
    assert code == 0, out + err
    assert second.wait(timeout=900) == 0, "\n".join(lines) + second.stderr.read()
    # The waiter named the holder, and ran after it: its history record is the later one.
    assert "deploy.env --name=dev, 'one')" in line, line
    numbers = [
        int(re.search(r"history: #(\d+)", text).group(1)) for text in (out, "\n".join(lines))
    ]
    assert numbers[0] < numbers[1], numbers
    assert lock.read(dev.client) is None


def test_a_killed_deploys_lock_expires_after_its_ttl(dev):
    ttl = 15
    killed = _start(dev, "deploy.env", "--name=dev", "--no-tunnel", "--message=killed",
                    DEPLOY_LOCK_TTL=str(ttl))  # fmt: skip
    holder = dev.wait_for(
        lambda: (h := lock.read(dev.client)) and h.message == "killed" and h,
        timeout=120,
        interval=0.1,
        what="the deploy to take the lock",
    )
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert holder.ttl == ttl

    status = dev.invoke("lock.status", **KEEP)
    assert status.returncode == 0, status.stderr
    assert "deploy lock: held by " in status.stdout and "'killed')" in status.stdout

    refused = dev.invoke("deploy.env", "--name=dev", "--no-tunnel", **KEEP)
    if time.time() < holder.expires - 1:  # else the lock had expired already: nothing to see
        assert refused.returncode == 1, refused.stdout
        assert "'killed')" in refused.stderr and "expires in " in refused.stderr

    after = dev.invoke("deploy.env", "--name=dev", "--no-tunnel", "--lock-wait=120", **KEEP)
    assert after.returncode == 0, after.stderr
    assert "lock: took over the expired deploy lock of " in after.stdout, after.stdout
    assert time.time() >= holder.expires
    assert lock.read(dev.client) is None


def test_lock_release_needs_yes_and_names_the_holder(dev):
    taken = lock.acquire(dev.client, lock.Holder("someone@elsewhere", "deploy.env --name=prod"))
    try:
        refused = dev.invoke("lock.release", **KEEP)
        assert refused.returncode == 1
        assert "someone@elsewhere" in refused.stderr and "--yes" in refused.stderr
        released = dev.invoke("lock.release", "--yes", **KEEP)
        assert released.returncode == 0, released.stderr
        assert "released (was held by someone@elsewhere" in released.stdout
        assert lock.read(dev.client) is None
    finally:
        lock.release(dev.client, taken)


# --- diff, deploy, rollback, history -----------------------------------------------------


def _versions(platform, *stacks) -> dict[str, int]:
    return {
        s.name: s.version for stack in stacks for s in engine.stack_services(platform.client, stack)
    }


def _recorded_deploy(settings, platform, command: str) -> None:
    """A deploy as `invoke deploy.env` makes it: under the lock, recorded in the history."""
    with run.operation(settings, "deploy", "dev", command, client=platform.client) as op:
        result = deploy.apply(
            settings, "dev", tunnel=False, timeout=300, report=print, client=platform.client
        )
        op.stacks = result.rendered


def _container(platform, service: str) -> dict:
    spec = platform.client.services.get(service).attrs["Spec"]
    return spec["TaskTemplate"]["ContainerSpec"]


def test_diff_deploy_and_rollback_of_a_config_and_an_image(dev, tmp_path):
    exporter_ref = dev.require("POSTGRES_EXPORTER_IMAGE")
    settings = dataclasses.replace(dev.settings, values={**dev.settings.values, **KEEP})
    _recorded_deploy(settings, dev, "deploy.env --name=dev (the repository's files)")

    values = dev.secrets()
    connect = dict(
        host="127.0.0.1",
        port=dev.port(5432),
        user=values["dev_postgres_user"],
        password=values["dev_postgres_password"],
        dbname=values["dev_postgres_db"],
        connect_timeout=10,
    )
    with psycopg.connect(**connect) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rollback_rows (n int)")
        conn.execute("DELETE FROM rollback_rows")
        conn.execute("INSERT INTO rollback_rows SELECT generate_series(1, 100)")
    cache = redis.Redis(
        host="127.0.0.1", port=dev.port(6379), password=values["dev_redis_password"]
    )
    cache.mset({f"rollback:{i}": str(i) for i in range(100)})

    # The changed platform: redis.conf gets a line, the exporter another tag of its image.
    for folder in ("stacks", "configs"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    redis_conf = tmp_path / "configs" / "redis" / "redis.conf"
    redis_conf.write_text(redis_conf.read_text() + "# changed by the acceptance suite\n")
    new_ref = exporter_ref.rsplit(":", 1)[0] + ":acceptance-rollback"
    for index in range(len(dev.swarm.nodes)):
        tagged = dev.node(index).run(f"docker tag {exporter_ref} {new_ref}")
        assert tagged.rc == 0, tagged.stderr
    changed = dataclasses.replace(
        settings, root=tmp_path, images={**settings.images, "POSTGRES_EXPORTER_IMAGE": new_ref}
    )
    old_conf = _container(dev, "dev_redis")["Configs"][0]["ConfigName"]

    # The live diff beforehand: exactly those two changes.
    diffs = diff.live_diff(changed, "dev", tunnel=False, client=dev.client)
    changing = {
        s.service: s.changes for ss in diffs.values() for s in ss if s.status != "unchanged"
    }
    assert set(changing) == {"dev_redis", "dev_postgres-exporter"}, diffs
    assert changing["dev_postgres-exporter"] == (f"image {exporter_ref} -> {new_ref}",)
    ((conf_line),) = changing["dev_redis"]
    assert conf_line.startswith("config dev_redis_conf changed ("), conf_line
    # The command line: the image override alone, and --exit-code for a CI gate.
    cli = dev.invoke(
        "deploy.env", "--name=dev", "--no-tunnel", "--diff", "--exit-code",
        POSTGRES_EXPORTER_IMAGE=new_ref,
    )  # fmt: skip
    assert cli.returncode == 2, cli.stderr
    assert f"  dev_postgres-exporter: image {exporter_ref} -> {new_ref}" in cli.stdout
    assert (
        "  dev_redis: unchanged" in cli.stdout
        and "stack core: 0 services would change" in cli.stdout
    )
    planned = dev.invoke(
        "deploy.env", "--name=dev", "--no-tunnel", "--dry-run", POSTGRES_EXPORTER_IMAGE=new_ref
    )
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.startswith("plan for dev (dry run: nothing is changed)")
    assert f"  dev_postgres-exporter: image {exporter_ref} -> {new_ref}" in planned.stdout
    calm = dev.invoke("deploy.env", "--name=dev", "--no-tunnel", "--diff", "--exit-code")
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert "stack dev: 0 services would change" in calm.stdout

    before = _versions(dev, "core", "dev")
    _recorded_deploy(changed, dev, "deploy.env --name=dev (changed config and image)")
    middle = _versions(dev, "core", "dev")
    assert {n for n in middle if middle[n] != before[n]} == {"dev_redis", "dev_postgres-exporter"}
    assert _container(dev, "dev_postgres-exporter")["Image"] == new_ref
    new_conf = _container(dev, "dev_redis")["Configs"][0]["ConfigName"]
    assert new_conf != old_conf
    assert old_conf in {c.name for c in dev.client.configs.list()}, "kept for the rollback"

    preview = dev.invoke("rollback.env", "--name=dev", "--dry-run", **KEEP)
    assert preview.returncode == 0, preview.stderr
    assert "stack dev: 2 services would change, " in preview.stdout, preview.stdout
    assert f"  dev_postgres-exporter: image {new_ref} -> {exporter_ref}" in preview.stdout
    assert _versions(dev, "core", "dev") == middle, "a dry run changed something"

    rolled = dev.invoke("rollback.env", "--name=dev", "--message=back", **KEEP)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    after = _versions(dev, "core", "dev")
    assert {n for n in after if after[n] != middle[n]} == {"dev_redis", "dev_postgres-exporter"}
    assert _container(dev, "dev_postgres-exporter")["Image"] == exporter_ref
    assert _container(dev, "dev_redis")["Configs"][0]["ConfigName"] == old_conf
    # What runs is the repository's files again: a deploy of them changes nothing.
    assert "dev: up to date, 0 services changed" in dev.apply("dev", settings=settings)

    def rows():
        with psycopg.connect(**connect) as conn:
            return conn.execute("SELECT count(*) FROM rollback_rows").fetchone()[0]

    assert dev.wait_for(rows, what="dev Postgres after the rollback") == 100
    keys = dev.wait_for(lambda: len(cache.keys("rollback:*")), what="dev Redis after the rollback")
    assert keys == 100

    shown = dev.invoke("history", "--name=dev", "--json", **KEEP)
    assert shown.returncode == 0, shown.stderr
    records = json.loads(shown.stdout)[-3:]
    assert [(r["action"], r["result"]) for r in records] == [
        ("deploy", "ok"), ("deploy", "ok"), ("rollback", "ok"),
    ]  # fmt: skip
    assert records[2]["message"] == "back" and records[2]["command"] == "rollback.env --name=dev"
    for record, (old_image, new_image), (was, now) in (
        (records[1], (exporter_ref, new_ref), (old_conf, new_conf)),
        (records[2], (new_ref, exporter_ref), (new_conf, old_conf)),
    ):
        services = {s["service"]: s for s in record["services"]}
        assert set(services) == {"dev_redis", "dev_postgres-exporter"}, record
        assert services["dev_postgres-exporter"]["image"] == [old_image, new_image]
        assert services["dev_redis"]["configs"] == {"dev_redis_conf": [was, now]}
    text = dev.invoke("history", "--name=dev", **KEEP).stdout
    assert f"#{records[2]['seq']}" in text and "rollback.env --name=dev  ok  'back'" in text

    # No secret value in any record, the stored stacks included.
    stored = " ".join(
        gzip.decompress(base64.b64decode(c.attrs["Spec"]["Data"])).decode()
        for c in dev.client.configs.list(filters={"label": history.LABEL_HISTORY})
    )
    secret = [k for k in values if any(w in k for w in ("password", "key", "token", "secret"))]
    leaked = [key for key in secret if str(values[key]) in stored]
    assert not leaked, f"secret values in the history: {leaked}"
