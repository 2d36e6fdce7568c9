"""Render every stack for every environment with `docker stack config` and check the contract:
images, ports, resources, policies and that no secret value leaks into what is deployed."""

from __future__ import annotations

import re

import pytest

from infra import engine
from infra import plan as planning
from infra.catalog import ENVIRONMENTS, STACKS
from infra.secrets import DOCKER_SECRETS, generate_values
from infra.settings import REPO_ROOT, load_settings
from tests.stack_cli import needs_stack_config

# DESIGN.md's per-environment table, written out here on purpose: the catalog must match it.
# An environment publishes its ports only while <ENV>_HOST_PORTS is on.
DESIGN_PORTS = {
    "core": {80, 443, 8080},
    "dev": {5432, 6379},
    "stg": {5433},
    "prod": {5434, 6381},
    "shared": set(),
    "runner": set(),
}
DESIGN_RESOURCES = {  # (cpu reservation, cpu limit, memory reservation, memory limit)
    ("dev", "postgres"): ("0.10", "0.50", "256M", "512M"),
    ("stg", "postgres"): ("0.10", "0.50", "256M", "512M"),
    ("prod", "postgres"): ("0.20", "1.00", "512M", "1G"),
    ("dev", "redis"): ("0.05", "0.20", "64M", "256M"),
    ("stg", "redis"): ("0.05", "0.20", "64M", "256M"),
    ("prod", "redis"): ("0.10", "0.50", "128M", "512M"),
}
GLOBAL_SERVICES = {"alloy", "cadvisor", "node-exporter", "docker-proxy"}
MANAGER_ONLY = {"traefik", "runner", "docker-proxy"}
# Images with no tool to run a health check with (scratch) or that carry their own.
NO_HEALTHCHECK = {"redis-exporter", "runner", "cadvisor"}


pytestmark = needs_stack_config


@pytest.fixture
def values(settings):
    return {
        **generate_values(settings),
        "cloudflare_tunnel_token": "tunnel-token-value-for-tests-0000000000",
        "runner_token": "runner-token-value-for-tests-00000000000",
    }


@pytest.fixture
def ports_on(environ):
    """Settings with every environment's host ports on: the whole table published."""
    on = {env.host_ports_variable: "on" for env in ENVIRONMENTS.values()}
    return load_settings(REPO_ROOT, {**environ, **on})


@pytest.fixture(params=list(STACKS))
def rendered(request, settings, values):
    stack = planning.plan_stack(request.param, settings, values)
    return stack, engine.render_stack([str(p) for p in stack.files], stack.variables)


def _memory(value) -> str:
    units = {1024**3: "G", 1024**2: "M"}
    if isinstance(value, int | float) or str(value).isdigit():
        for size, unit in units.items():
            if int(value) % size == 0:
                return f"{int(value) // size}{unit}"
    return str(value)


def _cpus(value) -> str:
    return f"{float(value):.2f}"


def test_every_image_comes_pinned_from_the_image_file(rendered, settings):
    stack, config = rendered
    for name, service in config["services"].items():
        assert service["image"] in settings.images.values(), f"{stack.name}_{name}"


def _published(stack, config) -> set[int]:
    published = set()
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port["mode"] == "host", f"{stack.name}_{name} publishes {port} via ingress"
            published.add(int(port["published"]))
    return published


@pytest.mark.parametrize("name", list(STACKS))
def test_published_ports_are_host_mode_and_match_design(ports_on, values, name):
    stack = planning.plan_stack(name, ports_on, values)
    config = engine.render_stack([str(p) for p in stack.files], stack.variables)
    assert _published(stack, config) == DESIGN_PORTS[name]
    assert set(stack.ports.values()) == DESIGN_PORTS[name]


