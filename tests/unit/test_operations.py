"""The deploy lock, the history records, the live diff and rollback's choice, without a
daemon: what they compute from records and specs. The swarm side: tests/acceptance/test_lock.py."""

from __future__ import annotations

import base64

import pytest

from infra.errors import SettingsError
from infra.operations import config, diff, history, lock, report, rollback
from infra.plan import LABEL_SPEC_HASH
from infra.settings import REPO_ROOT, load_settings
from tests.unit.test_backup import one_line_error
from tests.unit.test_tasks import operator_env as operator_env_fixture
from tests.unit.test_tasks import run

operator_env = operator_env_fixture  # the same daemon-less environment as test_tasks.py

# --- settings --------------------------------------------------------------------------


def test_operating_settings_have_documented_defaults(settings):
    assert config.number(settings.values, "DEPLOY_LOCK_TTL") == 1800
    assert config.number(settings.values, "HISTORY_KEEP") == 100
    assert config.number(settings.values, "ROLLBACK_KEEP") == 3


@pytest.mark.parametrize(
    "name, value",
    [("DEPLOY_LOCK_TTL", "10m"), ("HISTORY_KEEP", "0"), ("ROLLBACK_KEEP", "-1")],
    ids=["ttl-with-unit", "no-history", "negative-keep"],
)
def test_a_bad_operating_setting_is_one_clear_error(environ, name, value):
    with pytest.raises(SettingsError) as raised:
        load_settings(REPO_ROOT, {**environ, name: value})
    message = str(raised.value)
    assert message.startswith(f"{name}={value!r}") and "whole number" in message
    assert f"default {config.DEFAULTS[name]}" in message


# --- the lock --------------------------------------------------------------------------


def test_docker_times_with_nanoseconds_are_read_to_the_microsecond():
    assert lock.parse_time("2026-12-01T17:02:03.123456789Z") == pytest.approx(
        1796144523.123456, abs=1e-6
    )
    assert lock.parse_time("2026-12-01T17:02:03Z") == 1796144523.0


def test_the_holder_is_the_ci_job_under_github_actions():
    who = lock.whoami(
        {
            "GITHUB_ACTIONS": "true",
            "GITHUB_REPOSITORY": "org/infra",
            "GITHUB_RUN_ID": "42",
            "GITHUB_JOB": "deploy",
        }
    )
    assert who.startswith("github-actions org/infra run 42 job deploy")
    assert "@" in lock.whoami({})


def _lock_config(created: str, ttl: int, message: str = "") -> dict:
    holder = lock.Holder("ana@ops1", "deploy.env --name=prod", message, ttl, 77)
    return {
        "ID": "abc",
        "CreatedAt": created,
        "Spec": {"Name": lock.LOCK_NAME, "Data": base64.b64encode(holder.data()).decode()},
    }


def test_a_holder_record_names_who_what_and_when_it_expires():
    holder = lock.Holder.from_config(_lock_config("2026-12-01T17:00:00.5Z", 600, "hotfix"))
    assert (holder.who, holder.pid, holder.id) == ("ana@ops1", 77, "abc")
    line = holder.describe(now=holder.taken + 100)
    assert line == (
        "ana@ops1 (pid 77: deploy.env --name=prod, 'hotfix') since 2026-12-01 17:00:00 UTC, "
        "expires in 501 s"
    )
    assert not holder.expired(holder.taken + 599)
    assert holder.expired(holder.taken + 600)
    assert "expired 5 s ago" in holder.describe(now=holder.taken + 605)


# --- history ---------------------------------------------------------------------------


def _snapshot(image: str, conf: str, version: int) -> dict:
    return {
        "dev_redis": {
            "image": image,
            "configs": {"dev_redis_conf": conf},
            "secrets": {"dev_redis_password": "dev_redis_password-111111111111"},
            "spec_hash": "h",
            "version": version,
        }
    }


def test_changes_name_each_updated_service_with_old_and_new_image_and_versions():
    before = {
        **_snapshot("redis:7.4.7", "dev_redis_conf-aaaaaaaaaaaa", 10),
        "dev_postgres": {
            "image": "pg",
            "configs": {},
            "secrets": {},
            "spec_hash": "p",
            "version": 3,
        },
    }
    after = {
        **_snapshot("redis:7.4.8", "dev_redis_conf-bbbbbbbbbbbb", 14),
        "dev_postgres": before["dev_postgres"],
    }
    (entry,) = history.changes(before, after)
    assert entry["service"] == "dev_redis" and entry["change"] == "updated"
    assert entry["image"] == ["redis:7.4.7", "redis:7.4.8"]
    assert entry["configs"] == {
        "dev_redis_conf": ["dev_redis_conf-aaaaaaaaaaaa", "dev_redis_conf-bbbbbbbbbbbb"]
    }
    assert entry["secrets"] == {}
    line = report.service_line(entry)
    assert line == (
        "dev_redis: updated; image redis:7.4.7 -> redis:7.4.8; "
        "config dev_redis_conf aaaaaaaaaaaa -> bbbbbbbbbbbb"
    )


