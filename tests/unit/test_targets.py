"""node-exporter's Prometheus targets, generated from the swarm's node list: the file, the
plan's content-hashed config, and what a plan without a daemon says."""

from __future__ import annotations

import dataclasses
import json

import pytest

from infra import engine, targets
from infra import plan as planning
from infra.errors import SettingsError
from infra.report import format_plan
from infra.secrets import generate_values
from infra.targets import SwarmNode


def _api_node(hostname, addr, manager_addr=None, availability="active", node_id="id"):
    """A node as the engine's /nodes endpoint returns it (the fields read)."""
    attrs = {
        "ID": node_id,
        "Description": {"Hostname": hostname},
        "Spec": {"Availability": availability},
        "Status": {"State": "ready", "Addr": addr},
    }
    if manager_addr:
        attrs["ManagerStatus"] = {"Addr": manager_addr, "Leader": True}
    return attrs


@pytest.mark.parametrize(
    ("attrs", "node"),
    [
        (_api_node("worker-1", "10.0.0.3"), SwarmNode("worker-1", "10.0.0.3")),
        (
            _api_node("manager-1", "0.0.0.0", manager_addr="10.0.0.2:2377"),  # noqa: S104
            SwarmNode("manager-1", "10.0.0.2"),
        ),
        (
            _api_node("manager-6", "", manager_addr="[2001:db8::2]:2377"),
            SwarmNode("manager-6", "2001:db8::2"),
        ),
        (_api_node("broken", "0.0.0.0"), SwarmNode("broken", "")),  # noqa: S104
        (
            _api_node("drained", "10.0.0.9", availability="drain"),
            SwarmNode("drained", "10.0.0.9", drained=True),
        ),
    ],
    ids=["worker", "manager-listening-on-any", "manager-ipv6", "no-address", "drained"],
)
def test_nodes_are_read_from_the_engines_node_list(attrs, node):
    assert SwarmNode.from_api(attrs) == node


def test_the_targets_file_has_one_group_per_node_labelled_with_its_host_name():
    nodes = [SwarmNode("node-b", "10.0.0.3"), SwarmNode("node-a", "10.0.0.2")]
    assert json.loads(targets.node_exporter_targets(nodes)) == [
        {"targets": ["10.0.0.2:9100"], "labels": {"node": "node-a"}},
        {"targets": ["10.0.0.3:9100"], "labels": {"node": "node-b"}},
    ]


def test_drained_nodes_and_nodes_without_an_address_are_left_out_and_said_so():
    nodes = [
        SwarmNode("node-a", "10.0.0.2"),
        SwarmNode("spare", "10.0.0.8", drained=True),
        SwarmNode("broken", ""),
    ]
    assert json.loads(targets.node_exporter_targets(nodes)) == [
        {"targets": ["10.0.0.2:9100"], "labels": {"node": "node-a"}}
    ]
    assert targets.describe(nodes) == (
        "the swarm's nodes: node-a 10.0.0.2:9100; left out: broken (no address), spare (drained)"
    )


def test_an_ipv6_address_is_bracketed():
    content = json.loads(targets.node_exporter_targets([SwarmNode("v6", "2001:db8::2")]))
    assert content[0]["targets"] == ["[2001:db8::2]:9100"]


@pytest.fixture
def values(settings):
    return generate_values(settings)


def _node_targets(stack):
    [config] = [c for c in stack.configs if c.key == targets.NODE_TARGETS_KEY]
    return config


def test_the_plan_ships_the_targets_as_a_content_hashed_config(settings, values):
    nodes = [SwarmNode("node-a", "10.0.0.2"), SwarmNode("node-b", "10.0.0.3")]
    config = _node_targets(planning.plan_stack("shared", settings, values, nodes=nodes))
    assert config.generated
    assert config.data == targets.node_exporter_targets(nodes)
    assert config.name == planning.versioned_name("shared", config.key, config.data)
    assert config.variable == "CONFIG_PROMETHEUS_NODE_TARGETS"
    assert config.source == "the swarm's nodes: node-a 10.0.0.2:9100, node-b 10.0.0.3:9100"


def test_a_changed_node_list_renames_only_the_targets_config(settings, values):
    one = [SwarmNode("node-a", "10.0.0.2")]
    two = [*one, SwarmNode("node-b", "10.0.0.3")]
    before = {
        c.key: c.name for c in planning.plan_stack("shared", settings, values, nodes=one).configs
    }
    after = {
        c.key: c.name for c in planning.plan_stack("shared", settings, values, nodes=two).configs
    }
    assert {key for key in before if before[key] != after[key]} == {targets.NODE_TARGETS_KEY}
    same = planning.plan_stack("shared", settings, values, nodes=two[::-1]).configs
    assert {c.key: c.name for c in same} == after


def test_only_prometheus_mounts_the_targets_config(settings, values):
    stack = planning.plan_stack("shared", settings, values, nodes=[SwarmNode("a", "10.0.0.2")])
    rendered = engine.render_stack([str(p) for p in stack.files], stack.variables)
    mounting = {
        name
        for name, service in rendered["services"].items()
        for ref in service.get("configs") or []
        if ref["source"] == targets.NODE_TARGETS_KEY
    }
    assert mounting == {"prometheus"}
    assert rendered["configs"][targets.NODE_TARGETS_KEY] == {
        "external": True,
        "name": _node_targets(stack).name,
    }


def test_a_dry_run_without_a_daemon_says_what_it_would_discover(settings, values):
    plan = planning.plan_deploy(("core", "shared"), settings, values, tunnel=False)
    text = format_plan(plan, settings)
    assert (
        "  config      shared_prometheus_node_targets-<from the swarm>  <- the swarm's nodes at "
        "deploy time: node-exporter at each node's address, port 9100, labelled with its host "
        "name (read from the manager; a dry run reads nothing)"
    ) in text.splitlines()


def test_an_external_config_infra_does_not_generate_is_one_clear_line(settings, values, tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "shared.yml").write_text(
        "services: {}\nconfigs:\n  mystery:\n    external: true\n    name: x\n"
    )
    other = dataclasses.replace(settings, root=tmp_path)
    assert other.stacks_dir == stacks
    with pytest.raises(SettingsError) as error:
        planning.plan_stack("shared", other, values)
    assert str(error.value) == (
        "shared.yml: config mystery is external, and infra generates none of that name. "
        "Give it a file: (generated: alertmanager, prometheus_node_targets)."
    )
