"""Deploy and stop apps, through the platform's own steps: the stack is rendered, each
service hashed and only changed services deployed (deploy.deploy_stack), then the wait
reports convergence or a rollback (converge.wait_converged), then old versions are pruned."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import yaml

from infra import converge, engine, secrets
from infra import deploy as platform
from infra.apps.compose import APP_LABEL, AppFile, load
from infra.apps.plan import AppPlan, plan_app, stack_name
from infra.catalog import ENVIRONMENTS, TRAEFIK_NETWORK
from infra.errors import SettingsError
from infra.labels import apps_of
from infra.settings import Settings, check_target

Report = Callable[[str], None]


def check_file(settings: Settings, env: str, file: str | Path, image: str = "") -> AppFile:
    """The refusals: everything about the environment and the file, before anything else."""
    check_target(env, tuple(ENVIRONMENTS))
    if not str(file):
        raise SettingsError("no compose file given. Give the app's file: --file=PATH")
    return load(
        Path(file).resolve(),
        env,
        settings.domain(env),
        settings.data_root,
        image,
        settings.engine_variables(),
    )


def prepare(settings: Settings, env: str, file: str | Path, image: str = "") -> AppPlan:
    """Check the file, then plan with secrets.yml (a placeholder while it is missing).
    Changes nothing; needs no daemon."""
    app = check_file(settings, env, file, image)
    values = secrets.load(settings) if settings.secrets_file.exists() else None
    return plan_app(app, settings, values)


def _network_exists(client: docker.DockerClient, name: str) -> bool:
    return any(n.name == name for n in client.networks.list(names=[name]))


def deployed_apps(client: docker.DockerClient) -> dict[str, tuple[str, str]]:
    """Deployed app stacks: stack name -> (environment, app), from their services' labels."""
    return apps_of(client.services.list(filters={"label": APP_LABEL}))


def apply(
    settings: Settings,
    env: str,
    file: str | Path,
    image: str = "",
    wait: bool = True,
    timeout: float = 300,
    report: Report = print,
    client: docker.DockerClient | None = None,
) -> list[converge.ServiceState]:
    """Deploy an app into `env`. Raises InfraError with one line on bad input, and
    ConvergeError (naming the services) when it does not converge or was rolled back."""
    app = check_file(settings, env, file, image)
    plan = plan_app(app, settings, secrets.load(settings))
    client = client or engine.connect(settings.docker_host)
    engine.require_manager(client)
    if not _network_exists(client, app.backend):
        raise SettingsError(
            f"environment {env} is not deployed (its network {app.backend} does not exist). "
            f"Deploy it first: invoke deploy.env --name={env}"
        )
    if TRAEFIK_NETWORK in plan.networks and engine.ensure_network(client, TRAEFIK_NETWORK):
        report(f"network: created {TRAEFIK_NETWORK}")
    stack = plan.stack_plan(Path("<filled in>"))
    for obj in stack.secrets:
        if engine.ensure_secret(client, obj):
            report(f"secret: created {obj.name}")
    since = time.time()  # the wait reads the engine's events from here on
    with tempfile.TemporaryDirectory(prefix="nextcandle-app-") as directory:
        path = Path(directory) / f"{plan.stack}.yml"
        # `docker stack config` reads it again: every `$` left in the rendered file is `$$`.
        path.write_text(yaml.safe_dump(platform._escape_dollars(plan.document), sort_keys=False))
        stack = plan.stack_plan(path)
        changed = platform.deploy_stack(client, stack, report=report)
    if not wait:
        return []
    states = converge.wait_converged(
        client,
        plan.stack,
        changed=set(changed),
        timeout=timeout,
        progress=report,
        since=since,
    )
    if changed:
        report(f"stack {plan.stack}: converged, {len(changed)} services changed")
    keep = {obj.name for obj in (*stack.secrets, *stack.configs)}
    for name in platform.prune_objects(client, plan.stack, keep=keep):
        report(f"stack {plan.stack}: pruned {name} (no longer used)")
    return states


def stack_to_stop(env: str, app: str) -> str:
    """The stack of app `app` in `env`, once both names are valid."""
    check_target(env, tuple(ENVIRONMENTS))
    if not app:
        raise SettingsError("no app given. Name it: --app=NAME (see `invoke status`)")
    return stack_name(env, app)


def stop(
    settings: Settings,
    env: str,
    app: str,
    cleanup: bool = False,
    report: Report = print,
    client: docker.DockerClient | None = None,
) -> list[str]:
    """Remove an app's stack from `env` (with cleanup its secrets and configs too)."""
    stack = stack_to_stop(env, app)
    client = client or engine.connect(settings.docker_host)
    engine.require_manager(client)
    apps = deployed_apps(client)
    if stack not in apps:
        here = sorted(name for e, name in apps.values() if e == env)
        raise SettingsError(
            f"app {app!r} is not deployed in {env}. "
            + (f"Deployed there: {', '.join(here)}." if here else f"No app is deployed in {env}.")
        )
    return platform.stop(settings, stack, cleanup=cleanup, report=report, client=client)