def test_added_and_removed_services_are_changes():
    added = history.changes({}, _snapshot("redis:7.4.7", "c-1", 1))
    removed = history.changes(_snapshot("redis:7.4.7", "c-1", 1), {})
    assert [e["change"] for e in added + removed] == ["added", "removed"]


def test_a_record_survives_its_round_trip_through_a_config():
    record = history.new_record("ana@ops1", "deploy.env --name=dev", "deploy", "dev", "why")
    record.seq, record.result = 7, history.OK
    record.stacks = {"dev": {"services": {}, "configs": {}}}
    attrs = {"Spec": {"Data": base64.b64encode(history._encode(record)).decode()}}
    assert history._decode(attrs) == record
    assert history._decode({"Spec": {"Data": base64.b64encode(b"not gzip").decode()}}) is None


RENDERED = {
    "services": {
        "redis": {
            "image": "redis:7.4.7",
            "configs": [{"source": "redis_conf", "target": "/etc/redis.conf"}],
            "secrets": ["redis_password"],
            "deploy": {"labels": {LABEL_SPEC_HASH: "new"}},
        }
    },
    "configs": {"redis_conf": {"name": "dev_redis_conf-bbbbbbbbbbbb", "file": "/repo/x.conf"}},
    "secrets": {"redis_password": {"name": "dev_redis_password-111111111111", "external": True}},
}


def test_a_kept_stack_refers_to_its_configs_and_secrets_by_name_only():
    kept = history.re_applicable(RENDERED)
    assert kept["configs"] == {
        "redis_conf": {"name": "dev_redis_conf-bbbbbbbbbbbb", "external": True}
    }
    assert history.object_names(kept) == {
        "dev_redis_conf-bbbbbbbbbbbb",
        "dev_redis_password-111111111111",
    }
    assert "file" in RENDERED["configs"]["redis_conf"], "the rendered stack itself is unchanged"


def _record(seq: int, action: str, result: str, spec_hash: str) -> history.Record:
    rendered = {"services": {"redis": {"deploy": {"labels": {LABEL_SPEC_HASH: spec_hash}}}}}
    return history.Record(seq, 0.0, "ana", "cmd", action, "dev", result, stacks={"dev": rendered})


RECORDS = [
    _record(1, "deploy", "ok", "a"),
    _record(2, "deploy", "failed: timed out", "b"),
    _record(3, "stop", "ok", "x"),
    _record(4, "deploy", "ok", "c"),
]


def test_rollback_goes_to_the_newest_recorded_deploy_that_differs_from_what_runs():
    assert rollback.choose(RECORDS, "dev", {"dev_redis": "c"}).seq == 1
    assert rollback.choose(RECORDS, "dev", {"dev_redis": "a"}).seq == 4  # undoes a rollback
    assert rollback.choose(RECORDS, "dev", {"dev_redis": "c"}, to=4).seq == 4


def test_rollback_to_a_failed_or_unknown_record_lists_the_valid_ones():
    for to in (2, 3, 99):
        with pytest.raises(rollback.RollbackError) as raised:
            rollback.choose(RECORDS, "dev", {"dev_redis": "c"}, to=to)
        assert f"#{to} is not a successful deploy of dev" in str(raised.value)
        assert "#4, #1" in str(raised.value)
    with pytest.raises(rollback.RollbackError, match="no recorded deploy of prod"):
        rollback.choose(RECORDS, "prod", {})


# --- the live diff ---------------------------------------------------------------------


def _live(**changes) -> dict:
    container = {
        "Image": "redis:7.4.7@sha256:" + "0" * 64,
        "Env": ["TZ=UTC"],
        "Labels": {"com.docker.stack.namespace": "dev", "com.nextcandle.image": "redis"},
        "Configs": [{"ConfigName": "dev_redis_conf-aaaaaaaaaaaa"}],
        "Secrets": [{"SecretName": "dev_redis_password-111111111111"}],
    }
    container.update(changes)
    return {
        "Labels": {"com.docker.stack.namespace": "dev", LABEL_SPEC_HASH: "old"},
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {
                "Limits": {"NanoCPUs": 200_000_000, "MemoryBytes": 256 * 1024**2},
                "Reservations": {"NanoCPUs": 50_000_000, "MemoryBytes": 64 * 1024**2},
            },
        },
        "EndpointSpec": {
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": 6379,
                    "PublishedPort": 6379,
                    "PublishMode": "host",
                }
            ]
        },
    }


