"""UPDATE_MONITOR: one monitor period for every update and rollback of the rendered stacks
(a test swarm's), or, unset, the stack files' own."""

from __future__ import annotations

import pytest
import yaml

from infra import deploy, engine, report
from infra import plan as planning
from infra.catalog import STACKS
from infra.errors import SettingsError
from infra.secrets import generate_values
from infra.settings import REPO_ROOT, load_settings
from tests.stack_cli import needs_stack_config


def _monitors(rendered: dict) -> dict[str, str]:
    """`<service> <update_config|rollback_config>` -> its monitor period, as rendered."""
    return {
        f"{name} {key}": (service.get("deploy") or {})[key].get("monitor")
        for name, service in rendered["services"].items()
        for key in ("update_config", "rollback_config")
        if key in (service.get("deploy") or {})
    }


def _values(settings) -> dict[str, str]:
    # The tunnel's token is the operator's, never generated: any value renders core's tunnel.
    return {**generate_values(settings), "cloudflare_tunnel_token": "a-token"}


def _rendered(settings, stack: str) -> dict:
    return deploy.render(planning.plan_stack(stack, settings, _values(settings)))


@needs_stack_config
@pytest.mark.parametrize("stack", STACKS)
def test_by_default_every_service_keeps_the_stack_files_monitor(settings, stack):
    assert settings.update_monitor == ""
    rendered = _rendered(settings, stack)
    monitors = _monitors(rendered)
    assert monitors, f"stack {stack} has no update or rollback config"
    files = planning.plan_stack(stack, settings, None).files
    own = engine.render_stack([str(p) for p in files], _rendered_variables(settings, stack))
    assert monitors == _monitors(own)


def _rendered_variables(settings, stack: str) -> dict:
    return planning.plan_stack(stack, settings, _values(settings)).variables


@needs_stack_config
@pytest.mark.parametrize("stack", STACKS)
def test_update_monitor_sets_every_update_and_rollback_monitor(environ, stack, tmp_path):
    settings = load_settings(REPO_ROOT, {**environ, "UPDATE_MONITOR": "5s"})
    rendered = _rendered(settings, stack)
    monitors = _monitors(rendered)
    assert monitors and set(monitors.values()) == {"5s"}, monitors
    # ... and what deploy hands `docker stack deploy` still passes the CLI's own schema.
    path = tmp_path / "monitored.yml"
    path.write_text(yaml.safe_dump(deploy._escape_dollars(rendered), sort_keys=False))
    again = engine.render_stack([str(path)], _rendered_variables(settings, stack))
    assert set(_monitors(again).values()) == {"5s"}


def test_the_override_leaves_everything_else_and_the_input_alone():
    rendered = {
        "services": {
            "a": {
                "deploy": {
                    "update_config": {"monitor": "30s", "order": "start-first"},
                    "rollback_config": {"monitor": "30s"},
                }
            },
            "b": {"deploy": {}},
        }
    }
    changed = planning.override_update_monitor(rendered, "2s")
    assert changed["services"]["a"]["deploy"] == {
        "update_config": {"monitor": "2s", "order": "start-first"},
        "rollback_config": {"monitor": "2s"},
    }
    assert changed["services"]["b"] == {"deploy": {}}
    assert rendered["services"]["a"]["deploy"]["update_config"]["monitor"] == "30s"
    assert planning.override_update_monitor(rendered, "") is rendered


@pytest.mark.parametrize("value", ["5s", "1m", "500ms", "30s"])
def test_update_monitor_accepts_a_duration(environ, value):
    settings = load_settings(REPO_ROOT, {**environ, "UPDATE_MONITOR": value})
    assert planning.plan_stack("dev", settings, None).update_monitor == value


@pytest.mark.parametrize("value", ["5", "0s", "-5s", "fast", "5 s", "1h"])
def test_update_monitor_refuses_anything_else(environ, value):
    with pytest.raises(SettingsError, match=r"^UPDATE_MONITOR=.* is not a duration like 5s"):
        load_settings(REPO_ROOT, {**environ, "UPDATE_MONITOR": value})


def test_dry_run_says_when_updates_are_monitored_for_another_period(environ, settings):
    monitored = load_settings(REPO_ROOT, {**environ, "UPDATE_MONITOR": "5s"})
    for chosen, shown in ((settings, False), (monitored, True)):
        stack = planning.plan_stack("dev", chosen, None)
        text = report.format_plan(planning.Plan(networks=(), stacks=(stack,)), chosen)
        assert ("monitored for 5s (UPDATE_MONITOR)" in text) is shown, text
