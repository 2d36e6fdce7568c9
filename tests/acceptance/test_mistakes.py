"""The rows of the README's table of operator mistakes that need a swarm to happen.

Each scenario sets its mistake up in the dind swarm (a container squatting a port, a node
outside the swarm, a worker node), yields the process environment for the row's command,
and puts everything back. The command must answer the row's one line, exit 1, and leave
the swarm's services, secrets and networks as they were.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

from infra import deploy
from tests.operator_mistakes import answer_of, read_table, run


def _command_env(platform, docker_host: str | None = None) -> dict[str, str]:
    settings = platform.settings
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    return {
        **env,
        "DOCKER_HOST": docker_host or settings.docker_host,
        "ENV_FILE": str(settings.env_file or ""),
        "DATA_ROOT": str(settings.data_root),
        "SECRETS_FILE": str(settings.secrets_file),
        "RESOLVE_IMAGE": "never",
        "DISABLED_SERVICES": ",".join(sorted(settings.disabled_services)),
        **settings.images,
    }


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
        yield _command_env(platform)
    finally:
        squatter.remove(force=True)
        if was_deployed:
            platform.deployed.pop("dev")
            platform.deploy("dev")


@contextlib.contextmanager
def engine_outside_a_swarm(platform) -> Iterator[dict[str, str]]:
    node = platform.swarm.start_spare()
    try:
        yield _command_env(platform, node.engine_url)
    finally:
        platform.swarm.remove_spare(node)


@contextlib.contextmanager
def worker_node(platform) -> Iterator[dict[str, str]]:
    node = platform.swarm.start_spare()
    try:
        platform.swarm.join_as_worker(node)
        yield _command_env(platform, node.engine_url)
    finally:
        platform.swarm.remove_spare(node)


@contextlib.contextmanager
def misspelt_service(platform) -> Iterator[dict[str, str]]:
    platform.require("POSTGRES_IMAGE")
    platform.deploy("dev")
    yield _command_env(platform)


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