def test_by_default_only_dev_publishes_database_ports(settings, values):
    published = {}
    for name in ENVIRONMENTS:
        stack = planning.plan_stack(name, settings, values)
        config = engine.render_stack([str(p) for p in stack.files], stack.variables)
        published[name] = _published(stack, config)
    assert published == {"dev": DESIGN_PORTS["dev"], "stg": set(), "prod": set()}


@pytest.mark.parametrize("env", list(ENVIRONMENTS))
@pytest.mark.parametrize("setting", ["on", "off"])
def test_host_ports_setting_decides_what_the_rendered_stack_publishes(
    environ, values, env, setting
):
    variable = ENVIRONMENTS[env].host_ports_variable
    settings = load_settings(REPO_ROOT, {**environ, variable: setting})
    stack = planning.plan_stack(env, settings, values)
    config = engine.render_stack([str(p) for p in stack.files], stack.variables)
    expected = DESIGN_PORTS[env] if setting == "on" else set()
    assert _published(stack, config) == expected
    assert set(stack.ports.values()) == expected


def test_stg_redis_publishes_nothing(ports_on, values):
    stack = planning.plan_stack("stg", ports_on, values)
    config = engine.render_stack([str(p) for p in stack.files], stack.variables)
    assert "ports" not in config["services"]["redis"]


@pytest.mark.parametrize(("env", "service"), list(DESIGN_RESOURCES), ids=lambda v: str(v))
def test_environment_resources_match_design(settings, values, env, service):
    stack = planning.plan_stack(env, settings, values)
    config = engine.render_stack([str(p) for p in stack.files], stack.variables)
    resources = config["services"][service]["deploy"]["resources"]
    got = (
        _cpus(resources["reservations"]["cpus"]),
        _cpus(resources["limits"]["cpus"]),
        _memory(resources["reservations"]["memory"]),
        _memory(resources["limits"]["memory"]),
    )
    assert got == DESIGN_RESOURCES[(env, service)]


def test_every_service_has_limits_reservations_and_policies(rendered):
    stack, config = rendered
    for name, service in config["services"].items():
        where = f"{stack.name}_{name}"
        deploy = service["deploy"]
        assert deploy["resources"]["limits"].get("memory"), where
        assert deploy["resources"]["limits"].get("cpus"), where
        assert deploy["resources"]["reservations"].get("memory"), where
        assert deploy["restart_policy"]["condition"], where
        assert deploy["update_config"]["failure_action"] == "rollback", where
        assert deploy["update_config"]["order"] in ("start-first", "stop-first"), where
        assert "rollback_config" in deploy, where
        assert service["logging"]["driver"] == "json-file", where
        assert service["logging"]["options"]["max-size"], where


def test_long_running_services_never_stop_retrying(rendered):
    """A fault that outlasts a few restarts must not end a service for good (DESIGN 11)."""
    stack, config = rendered
    for name, service in config["services"].items():
        policy = service["deploy"]["restart_policy"]
        where = f"{stack.name}_{name}"
        assert policy["condition"] == "any", where
        assert policy.get("max_attempts", 0) == 0, where
        assert policy["delay"], where  # a pause between attempts, not a tight loop


def test_no_config_or_secret_is_mounted_inside_a_data_bind_mount(rendered):
    """Docker would leave a root-owned mount point file in the data directory for each."""
    stack, config = rendered
    for name, service in config["services"].items():
        binds = [
            v["target"].rstrip("/") + "/"
            for v in service.get("volumes", [])
            if v.get("type") == "bind" and v["target"] != "/var/run/docker.sock"
        ]
        files = [c["target"] for c in service.get("configs", [])]
        files += [s["target"] for s in service.get("secrets", []) if "/" in s.get("target", "")]
        inside = [f for f in files for b in binds if f.startswith(b)]
        assert not inside, f"{stack.name}_{name} mounts {inside} inside a bind mount"


def test_health_checks_wherever_the_image_allows(rendered):
    stack, config = rendered
    for name, service in config["services"].items():
        if name in NO_HEALTHCHECK:
            continue
        assert service.get("healthcheck", {}).get("test"), (
            f"{stack.name}_{name} has no health check"
        )


