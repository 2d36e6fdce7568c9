from __future__ import annotations

import pytest

from infra import plan as planning
from infra.catalog import CORE_PORTS, DATA_OWNERS, ENVIRONMENTS, STACKS
from infra.errors import SettingsError
from infra.secrets import generate_values, with_env_tokens
from infra.settings import REPO_ROOT, load_settings
from infra.targets import SwarmNode

ALL_STACKS = list(STACKS)
NODES = (SwarmNode("node-a", "10.0.0.2"), SwarmNode("node-b", "10.0.0.3"))


@pytest.fixture
def values(settings):
    return with_env_tokens(
        generate_values(settings),
        settings,
    ) | {"cloudflare_tunnel_token": "token-for-tests", "runner_token": "runner-for-tests"}


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_names_are_content_hashed_and_stable(settings, values, stack):
    first = planning.plan_stack(stack, settings, values, nodes=NODES)
    second = planning.plan_stack(stack, settings, values, nodes=NODES[::-1])
    for obj in (*first.secrets, *first.configs):
        assert obj.name == planning.versioned_name(stack, obj.key, obj.data)
        assert obj.name.startswith(f"{stack}_{obj.key}-")
    assert [o.name for o in first.secrets + first.configs] == [
        o.name for o in second.secrets + second.configs
    ]


def test_a_changed_secret_value_renames_only_its_secrets(settings, values):
    before = {o.key: o.name for o in planning.plan_stack("dev", settings, values).secrets}
    changed = {**values, "dev_redis_password": "another-password-of-enough-length-000000"}
    after = {o.key: o.name for o in planning.plan_stack("dev", settings, changed).secrets}
    renamed = {key for key in before if before[key] != after[key]}
    assert renamed == {"redis_password", "redis_auth_conf", "redis_exporter_passwords"}


def test_environments_use_their_own_postgres_config(settings, values):
    sources = {
        env: {c.key: c.source for c in planning.plan_stack(env, settings, values).configs}
        for env in ENVIRONMENTS
    }
    confs = {
        env: [s for s in srcs.values() if s.endswith(".conf") and "postgres" in s]
        for env, srcs in sources.items()
    }
    assert any(s.endswith("postgresql-prod.conf") for s in confs["prod"])
    assert not any(s.endswith("postgresql-prod.conf") for s in confs["dev"] + confs["stg"])


@pytest.mark.parametrize(
    ("env", "overlays"),
    [
        ("dev", ["env.postgres-port.yml", "env.redis-port.yml"]),
        ("stg", ["env.postgres-port.yml"]),
        ("prod", ["env.postgres-port.yml", "env.redis-port.yml"]),
    ],
)
def test_port_overlays_follow_the_environment_table(env, overlays):
    assert [p.name for p in planning.stack_files(env)] == ["env.yml", *overlays]


@pytest.mark.parametrize("env", list(ENVIRONMENTS))
def test_host_ports_off_leaves_out_the_port_overlays(env):
    assert [p.name for p in planning.stack_files(env, host_ports=False)] == ["env.yml"]


@pytest.mark.parametrize(
    ("variable", "value", "env", "ports"),
    [
        (None, None, "dev", {"postgres": 5432, "redis": 6379}),
        (None, None, "stg", {}),
        (None, None, "prod", {}),
        ("DEV_HOST_PORTS", "off", "dev", {}),
        ("STG_HOST_PORTS", "on", "stg", {"postgres": 5433}),
        ("PROD_HOST_PORTS", "ON", "prod", {"postgres": 5434, "redis": 6381}),
    ],
    ids=["dev-default", "stg-default", "prod-default", "dev-off", "stg-on", "prod-on"],
)
def test_plan_publishes_ports_by_the_host_ports_setting(
    environ, values, variable, value, env, ports
):
    extra = {variable: value} if variable else {}
    settings = load_settings(REPO_ROOT, {**environ, **extra})
    stack = planning.plan_stack(env, settings, values)
    assert dict(stack.ports) == ports
    overlays = [p.name for p in stack.files if p.name.endswith("-port.yml")]
    assert bool(overlays) == bool(ports)


def test_core_publishes_its_ports_whatever_the_environments_say(environ, values):
    off = {e.host_ports_variable: "off" for e in ENVIRONMENTS.values()}
    settings = load_settings(REPO_ROOT, {**environ, **off})
    assert planning.plan_stack("core", settings, values).ports == CORE_PORTS


def test_core_without_tunnel_leaves_out_cloudflared():
    assert [p.name for p in planning.stack_files("core", tunnel=False)] == ["core.yml"]
    assert [p.name for p in planning.stack_files("core")] == ["core.yml", "core.tunnel.yml"]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_data_directories_have_the_owner_their_image_expects(settings, values, stack):
    for directory in planning.plan_stack(stack, settings, values).data_dirs:
        assert directory.path.is_relative_to(settings.data_root / stack)
        service = directory.path.name
        assert service in DATA_OWNERS, f"{service}: add its owner to catalog.DATA_OWNERS"
        assert (directory.uid, directory.gid) == DATA_OWNERS[service]


def test_without_secrets_file_secret_names_are_placeholders(settings):
    stack = planning.plan_stack("dev", settings, None)
    assert stack.secrets and all(o.name.endswith("-<new>") for o in stack.secrets)


@pytest.mark.parametrize(
    ("target", "order"),
    [
        ("core", ("core",)),
        ("dev", ("core", "dev")),
        ("runner", ("core", "runner")),
        ("all", ("core", "shared", "dev", "stg", "prod")),
    ],
)
def test_core_is_deployed_first(target, order):
    assert planning.deploy_order(target) == order


def test_interpolation_refuses_variables_infra_does_not_set():
    with pytest.raises(SettingsError, match=r"\$\{NOPE\}"):
        planning.interpolate("${NOPE}/x", {}, "env.yml")
    assert planning.interpolate("${A:-d}/${B:?m}", {"B": "b"}, "x") == "d/b"


def test_stack_is_rendered_from_its_files_and_deployed_from_stdin(settings, values):
    stack = planning.plan_stack("stg", settings, values)
    render = stack.config_command()
    assert render[:3] == ["docker", "stack", "config"]
    assert [render[i + 1] for i, part in enumerate(render) if part == "-c"] == [
        str(p) for p in stack.files
    ]
    deploy = stack.deploy_command()
    assert deploy[:3] == ["docker", "stack", "deploy"]
    assert deploy[-3:] == ["-c", "-", "stg"]


def test_a_stack_file_is_read_again_once_it_changes_and_callers_get_their_own_copy(tmp_path):
    path = tmp_path / "stack.yml"
    path.write_text("services:\n  web:\n    image: a\n")
    first = planning._read_stack_file(path)
    first["services"]["web"]["image"] = "changed by a caller"
    assert planning._read_stack_file(path) == {"services": {"web": {"image": "a"}}}
    path.write_text("services:\n  web:\n    image: bb\n")
    assert planning._read_stack_file(path) == {"services": {"web": {"image": "bb"}}}
    path.write_text("- not a mapping\n")
    with pytest.raises(SettingsError, match="is not a compose file"):
        planning._read_stack_file(path)
