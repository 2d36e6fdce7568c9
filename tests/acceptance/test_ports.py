"""Every port of the port table listens on the node, and the stacks publish no other."""

from __future__ import annotations

import pytest

from infra import catalog
from tests.acceptance.conftest import expected_ports

STACKS_WITH_IMAGES = {
    "core": ["TRAEFIK_IMAGE"],
    "dev": ["POSTGRES_IMAGE", "REDIS_IMAGE"],
    "stg": ["POSTGRES_IMAGE", "REDIS_IMAGE"],
    "prod": ["POSTGRES_IMAGE", "REDIS_IMAGE"],
}


@pytest.fixture(scope="module")
def everything(platform):
    platform.deploy_requiring(STACKS_WITH_IMAGES)
    return platform


@pytest.mark.parametrize("port", sorted(expected_ports()))
def test_port_of_the_table_listens_on_the_node(everything, port):
    node = everything.node(0)
    assert (
        node.socket(f"tcp://0.0.0.0:{port}").is_listening
        or node.socket(f"tcp://:::{port}").is_listening
    )


def test_stacks_publish_no_other_port(everything):
    published = {}
    for service in everything.client.services.list():
        for port in service.attrs["Spec"].get("EndpointSpec", {}).get("Ports") or []:
            published[port["PublishedPort"]] = (service.name, port.get("PublishMode"))
    assert set(published) <= expected_ports(), published
    assert {mode for _, mode in published.values()} <= {"host"}
    deployed = set(everything.deployed)
    wanted = {p for s in deployed for p in catalog.published_ports(s).values()}
    assert wanted <= set(published)