def _seconds(duration: str) -> float:
    """A compose duration as `docker stack config` writes it (1m30s, 500ms, 2s) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"([0-9.]+)(ms|us|h|m|s)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_health_checks_probe_often_while_starting_and_rarely_after(rendered):
    """start_interval during start_period, so a task is healthy seconds after it can be;
    interval, longer, for the rest of its life (engines from API 1.44 honour it)."""
    stack, config = rendered
    checked = 0
    for name, service in config["services"].items():
        check = service.get("healthcheck")
        if not check or check.get("disable"):
            continue
        where = f"{stack.name}_{name}"
        assert "start_interval" in check, f"{where} has no start_interval"
        assert "start_period" in check, f"{where} has no start_period"
        start_interval, interval = _seconds(check["start_interval"]), _seconds(check["interval"])
        assert 0 < start_interval <= 2, f"{where} start_interval {check['start_interval']}"
        assert start_interval < interval, f"{where}: start_interval is not below interval"
        assert _seconds(check["start_period"]) >= 10 * start_interval, where
        checked += 1
    assert checked, f"stack {stack.name} has no health check to look at"


def test_traefik_health_check_asks_the_ping_of_its_static_configuration(settings, values):
    """The probe is busybox wget (not `traefik healthcheck`, which starts the whole binary
    again), so it must ask what that subcommand asks: /ping on the entry point the static
    configuration gives ping, on that entry point's port, and fail on anything but 2xx."""
    import yaml

    static = yaml.safe_load((REPO_ROOT / "configs" / "traefik" / "traefik.yml").read_text())
    entry_point = static["ping"]["entryPoint"]
    port = static["entryPoints"][entry_point]["address"].rsplit(":", 1)[1]
    stack = planning.plan_stack("core", settings, values)
    config = engine.render_stack([str(p) for p in stack.files], stack.variables)
    test = config["services"]["traefik"]["healthcheck"]["test"]
    assert test == ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/ping"]


def test_collectors_are_global_and_traefik_runner_on_managers(rendered):
    stack, config = rendered
    for name, service in config["services"].items():
        deploy = service["deploy"]
        if name in GLOBAL_SERVICES:
            assert deploy.get("mode") == "global", name
        if name in MANAGER_ONLY:
            assert "node.role == manager" in deploy["placement"]["constraints"], name


def test_stateful_services_update_stop_first(settings, values):
    for env in ENVIRONMENTS:
        stack = planning.plan_stack(env, settings, values)
        config = engine.render_stack([str(p) for p in stack.files], stack.variables)
        for name in ("postgres", "redis"):
            assert config["services"][name]["deploy"]["update_config"]["order"] == "stop-first"


def test_no_secret_value_in_rendered_stack_or_command(rendered, values):
    stack, config = rendered
    text = repr(config) + " ".join(stack.deploy_command()) + repr(dict(stack.variables))
    for key, value in values.items():
        if key.endswith(("_user", "_db")):  # names, not secrets
            continue
        assert value not in text, f"{key} leaks into stack {stack.name}"


def test_services_get_secrets_as_files_not_environment(rendered, values):
    stack, config = rendered
    for name, service in config["services"].items():
        environment = service.get("environment") or {}
        for variable, value in environment.items():
            assert str(value) not in values.values() or variable.endswith("_FILE"), (
                f"{stack.name}_{name} {variable}"
            )


def test_every_declared_secret_has_a_renderer(rendered):
    stack, config = rendered
    assert set(config.get("secrets", {})) <= set(DOCKER_SECRETS[stack.name])


def test_every_container_is_labelled_with_its_image_for_the_log_collector(rendered):
    stack, config = rendered
    for name, service in config["services"].items():
        labels = service.get("labels") or {}
        assert labels.get("com.nextcandle.image") == service["image"], f"{stack.name}_{name}"
