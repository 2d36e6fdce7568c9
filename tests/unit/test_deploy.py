"""The parts of a deploy that need no engine: the per-service hash that makes redeploys no-ops."""

from __future__ import annotations

import copy

import pytest

from infra.deploy import spec_hash

RENDERED = {
    "services": {
        "prometheus": {"image": "prom/prometheus:v3", "configs": [{"source": "prometheus"}]},
        "loki": {"image": "grafana/loki:3", "configs": [{"source": "loki"}]},
    },
    "configs": {
        "prometheus": {"name": "shared_prometheus-aaaa"},
        "loki": {"name": "shared_loki-bbbb"},
    },
}


def test_spec_hash_is_stable():
    service = RENDERED["services"]["prometheus"]
    assert spec_hash(service, RENDERED) == spec_hash(
        copy.deepcopy(service), copy.deepcopy(RENDERED)
    )


def test_a_changed_config_changes_only_the_services_that_mount_it():
    changed = copy.deepcopy(RENDERED)
    changed["configs"]["prometheus"]["name"] = "shared_prometheus-cccc"
    before = {name: spec_hash(s, RENDERED) for name, s in RENDERED["services"].items()}
    after = {name: spec_hash(s, changed) for name, s in changed["services"].items()}
    assert before["prometheus"] != after["prometheus"]
    assert before["loki"] == after["loki"]


def test_a_changed_definition_changes_the_hash():
    changed = copy.deepcopy(RENDERED)
    changed["services"]["loki"]["image"] = "grafana/loki:4"
    assert spec_hash(changed["services"]["loki"], changed) != spec_hash(
        RENDERED["services"]["loki"], RENDERED
    )


def test_dollars_of_a_rendered_stack_are_escaped_for_redeploy():
    from infra.deploy import _escape_dollars

    rendered = {"services": {"db": {"healthcheck": {"test": ["CMD-SHELL", 'x "$(cat f)"']}}}}
    escaped = _escape_dollars(rendered)
    assert escaped["services"]["db"]["healthcheck"]["test"][1] == 'x "$$(cat f)"'


def _state(**overrides):
    from infra.converge import ServiceState

    values = dict(
        name="dev_redis", mode="replicated", running=1, desired=1, update_state="", pending_tasks=0
    )
    return ServiceState(**{**values, **overrides})


def test_a_service_is_converged_when_its_tasks_run_the_current_spec():
    assert _state().converged
    assert not _state(running=0, pending_tasks=1).converged
    assert not _state(update_state="updating").converged


def test_an_update_still_rolling_back_has_not_converged():
    state = _state(update_state="rollback_started")
    assert not state.converged and not state.settled


def test_an_old_rollback_does_not_block_a_later_deploy_of_other_services():
    state = _state(update_state="rollback_completed")
    assert not state.converged  # for the deploy that caused it: a failure
    assert state.settled  # for later deploys that leave it alone: running as wanted


def test_a_new_service_whose_image_cannot_be_had_is_hopeless():
    errors = ("rejected: No such image: traefik:v3.6.15",) * 3
    assert _state(running=0, pending_tasks=1, errors=errors).missing_image
    assert not _state(running=0, pending_tasks=1, errors=errors[:2]).missing_image
    # During an update Swarm's failure action (rollback) decides, not us.
    assert not _state(running=0, update_state="updating", errors=errors).missing_image


@pytest.mark.parametrize(
    ("overrides", "health"),
    [
        ({}, "ok"),
        ({"running": 0, "pending_tasks": 1, "live_tasks": 1}, "starting"),
        ({"running": 0, "live_tasks": 1, "errors": ("rejected: bind source",)}, "retrying"),
        ({"running": 0, "live_tasks": 0, "errors": ("rejected: bind source",)}, "gave-up"),
        ({"update_state": "rollback_completed"}, "rolled-back"),
        ({"running": 0, "live_tasks": 1, "update_state": "rollback_started"}, "failed"),
        ({"update_state": "paused"}, "failed"),
        (
            {
                "running": 0,
                "live_tasks": 1,
                "update_state": "rollback_completed",
                "errors": ("rejected: bind source",),
            },
            "retrying",
        ),
    ],
    ids=[
        "running",
        "starting",
        "retrying",
        "swarm-gave-up",
        "rolled-back",
        "rolling-back",
        "update-paused",
        "failing-after-an-old-rollback",
    ],
)
def test_status_tells_a_service_swarm_gave_up_on_from_one_starting(overrides, health):
    assert _state(**overrides).health == health


def test_a_service_with_no_task_to_start_gave_up_but_an_updating_one_has_not():
    assert _state(running=0, live_tasks=0).gave_up
    assert not _state(running=0, live_tasks=1).gave_up  # waiting out its restart delay
    assert not _state(running=0, live_tasks=0, update_state="updating").gave_up
    assert not _state(mode="replicated-job", running=0, live_tasks=0).gave_up


@pytest.mark.parametrize(
    ("version", "warns"),
    [((1, 41), True), ((1, 43), True), ((1, 44), False), ((1, 47), False), ((2, 0), False)],
    ids=["docker-20.10", "docker-24", "docker-25", "docker-27", "api-2.0"],
)
def test_an_engine_that_ignores_start_interval_gets_one_warning_line(version, warns):
    from infra.engine import start_interval_warning

    line = start_interval_warning(version)
    assert bool(line) == warns
    if warns:
        assert "\n" not in line and "start_interval" in line and "Docker 25" in line
