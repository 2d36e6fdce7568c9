"""Placement by data label and the node commands' refusals (infra/swarm), on node lists as
the engine returns them; the swarm itself is exercised by tests/acceptance/test_swarm.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from infra import plan
from infra.catalog import data_label
from infra.errors import SettingsError
from infra.settings import load_settings
from infra.swarm import nodes, placement


def node(name: str, *data: str, state: str = "ready", role: str = "worker"):
    labels = {data_label(target): "true" for target in data}
    return SimpleNamespace(
        id=f"id-{name}",
        attrs={
            "ID": f"id-{name}",
            "Description": {"Hostname": name},
            "Spec": {"Role": role, "Availability": "active", "Labels": labels},
            "Status": {"State": state, "Addr": "10.0.0.1"},
        },
    )


def test_a_one_node_swarm_without_labels_is_labelled_by_the_deploy():
    assert placement.check_nodes([node("a")], ["dev", "shared"]) == ["dev", "shared"]


def test_a_labelled_node_is_accepted():
    assert placement.check_nodes([node("a", "dev"), node("b")], ["dev"]) == []


def test_several_nodes_and_no_label_is_refused_naming_the_command():
    with pytest.raises(SettingsError) as refused:
        placement.check_nodes([node("a"), node("b"), node("c")], ["stg"])
    message = str(refused.value)
    assert "none of this swarm's 3 nodes" in message
    assert "invoke swarm.label --node=NAME --data=stg" in message
    assert "\n" not in message


def test_two_nodes_labelled_for_the_same_data_is_refused_naming_both():
    with pytest.raises(SettingsError, match=r"nodes a, b are all labelled nextcandle.data.prod"):
        placement.check_nodes([node("a", "prod"), node("b", "prod")], ["prod"])


def test_a_data_node_that_is_down_is_refused():
    with pytest.raises(SettingsError, match=r"node a, which holds its data, is down"):
        placement.check_nodes([node("a", "dev", state="down"), node("b")], ["dev"])


def test_stacks_without_data_need_no_label():
    assert placement.check_nodes([node("a"), node("b")], []) == []


@pytest.mark.parametrize(
    "text", ["", "qa", "dev,qa", "core"], ids=["empty", "unknown", "one-unknown", "core"]
)
def test_data_targets_are_checked(text):
    with pytest.raises(SettingsError, match=r"Valid: a comma-separated list of dev, stg, prod"):
        placement.parse_targets(text)


def test_data_targets_parse():
    assert placement.parse_targets("dev, shared") == ["dev", "shared"]


def test_env_and_shared_stateful_services_render_with_their_data_label(tmp_path):
    settings = load_settings(environ={"PATH": "", "ENV_FILE": str(tmp_path / "none")})
    for stack in ("dev", "shared"):
        variables = plan.stack_variables(stack, settings)
        assert variables["DATA_NODE_LABEL"] == f"nextcandle.data.{stack}"
    assert "DATA_NODE_LABEL" not in plan.stack_variables("core", settings)


def _row(**fields) -> nodes.NodeRow:
    defaults = dict(
        name="a", node_id="id-a", role="worker", availability="active", state="ready",
        manager="", address="",
    )  # fmt: skip
    return nodes.NodeRow(**{**defaults, **fields})


def test_drain_of_a_node_holding_deployed_data_is_refused_naming_the_services():
    row = _row(data=("dev",), stateful=("dev_postgres", "dev_redis"))
    with pytest.raises(SettingsError) as refused:
        nodes.check_drain(row, force=False)
    assert "dev_postgres, dev_redis" in str(refused.value)
    assert "--force" in str(refused.value)


def test_drain_with_force_or_of_a_node_without_data_goes_ahead():
    nodes.check_drain(_row(data=("dev",), stateful=("dev_postgres",)), force=True)
    nodes.check_drain(_row(data=("dev",), stateful=()), force=False)


@pytest.mark.parametrize(
    ("managers", "reachable", "healthy", "can_lose"),
    [(1, 1, True, 0), (3, 3, True, 1), (3, 2, True, 0), (3, 1, False, 0), (5, 5, True, 2)],
    ids=["one", "three", "three-one-lost", "three-two-lost", "five"],
)
def test_quorum(managers, reachable, healthy, can_lose):
    quorum = nodes.Quorum(managers, reachable)
    assert (quorum.healthy, quorum.can_lose) == (healthy, can_lose)
    assert ("LOST" in quorum.describe()) is not healthy


def test_join_token_refuses_an_unknown_role(tmp_path):
    with pytest.raises(SettingsError, match=r"--role=admin is not a node role"):
        nodes.write_join_token(None, "admin", tmp_path / "t")
