"""Filling in an app's checked compose file with what the platform gives it: its
environment's backend network, the Traefik route on the environment's host name, the
connection secrets, labels, and deploy policy where the file says nothing."""

from __future__ import annotations

import copy

from infra.apps.compose import (
    APP_LABEL,
    BACKEND,
    ENV_LABEL,
    EXTENSION,
    TRAEFIK,
    AppFile,
    Route,
    labels_of,
    network_target,
)
from infra.catalog import TRAEFIK_NETWORK

# Deploy policy filled in where the file says nothing: stateless by default, so updates start
# the new task first; a failed update rolls back (what the deploy's wait reports); restarts
# never give up (DESIGN decision 11); dnsrr because this platform's kernels have no IPVS
# (DESIGN decision 1).
RESTART_POLICY = {"condition": "any", "delay": "5s", "max_attempts": 0}
UPDATE_CONFIG = {
    "parallelism": 1,
    "delay": "5s",
    "order": "start-first",
    "failure_action": "rollback",
    "monitor": "15s",
}
ROLLBACK_CONFIG = {
    "parallelism": 1,
    "delay": "0s",
    "order": "start-first",
    "failure_action": "pause",
    "monitor": "15s",
}
RESOURCES = {
    "reservations": {"cpus": "0.05", "memory": "32M"},
    "limits": {"cpus": "0.50", "memory": "256M"},
}
LOGGING = {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}


def router_labels(stack: str, service: str, route: Route) -> dict[str, str]:
    # Router and service names are global in Traefik: prefixed with the stack, so the same
    # file deployed to stg and prod makes two routers.
    name = f"{stack}-{service}"
    return {
        "traefik.enable": "true",
        "traefik.swarm.network": TRAEFIK_NETWORK,
        f"traefik.http.routers.{name}.rule": route.rule,
        f"traefik.http.routers.{name}.entrypoints": "web",
        f"traefik.http.routers.{name}.service": name,
        f"traefik.http.services.{name}.loadbalancer.server.port": str(route.port),
    }


def fill(
    app: AppFile,
    stack: str,
    secret_names: dict[str, str],
    object_names: dict[tuple[str, str], str],
) -> dict:
    """The stack to deploy: the rendered file with its networks, route, connection secrets,
    labels and deploy policy filled in. `secret_names`: the connection secrets' Docker names
    by key; `object_names`: the content-hashed names of the file's own configs and secrets
    by (kind, key)."""
    rendered = app.rendered
    declared = rendered.get("networks") or {}
    document: dict = {"version": rendered.get("version") or "3.13", "services": {}}
    for name, original in rendered["services"].items():
        service = copy.deepcopy(original)
        service.pop(EXTENSION, None)
        networks = {}
        for key, options in (service.get("networks") or {}).items():
            target, _ = network_target(key, declared, app.env)
            networks[target] = options
        networks.setdefault(BACKEND, None)
        route = app.routes.get(name)
        if route:
            networks.setdefault(TRAEFIK, None)
        service["networks"] = networks
        service["secrets"] = [
            *(service.get("secrets") or []),
            *({"source": k} for k in secret_names),
        ]
        deploy = service.setdefault("deploy", {})
        deploy.setdefault("endpoint_mode", "dnsrr")
        deploy.setdefault("restart_policy", dict(RESTART_POLICY))
        deploy["update_config"] = {**UPDATE_CONFIG, **(deploy.get("update_config") or {})}
        deploy["rollback_config"] = {**ROLLBACK_CONFIG, **(deploy.get("rollback_config") or {})}
        deploy.setdefault("resources", copy.deepcopy(RESOURCES))
        labels = {k: v for k, v in labels_of(deploy).items() if not k.startswith("traefik.")}
        labels.update({APP_LABEL: app.app, ENV_LABEL: app.env})
        if route:
            labels.update(router_labels(stack, name, route))
        deploy["labels"] = labels
        service.setdefault("logging", copy.deepcopy(LOGGING))
        document["services"][name] = service
    joined = {key for service in document["services"].values() for key in service["networks"]}
    names = {BACKEND: app.backend, TRAEFIK: TRAEFIK_NETWORK}
    document["networks"] = {key: {"external": True, "name": names[key]} for key in sorted(joined)}
    secrets = {}
    for key in rendered.get("secrets") or {}:  # the file's own, made by infra like the others
        secrets[key] = {"external": True, "name": object_names[("secret", key)]}
    for key, name in secret_names.items():
        secrets[key] = {"external": True, "name": name}
    document["secrets"] = secrets
    configs = {}
    for key, spec in (rendered.get("configs") or {}).items():
        configs[key] = {
            **spec,
            **({"name": object_names[("config", key)]} if "file" in spec else {}),
        }
    if configs:
        document["configs"] = configs
    if rendered.get("volumes"):
        document["volumes"] = copy.deepcopy(rendered["volumes"])
    return document
