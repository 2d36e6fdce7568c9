"""The companion that reaches a stateful task on another node: its spec, its name, what a
later run removes, and the Redis restore's job on the data node."""

from __future__ import annotations

import time

import pytest

from infra.backup import redis_remote, restore
from infra.backup.manifest import BackupError
from infra.errors import EngineError
from infra.swarm import companion

SECRET = {
    "File": {"Name": "postgres_password", "UID": "0", "GID": "0", "Mode": 292},
    "SecretID": "abc",
    "SecretName": "prod_postgres_password-1a2b3c",
}
TARGET = {
    "Name": "prod_postgres",
    "TaskTemplate": {
        "ContainerSpec": {
            "Image": "pgvector/pgvector:pg17@sha256:0123",
            "Secrets": [SECRET],
            "Env": ["POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password"],
            "Mounts": [
                {"Type": "bind", "Source": "/srv/data/prod/redis", "Target": "/data"},
            ],
        },
        "Networks": [{"Target": "net-backend", "Aliases": ["postgres"]}],
        "Placement": {"Constraints": ["node.labels.nextcandle.data.prod == true"]},
    },
}


def test_companion_is_pinned_to_this_node_with_the_targets_image_secrets_and_network():
    spec = companion.companion_spec("prod_postgres", TARGET, "node-here")
    assert spec["constraints"] == ["node.id == node-here"]
    assert spec["image"] == "pgvector/pgvector:pg17@sha256:0123"
    assert spec["secrets"] == [SECRET]  # mounted at the same paths as in the task
    assert spec["labels"] == {companion.COMPANION_LABEL: "prod_postgres"}


def test_companion_takes_the_network_but_not_its_alias():
    """With the alias, `postgres` on prod_backend would resolve to the companion too."""
    spec = companion.companion_spec("prod_postgres", TARGET, "node-here")
    assert spec["networks"] == ["net-backend"]


def test_companion_runs_only_a_sleep_with_no_environment_and_no_restart():
    spec = companion.companion_spec("prod_postgres", TARGET, "node-here")
    assert spec["command"] == ["sleep", str(companion.LIFETIME)]
    assert "env" not in spec and "environment" not in spec
    assert spec["restart_policy"]["Condition"] == "none"
    assert "placement" not in spec  # not the target's data label: this node, by id


def test_companion_names_are_recognisable_and_distinct():
    first = companion.companion_name("prod_redis")
    assert first.startswith("nextcandle-companion-prod_redis-")
    assert first != companion.companion_name("prod_redis")


def test_a_service_on_no_network_is_refused_in_one_line():
    bare = {"TaskTemplate": {"ContainerSpec": {"Image": "x"}, "Networks": []}}
    with pytest.raises(EngineError, match=r"^service prod_postgres is on no overlay network"):
        companion.companion_spec("prod_postgres", bare, "n")


@pytest.mark.parametrize(
    ("age", "states", "leftover"),
    [
        (60, ["running"], False),
        (60, ["pending"], False),
        (60, [], False),  # just created: its task is not even listed yet
        (60, ["complete"], True),
        (60, ["failed", "shutdown"], True),
        (companion.LIFETIME + 60, ["running"], True),
    ],
    ids=["running", "starting", "no-task-yet", "sleep-ended", "failed", "older-than-its-life"],
)
def test_what_a_later_run_removes(age, states, leftover):
    now = time.time()
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime(now - age))
    assert companion.is_leftover({"CreatedAt": created}, states, now) is leftover


def test_reach_in_its_own_task_has_no_host_and_no_extra_arguments():
    here = companion.Reach("prod_redis", None)
    assert not here.remote
    assert here.environment() == []
    assert here.redis_args() == []


def test_reach_from_a_companion_names_the_server_by_dns_never_a_password():
    there = companion.Reach("prod_redis", None, host="tasks.prod_redis", companion="c")
    assert there.remote
    assert there.environment() == ["PGHOST=tasks.prod_redis"]
    assert there.redis_args() == ["-h", "tasks.prod_redis"]


# --- the Redis restore on a remote data node ------------------------------------------------


def test_redis_data_directory_is_read_from_the_live_mount():
    assert redis_remote.data_directory(TARGET, "prod_redis") == "/srv/data/prod/redis"


def test_a_redis_without_its_data_mount_is_refused_in_one_line():
    spec = {"TaskTemplate": {"ContainerSpec": {"Mounts": []}}}
    with pytest.raises(BackupError, match=r"^prod_redis has no data directory bind-mounted"):
        redis_remote.data_directory(spec, "prod_redis")


def test_the_job_writes_the_same_aof_manifest_as_a_local_restore():
    command = redis_remote.job_command("/d/prod/redis", "/d/prod/redis.aside", "tasks.c")
    assert command[:2] == ["sh", "-c"]
    assert command[3:] == [
        "restore",
        "/d/prod/redis",
        "/d/prod/redis.aside",
        "tasks.c",
        str(redis_remote.TEMP_PORT),
        restore.aof_base_files()["appendonly.aof.manifest"].decode(),
    ]


def test_the_job_puts_the_old_directory_back_only_once_it_was_moved():
    """The trap that restores the old directory is set after the move: a failure before it
    (the directory missing, say) must not remove anything."""
    script = redis_remote._MOVE_AND_FETCH
    assert script.index('mv "$d" "$aside"') < script.index("trap ")
    assert "set -e" in script.split(";")[0]
