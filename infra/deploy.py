"""Deploy and stop stacks: validate everything first, then apply only what differs.

The flow is the original scripts': check dependencies, init the swarm if inactive, create
networks, data directories and secrets, deploy core first, then the target, wait until it
converges, report. Everything that can be wrong is checked in `prepare`, before any change
(DESIGN decision 8).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker
import yaml
from docker.errors import APIError

from infra import converge, engine, runner, secrets
from infra.catalog import CORE, DATA_TARGETS, RUNNER, STOP_ALL
from infra.errors import EngineError, SecretsError, SettingsError
from infra.operations import config as operating
from infra.operations import history
from infra.plan import (
    HASH_LENGTH,
    LABEL_SPEC_HASH,
    LABEL_STACK,
    DataDir,
    Plan,
    StackPlan,
    deploy_order,
    override_update_monitor,
    plan_deploy,
    scale_reservations,
)
from infra.settings import Settings
from infra.swarm import datadirs, placement
from infra.targets import SwarmNode

Report = Callable[[str], None]


@dataclass
class DeployResult:
    swarm_initialised: bool = False
    secrets_file_written: bool = False
    networks_created: list[str] = field(default_factory=list)
    dirs_created: list[Path] = field(default_factory=list)
    secrets_created: list[str] = field(default_factory=list)
    stacks: dict[str, list[converge.ServiceState]] = field(default_factory=dict)
    rendered: dict[str, dict] = field(default_factory=dict)  # what each stack was deployed as


def prepare(
    settings: Settings,
    target: str,
    tunnel: bool = True,
    nodes: Sequence[SwarmNode] | None = None,
) -> Plan:
    """Check every input and compute the plan. Changes nothing; needs no Docker daemon (the
    swarm's nodes, when known, are given)."""
    targets = deploy_order(target)
    if CORE in targets and tunnel and not settings.tunnel_token:
        raise SettingsError(
            "CLOUDFLARE_TUNNEL_TOKEN is not set. Put it in .env, or deploy without the "
            "tunnel: --no-tunnel"
        )
    warnings: list[str] = []
    if RUNNER in targets:
        warnings += runner.check_deployable(settings.values)
        if secrets.app_key_file(settings):  # read before anything changes, not at the secret
            runner.read_private_key(secrets.app_key_file(settings))
    values = None
    if settings.secrets_file.exists():
        values = secrets.with_env_tokens(secrets.load(settings), settings)
    check_data_root(settings.data_root)
    plan = plan_deploy(targets, settings, values, tunnel, nodes)
    return dataclasses.replace(plan, warnings=tuple(warnings))


def require_docker_cli() -> None:
    """A deploy renders and deploys stacks with the docker CLI: its absence is one line
    before anything (the deploy lock included) is touched."""
    if shutil.which("docker") is None:
        raise SettingsError(
            "the docker command is not installed. Install the Docker CLI and retry."
        )


def check_data_root(data_root: Path) -> None:
    """DATA_ROOT must be a directory we can create and write, before anything is changed."""
    check_writable_directory(data_root, "DATA_ROOT")


def check_writable_directory(path: Path, setting: str) -> None:
    """`path` (the value of `setting`) must be a directory this user can create and write:
    one line before anything runs, instead of a failure half-way."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(
            f"{setting} {path} is inside a file ({existing}). Set {setting} to a directory."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(
            f"{setting} {path} cannot be written ({existing} is not writable by this user). "
            f"Set {setting} in .env to a writable directory, or fix its permissions."
        )


def ensure_data_dirs(
    client: docker.DockerClient,
    stack: StackPlan,
    report: Report,
    nodes: Sequence | None = None,
    here: str = "",
) -> list[Path]:
    """Create the stack's data directories where its data is: here when the labelled node is
    the engine's own (or the stack has none), else on that node through a one-off job.
    `nodes` (SDK nodes) and `here` (the engine's node id), when given, were read already."""
    node = placement.remote_holder(client, stack.name, nodes, here) if stack.data_dirs else None
    if node is not None:
        created = datadirs.create_on_node(
            client, node, stack.data_dirs, image=stack.variables["POSTGRES_IMAGE"]
        )
        for path in created:
            report(f"data: created {path} on node {placement.hostname(node)}")
        return [Path(path) for path in created]
    created = []
    for directory in stack.data_dirs:
        if ensure_data_dir(directory):
            created.append(directory.path)
            report(f"data: created {directory.path} (owner {directory.uid}:{directory.gid})")
    return created


def ensure_data_dir(directory: DataDir) -> bool:
    """Create a data directory with the owner its image expects; never touch existing data."""
    if directory.path.is_dir():
        return False
    directory.path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(directory.path, directory.uid, directory.gid)
    elif directory.uid != os.geteuid():
        # Without root we cannot hand the directory to the image's user: let it write anyway.
        directory.path.chmod(0o777)
    return True


def check_ports_free(
    client: docker.DockerClient, plan: Plan, docker_host: str, services: list | None = None
) -> None:
    """A published port taken by something other than a swarm service fails the deploy up
    front: a container of the engine that publishes it (wherever the engine runs), or, when
    the engine runs on this machine (a unix socket), any process listening on it. `services`,
    when given, are every service of the swarm, read already."""
    ours = {
        port.get("PublishedPort")
        for service in (client.services.list() if services is None else services)
        for port in (service.attrs["Spec"].get("EndpointSpec", {}).get("Ports") or [])
    }
    # The container list's own entries carry names, labels and published ports: one call,
    # not one inspect per container as the SDK's containers.list() makes.
    squatters = {
        int(port["PublicPort"]): (container.get("Names") or ["?"])[0].lstrip("/")
        for container in client.api.containers()
        if "com.docker.swarm.service.id" not in (container.get("Labels") or {})
        for port in container.get("Ports") or []
        if port.get("PublicPort")
    }
    host = docker_host or os.environ.get("DOCKER_HOST", "")
    local = not host or host.startswith("unix://")
    for stack in plan.stacks:
        for name, port in stack.ports.items():
            if port in ours:
                continue
            if port in squatters:
                raise SettingsError(
                    f"port {port} ({stack.name} {name}) is already published by container "
                    f"{squatters[port]}. Stop it (docker stop {squatters[port]}) and retry."
                )
            if local:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.settimeout(0.5)
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        raise SettingsError(
                            f"port {port} ({stack.name} {name}) is already in use on this "
                            f"machine. Stop what listens there (ss -ltnp 'sport = :{port}') and "
                            "retry."
                        )


def apply(
    settings: Settings,
    target: str,
    tunnel: bool = True,
    wait: bool = True,
    timeout: float = 300,
    report: Report = print,
    client: docker.DockerClient | None = None,
) -> DeployResult:
    """Deploy `target` (and core before it). Raises InfraError with one line on bad input."""
    plan = prepare(settings, target, tunnel)
    for line in plan.warnings:
        report(f"warning: {line}")
    require_docker_cli()
    client = client or engine.connect(settings.docker_host)
    result = DeployResult()
    warning = engine.start_interval_warning(engine.api_version(client))
    if warning:
        report(warning)
    # What the engine holds is read once here and handed on, not asked again per stack, per
    # secret or per step: each API call costs a round trip, a no-op redeploy is mostly them.
    info = client.info()
    state, manager = engine.swarm_state(client, info)
    if state == "active" and not manager:
        engine.require_manager(client)
    # The stacks with data: each needs the one node labelled as holding it (decision 10).
    unlabelled = [stack.name for stack in plan.stacks if stack.name in DATA_TARGETS]
    nodes: list | None = None
    if state == "active":
        check_ports_free(client, plan, settings.docker_host)
        nodes = client.nodes.list()
        unlabelled = placement.check_nodes(nodes, unlabelled) if unlabelled else []

    if plan.generate_secrets:
        result.secrets_file_written = secrets.generate(settings)
        if result.secrets_file_written:
            report(f"secrets: wrote {settings.secrets_file} (mode 0600)")
    if state != "active":  # an active swarm's manager was checked above
        result.swarm_initialised = engine.ensure_swarm(client, settings.get("SWARM_ADVERTISE_ADDR"))
    if result.swarm_initialised:
        report("swarm: initialised a single-node swarm")
        info = client.info()
    labelled = placement.label_only_node(client, unlabelled)
    for line in labelled:
        report(line)
    if nodes is None or labelled:
        nodes = client.nodes.list()
    here = (info.get("Swarm") or {}).get("NodeID", "")
    # Planned again with the secrets now written and the swarm's nodes (the targets of
    # Prometheus's node-exporter job).
    plan = prepare(settings, target, tunnel, [SwarmNode.from_api(n.attrs) for n in nodes])
    for network in plan.networks:
        if engine.ensure_network(client, network):
            result.networks_created.append(network)
            report(f"network: created {network}")
    for stack in plan.stacks:
        for path in ensure_data_dirs(client, stack, report, nodes, here):
            result.dirs_created.append(path)
    # Every stack rendered at once (one `docker stack config` process each), before any is
    # handed over: rendering changes nothing.
    rendered_all = render_all(plan.stacks, report)
    secret_names = engine.existing_secret_names(client)
    config_names = engine.existing_config_names(client)
    # Every live service with its task counts, for each stack's diff: one call, not one per stack.
    services = client.services.list(status=True)
    deadline = time.monotonic() + timeout
    handed_over_at = time.time()  # the waits read the engine's events from here on
    handed_over: list[tuple[StackPlan, list[str]]] = []
    for stack in plan.stacks:
        for obj in stack.secrets:
            if engine.ensure_secret(client, obj, secret_names):
                secret_names.add(obj.name)
                result.secrets_created.append(obj.name)
                report(f"secret: created {obj.name}")
        for obj in stack.configs:
            if obj.generated and engine.ensure_config(client, obj, config_names):
                config_names.add(obj.name)
                report(f"config: created {obj.name} <- {obj.source}")
        rendered = result.rendered[stack.name] = rendered_all[stack.name]
        live = [s for s in services if _stack_of(s) == stack.name]
        handed_over.append((stack, deploy_rendered(client, stack, rendered, report, live)))
    if not wait:
        return result
    # Every stack is handed to the engine before waiting on any, so the engine starts them
    # together: deploying dev takes as long as its slowest service, not core's plus dev's.
    records: list | None = None  # the deploy history, read once for every stack's prune
    candidates: tuple[list, list] | None = None  # the stacks' secrets and configs, read once
    for stack, changed in handed_over:
        result.stacks[stack.name] = converge.wait_converged(
            client,
            stack.name,
            changed=set(changed),
            timeout=max(deadline - time.monotonic(), 1.0),
            progress=report,
            since=handed_over_at,
        )
        if changed:
            report(f"stack {stack.name}: converged, {len(changed)} services changed")
        # Old versions go only once nothing can roll back to them: neither Swarm (the
        # update converged) nor `invoke rollback.*` (ROLLBACK_KEEP recorded deploys).
        keep = {obj.name for obj in (*stack.secrets, *stack.configs)}
        count = rollback_keep(settings)
        if count and records is None:
            try:
                records = history.read(client)
            except APIError:
                records = []
        keep |= history.kept_objects(client, stack.name, count, records)
        # Objects created by this deploy are in use or kept, so a list read once, before
        # the first prune, holds every candidate of every stack.
        if candidates is None:
            candidates = stack_objects(client)
        for name in prune_objects(client, stack.name, keep=keep, candidates=candidates):
            report(f"stack {stack.name}: pruned {name} (no longer used)")
    return result


def _stack_of(service) -> str:
    return (service.attrs["Spec"].get("Labels") or {}).get(engine.STACK_NAMESPACE, "")


def deploy_stack(client: docker.DockerClient, stack: StackPlan, report: Report) -> list[str]:
    """Deploy only the services whose rendered definition changed (DESIGN decision 3).

    The stack is rendered by `docker stack config`; each service is labelled with a hash of
    its rendered definition. Services whose live label already carries that hash are left
    out of the `docker stack deploy`, so a redeploy with nothing changed updates nothing.
    Returns the names of the services created, updated or removed; does not wait.
    """
    return deploy_rendered(client, stack, render(stack, report), report)


def render_all(stacks: Sequence[StackPlan], report: Report | None = None) -> dict[str, dict]:
    """`render` of every stack, the `docker stack config` processes run side by side; what
    each reports is said in the stacks' order."""
    if len(stacks) < 2:
        return {stack.name: render(stack, report) for stack in stacks}
    lines: dict[str, list[str]] = {stack.name: [] for stack in stacks}
    with ThreadPoolExecutor(max_workers=len(stacks)) as pool:
        futures = {
            stack.name: pool.submit(render, stack, lines[stack.name].append) for stack in stacks
        }
        # Results in the stacks' order: the first failure is the one a serial render met.
        rendered = {name: future.result() for name, future in futures.items()}
    for stack in stacks:
        for line in lines[stack.name]:
            if report:
                report(line)
    return rendered


def render(stack: StackPlan, report: Report | None = None) -> dict:
    """The stack as it is deployed: rendered by `docker stack config`, reservations scaled,
    disabled services left out, each service labelled with the hash of its definition
    (LABEL_SPEC_HASH). Client-side; the live diff and the history read the same."""
    rendered = engine.render_stack([str(p) for p in stack.files], stack.variables)
    rendered = scale_reservations(rendered, stack.reservations_scale)
    rendered = override_update_monitor(rendered, stack.update_monitor)
    for name in stack.disabled:
        rendered["services"].pop(name, None)
        if report:
            report(f"stack {stack.name}: {name} left out (DISABLED_SERVICES)")
    for service in rendered["services"].values():
        digest = spec_hash(service, rendered)
        service.setdefault("deploy", {}).setdefault("labels", {})[LABEL_SPEC_HASH] = digest
    return rendered


def deploy_rendered(
    client: docker.DockerClient,
    stack: StackPlan,
    rendered: dict,
    report: Report,
    services: list | None = None,
) -> list[str]:
    """`deploy_stack` for a stack already rendered (by `render`, or as a rollback kept it).
    `services`, when given, are the stack's live services read (with status) just before."""
    if services is None:
        services = engine.stack_services(client, stack.name, status=True)
    live = {
        service.name: (service.attrs["Spec"].get("Labels") or {}).get(LABEL_SPEC_HASH)
        for service in services
    }
    changed = {
        name: service
        for name, service in rendered["services"].items()
        if live.get(f"{stack.name}_{name}") != service["deploy"]["labels"][LABEL_SPEC_HASH]
    }
    removed = sorted(set(live) - {f"{stack.name}_{name}" for name in rendered["services"]})
    if changed:
        report(f"stack {stack.name}: deploying {', '.join(sorted(changed))}")
        engine.docker_cli(
            stack.deploy_command(),
            stack.variables,
            stdin=yaml.safe_dump(
                _escape_dollars({**rendered, "services": changed}), sort_keys=False
            ),
        )
    for name in removed:  # what --prune would do, for services dropped from the stack
        client.services.get(name).remove()
        report(f"stack {stack.name}: removed {name} (no longer in the stack)")
    restarted = restart_given_up(
        client,
        [s for s in services if s.name.removeprefix(f"{stack.name}_") not in changed],
        report,
    )
    if not changed and not removed and not restarted:
        report(f"{stack.name}: up to date, 0 services changed")
    return [f"{stack.name}_{name}" for name in changed] + removed + restarted


def restart_given_up(client: docker.DockerClient, services: list, report: Report) -> list[str]:
    """Start again, with a forced update, every service Swarm has stopped retrying (no task
    left although it should run), so a deploy never waits for a service that cannot come
    back by itself. Only services running fewer tasks than wanted are looked at closely."""
    restarted = []
    for service in services:
        status = service.attrs.get("ServiceStatus") or {}
        if status.get("RunningTasks", 0) >= status.get("DesiredTasks", 0):
            continue
        state = converge.service_state(service)
        if state.gave_up:
            try:
                engine.restart_service(client, state.name)
            except APIError as exc:
                raise EngineError(
                    f"{state.name}: Swarm had stopped retrying it and restarting it failed "
                    f"({exc.explanation}). Check `invoke status -v`, then deploy again."
                ) from None
            report(
                f"{state.name}: Swarm had stopped retrying ({state.failed_tasks} failed tasks, "
                "none left to start); restarting it"
            )
            restarted.append(state.name)
    return restarted


def _escape_dollars(value):
    """A rendered stack has its variables resolved and `$$` turned into `$`; `docker stack
    deploy` interpolates what it reads again, so every `$` left must be written `$$`."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {key: _escape_dollars(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escape_dollars(item) for item in value]
    return value


def spec_hash(service: dict, rendered: dict) -> str:
    """A hash of a rendered service and the names of the configs and secrets it mounts
    (those names carry their content hash, so a changed file changes the service's hash)."""
    mounted = {
        kind: sorted(
            rendered.get(kind, {})
            .get(ref["source"] if isinstance(ref, dict) else ref, {})
            .get("name", "")
            for ref in service.get(kind) or []
        )
        for kind in ("configs", "secrets")
    }
    text = json.dumps({"service": service, "mounted": mounted}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def rollback_keep(settings: Settings) -> int:
    return operating.number(settings.values, "ROLLBACK_KEEP")


def sync_secrets(
    settings: Settings, client: docker.DockerClient, targets: tuple[str, ...]
) -> list[str]:
    """Create every Docker secret the targets' stacks mount that does not exist yet."""
    values = secrets.with_env_tokens(secrets.load(settings), settings)
    plan = plan_deploy(targets, settings, values, tunnel=bool(settings.tunnel_token))
    created = []
    for stack in plan.stacks:
        for obj in stack.secrets:
            if engine.ensure_secret(client, obj):
                created.append(obj.name)
    return created


def syncable_targets(settings: Settings) -> tuple[str, ...]:
    """Stacks whose secrets can be made from what is configured (the runner needs its
    credential)."""
    targets = ("core", "shared", "dev", "stg", "prod")
    if runner.registration(settings.values) is not None:
        targets += (RUNNER,)
    return targets


def stop(
    settings: Settings,
    target: str,
    cleanup: bool = False,
    timeout: float = 120,
    report: Report = print,
    client: docker.DockerClient | None = None,
) -> list[str]:
    """Remove stacks (and with cleanup their unused secrets and configs). Data stays."""
    stacks = STOP_ALL if target == "all" else (target,)
    client = client or engine.connect(settings.docker_host)
    engine.require_manager(client)
    deployed = engine.deployed_stacks(client)
    removed = []
    for stack in stacks:
        if stack in deployed:
            report(f"stack {stack}: removing")
            engine.docker_cli(["docker", "stack", "rm", stack], settings.engine_variables())
            converge.wait_removed(client, stack, timeout=timeout)
            removed.append(stack)
            data = settings.data_root / stack
            report(f"stack {stack}: removed" + (f" (data in {data} kept)" if data.is_dir() else ""))
        else:
            report(f"stack {stack}: not deployed")
        if cleanup:
            for name in prune_objects(client, stack):
                report(f"cleanup: removed {name}")
    if cleanup and target == "all":
        for network in ("traefik-public", "monitoring"):
            for net in client.networks.list(names=[network]):
                if net.name == network:
                    net.remove()
                    report(f"cleanup: removed network {network}")
    return removed


def stack_objects(client: docker.DockerClient) -> tuple[list, list]:
    """Every secret and config a stack owns, of every stack: (secrets, configs). A secret
    carries its stack in LABEL_STACK, a config in the stack namespace label."""
    return (
        client.secrets.list(filters={"label": LABEL_STACK}),
        client.configs.list(filters={"label": engine.STACK_NAMESPACE}),
    )


def _label(obj, key: str) -> str:
    return (obj.attrs.get("Spec", {}).get("Labels") or {}).get(key, "")


def prune_objects(
    client: docker.DockerClient,
    stack: str,
    keep: set[str] | None = None,
    candidates: tuple[list, list] | None = None,
) -> list[str]:
    """Remove a stack's secrets and configs that no service uses (and not in `keep`).
    `candidates`, when given, are secrets and configs read already (stack_objects)."""
    keep = keep or set()
    in_use: set[str] = set()
    for service in client.services.list():
        container = service.attrs["Spec"]["TaskTemplate"].get("ContainerSpec", {})
        in_use |= {ref["SecretName"] for ref in container.get("Secrets") or []}
        in_use |= {ref["ConfigName"] for ref in container.get("Configs") or []}
    removed = []
    if candidates is None:
        candidates = [
            *client.secrets.list(filters={"label": f"{LABEL_STACK}={stack}"}),
            *client.configs.list(filters={"label": f"{engine.STACK_NAMESPACE}={stack}"}),
        ]
    else:
        secrets_, configs = candidates
        candidates = [
            *(obj for obj in secrets_ if _label(obj, LABEL_STACK) == stack),
            *(obj for obj in configs if _label(obj, engine.STACK_NAMESPACE) == stack),
        ]
    for obj in candidates:
        if obj.name in in_use or obj.name in keep:
            continue
        try:
            obj.remove()
        except APIError:  # still held by a task that is shutting down: pruned next time
            continue
        removed.append(obj.name)
    return removed


__all__ = [
    "DeployResult",
    "SecretsError",
    "apply",
    "prepare",
    "stop",
    "sync_secrets",
]
