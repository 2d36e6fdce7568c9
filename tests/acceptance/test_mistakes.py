"""The rows of the README's table of operator mistakes that need a swarm to happen.

Each scenario sets its mistake up in the dind swarm (a container squatting a port, a node
outside the swarm, a worker node), yields the process environment for the row's command,
and puts everything back. The command must answer the row's one line, exit 1, and leave
the swarm's services, secrets and networks as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from infra import deploy
from tests.operator_mistakes import answer_of, read_table, run


@contextlib.contextmanager
def port_taken(platform) -> Iterator[dict[str, str]]:
    """dev's Postgres port published by a container that is not a swarm service."""
    image = platform.require("POSTGRES_IMAGE")
    was_deployed = "dev" in platform.deployed
    deploy.stop(platform.settings, "dev", report=lambda _: None, client=platform.client)
    squatter = platform.client.containers.run(
        image, entrypoint=["sleep", "600"], ports={"80/tcp": 5432}, detach=True, name="squatter"
    )
    try:
        yield platform.command_env()
    finally:
        squatter.remove(force=True)
        if was_deployed:
            platform.deployed.pop("dev")
            platform.deploy("dev")


@contextlib.contextmanager
def engine_outside_a_swarm(platform) -> Iterator[dict[str, str]]:
    node = platform.swarm.start_spare()
    try:
        yield platform.command_env(DOCKER_HOST=node.engine_url)
    finally:
        platform.swarm.remove_spare(node)


@contextlib.contextmanager
def worker_node(platform) -> Iterator[dict[str, str]]:
    node = platform.swarm.start_spare()
    try:
        platform.swarm.join_as_worker(node)
        yield platform.command_env(DOCKER_HOST=node.engine_url)
    finally:
        platform.swarm.remove_spare(node)


@contextlib.contextmanager
def misspelt_service(platform) -> Iterator[dict[str, str]]:
    platform.require("POSTGRES_IMAGE")
    platform.deploy("dev")
    yield platform.command_env()


# README row number -> the situation its command meets (rows without a swarm: tests/unit).
SCENARIOS: dict[int, Callable[..., contextlib.AbstractContextManager]] = {
    18: port_taken,
    19: engine_outside_a_swarm,
    20: worker_node,
    21: misspelt_service,
}


def _swarm_objects(platform) -> dict[str, set]:
    client = platform.client
    return {
        "services": {(s.name, s.version) for s in client.services.list()},
        "secrets": {s.name for s in client.secrets.list()},
        "networks": {n.name for n in client.networks.list()},
    }


@pytest.mark.parametrize("number", sorted(SCENARIOS), ids=[str(n) for n in sorted(SCENARIOS)])
def test_mistake_gets_its_one_line_answer_and_changes_nothing(platform, number):
    mistake = read_table()[number]
    with SCENARIOS[number](platform) as env:
        before = _swarm_objects(platform)
        line = answer_of(run(mistake, env))
        after = _swarm_objects(platform)
    assert mistake.matches(line), f"row {number}: {mistake.answer}\nthe tool says: {line}"
    assert after == before, "the failed command changed the swarm"
