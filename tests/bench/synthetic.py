"""A generated stack of many small services, to see how costs grow with the platform's size:
each service is one task of an image the node already has, with a health check timed like
the platform's own (stacks/*.yml, x-healthcheck-timing)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import yaml

from infra.plan import StackPlan

STACK = "synthetic"
SERVICES = 50


def stack_file(image: str, services: int = SERVICES) -> dict:
    """`services` services that sleep, each healthy once its first probe passes."""
    service = {
        "image": image,
        # Sleeping does nothing, so the figures are the platform's and the engine's only.
        "entrypoint": ["sleep", "infinity"],
        "init": True,  # sleep as PID 1 would ignore SIGTERM and make each removal wait 10 s
        "healthcheck": {
            "test": ["CMD", "true"],
            "interval": "30s",
            "timeout": "5s",
            "retries": 3,
            "start_period": "30s",
            "start_interval": "500ms",
        },
        "deploy": {
            "replicas": 1,
            "resources": {
                "limits": {"cpus": "0.05", "memory": "16M"},
                "reservations": {"cpus": "0.01", "memory": "4M"},
            },
            "restart_policy": {"condition": "any", "delay": "5s"},
            "update_config": {"order": "start-first", "failure_action": "rollback"},
        },
        "stop_grace_period": "2s",
    }
    return {
        "version": "3.13",
        "services": {f"s{index:02d}": service for index in range(1, services + 1)},
    }


def plan(
    workdir: Path, image: str, variables: Mapping[str, str], services: int = SERVICES
) -> StackPlan:
    """What `deploy_stack` needs to deploy the generated stack as it deploys the catalog's;
    `variables` are the docker CLI's (its DOCKER_HOST: Settings.engine_variables)."""
    path = workdir / f"{STACK}.yml"
    path.write_text(yaml.safe_dump(stack_file(image, services), sort_keys=False))
    return StackPlan(
        name=STACK,
        files=(path,),
        variables=dict(variables),
        secrets=(),
        configs=(),
        data_dirs=(),
        ports={},
        resolve_image="never",
        reservations_scale=Decimal(1),
    )