def _wanted(**changes) -> dict:
    service = {
        "image": "redis:7.4.7",
        "environment": {"TZ": "UTC"},
        "labels": {"com.nextcandle.image": "redis"},
        "configs": [{"source": "redis_conf", "target": "/etc/redis.conf"}],
        "secrets": ["redis_password"],
        "ports": [{"mode": "host", "target": 6379, "published": "6379", "protocol": "tcp"}],
        "deploy": {
            "labels": {LABEL_SPEC_HASH: "new"},
            "resources": {
                "limits": {"cpus": "0.2", "memory": "268435456"},
                "reservations": {"cpus": "0.05", "memory": "64M"},
            },
        },
    }
    service.update(changes)
    return service


RENDERED_NAMES = {
    "configs": {"redis_conf": {"name": "dev_redis_conf-aaaaaaaaaaaa"}},
    "secrets": {"redis_password": {"name": "dev_redis_password-111111111111"}},
}


def test_a_service_with_its_hash_is_unchanged():
    live = _live()
    live["Labels"][LABEL_SPEC_HASH] = "new"
    assert diff.compare("dev_redis", _wanted(), RENDERED_NAMES, live).status == diff.UNCHANGED


def test_the_same_definition_in_the_engines_terms_has_no_named_change():
    found = diff.compare("dev_redis", _wanted(), RENDERED_NAMES, _live())
    assert found.status == diff.CHANGED
    assert found.changes == (
        "definition changed (command, health check, mounts, networks, placement or update policy)",
    )


@pytest.mark.parametrize(
    "wanted, rendered, expected",
    [
        (
            {"image": "redis:7.4.8"},
            RENDERED_NAMES,
            "image redis:7.4.7 -> redis:7.4.8",
        ),
        (
            {},
            {**RENDERED_NAMES, "configs": {"redis_conf": {"name": "dev_redis_conf-bbbbbbbbbbbb"}}},
            "config dev_redis_conf changed (aaaaaaaaaaaa -> bbbbbbbbbbbb)",
        ),
        (
            {"environment": {"TZ": "Asia/Seoul", "EXTRA": "x"}},
            RENDERED_NAMES,
            "environment changed (EXTRA, TZ)",
        ),
        (
            {"deploy": {"labels": {LABEL_SPEC_HASH: "new"}}},
            RENDERED_NAMES,
            "resources changed",
        ),
        ({"ports": []}, RENDERED_NAMES, "ports changed"),
        ({"labels": {"com.nextcandle.image": "other"}}, RENDERED_NAMES, "labels changed"),
    ],
    ids=["image", "config", "environment", "resources", "ports", "labels"],
)
def test_each_kind_of_change_is_named(wanted, rendered, expected):
    found = diff.compare("dev_redis", _wanted(**wanted), rendered, _live())
    assert len(found.changes) == 1 and found.changes[0].startswith(expected), found.changes
    assert "Asia/Seoul" not in found.line, "values are never printed, only names"


def test_a_label_carrying_the_image_reference_changes_with_the_image_silently():
    wanted = _wanted(image="redis:7.4.8", labels={"com.nextcandle.image": "redis:7.4.8"})
    live = _live(
        Labels={"com.docker.stack.namespace": "dev", "com.nextcandle.image": "redis:7.4.7"}
    )
    found = diff.compare("dev_redis", wanted, RENDERED_NAMES, live)
    assert found.changes == ("image redis:7.4.7 -> redis:7.4.8",)


def test_the_diff_is_summed_up_per_stack():
    diffs = {
        "dev": [
            diff.ServiceDiff("dev_postgres", diff.UNCHANGED),
            diff.ServiceDiff("dev_redis", diff.CHANGED, ("image a -> b",)),
            diff.ServiceDiff("dev_new", diff.ADDED, ("added",)),
        ]
    }
    assert diff.format_diff(diffs) == [
        "stack dev: 2 services would change, 1 unchanged",
        "  dev_postgres: unchanged",
        "  dev_redis: image a -> b",
        "  dev_new: added",
    ]
    assert diff.anything_changes(diffs)
    assert not diff.anything_changes({"dev": diffs["dev"][:1]})


# --- the command line, without a daemon --------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("deploy.env", "--name=dev", "--diff"),
        ("deploy.env", "--name=dev", "--diff", "--exit-code"),
        ("lock.status",),
        ("lock.release", "--yes"),
        ("history",),
        ("rollback.env", "--name=dev"),
    ],
    ids=" ".join,
)
def test_tasks_that_need_the_swarm_say_so_in_one_line(operator_env, args):
    line = one_line_error(run(list(args), operator_env))
    assert line.startswith("error: Docker is not reachable at "), line


@pytest.mark.parametrize(
    "args, expected",
    [
        (("history", "--name=qa"), "error: unknown"),
        (("rollback.env", "--name=qa"), "error: unknown"),
        (("deploy.env", "--name=dev", "--lock-wait=soon"), "'soon'"),
    ],
    ids=["history-unknown-stack", "rollback-unknown-env", "lock-wait-not-a-number"],
)
def test_bad_arguments_are_one_line(operator_env, args, expected):
    result = run(list(args), operator_env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
