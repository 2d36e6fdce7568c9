"""Text for the operator: plans, status tables and access information. Never secret values."""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import docker

from infra import converge
from infra.alerts import receivers
from infra.backup.records import Record, status_line
from infra.backup.records import as_json as records_json
from infra.catalog import CORE, CORE_PORTS, ENVIRONMENTS, NETWORKS, SHARED, STACKS
from infra.labels import apps_of
from infra.settings import Settings

if TYPE_CHECKING:  # `invoke status` needs no planner
    from infra.plan import Plan, StackPlan


def format_plan(plan: Plan, settings: Settings) -> str:
    lines = []
    if plan.generate_secrets:
        lines.append(
            f"secrets.yml   {settings.secrets_file} is missing: it will be generated (0600)"
        )
    lines.append("networks      " + "  ".join(f"{n} (overlay, attachable)" for n in plan.networks))
    for stack in plan.stacks:
        lines.append(f"stack {stack.name}")
        lines += _stack_lines(stack, settings.root)
    return "\n".join(lines)


def _stack_lines(stack: StackPlan, root: Path) -> list[str]:
    lines = [f"  data        {d.path}  owner {d.uid}:{d.gid}" for d in stack.data_dirs]
    lines += [f"  secret      {s.name}" for s in stack.secrets]
    lines += [f"  config      {c.name}  <- {c.source}" for c in stack.configs]
    lines += [f"  port        {port} ({name}, host mode)" for name, port in stack.ports.items()]
    if stack.name in ENVIRONMENTS and not stack.ports:
        variable = ENVIRONMENTS[stack.name].host_ports_variable
        lines.append(f"  port        none ({variable}=off: reachable inside the swarm only)")
    if stack.reservations_scale != 1:
        lines.append(
            f"  resources   every reservation x {stack.reservations_scale} (RESERVATIONS_SCALE); "
            "limits as in the stack files"
        )
    if stack.update_monitor:
        lines.append(
            f"  updates     monitored for {stack.update_monitor} (UPDATE_MONITOR); "
            "the stack files say otherwise"
        )
    render = shlex.join(stack.config_command()).replace(f"{root}/", "")
    deploy = shlex.join(stack.deploy_command())
    lines.append(f"  command     {render} | (changed services only) {deploy}")
    return lines


def format_app_plan(plan) -> str:
    """An app's plan (infra.apps.AppPlan): its stack, services, networks and secrets."""
    app = plan.app
    lines = [f"stack {plan.stack}  (app {app.app} of {app.env}, file {app.path})"]
    for name, service in plan.document["services"].items():
        route = app.routes.get(name)
        where = f"routed: {route.rule} -> port {route.port}" if route else "not routed"
        lines.append(f"  service     {plan.stack}_{name}  image {service['image']}  {where}")
    lines.append("  networks    " + "  ".join(plan.networks))
    lines += [f"  secret      {s.name}  (/run/secrets/{s.key})" for s in plan.secrets]
    lines += [f"  {o.kind:<11} {o.name}  <- {o.source}" for o in plan.objects]
    deploy = shlex.join(plan.stack_plan(Path("-")).deploy_command())
    lines.append(
        f"  command     docker stack config -c <the filled-in file> | (changed services only) "
        f"{deploy}"
    )
    return "\n".join(lines)


def access_info(settings: Settings, stacks: tuple[str, ...], values: dict[str, str] | None) -> str:
    """Where to reach what was deployed: local ports and URLs, and the tunnel's host names."""
    from infra.plan import published_ports

    lines = []
    for stack in stacks:
        if stack == CORE:
            user = values.get("traefik_dashboard_user") if values else "see secrets.yml"
            lines.append(
                f"core     dashboard http://localhost:{CORE_PORTS['dashboard']}/dashboard/ "
                f"(user {user}, password in {settings.secrets_file})"
            )
            lines.append(f"         http://localhost:{CORE_PORTS['web']} routes by host name")
        elif stack in ENVIRONMENTS:
            env = ENVIRONMENTS[stack]
            user = values.get(f"{stack}_postgres_user") if values else "<user>"
            db = values.get(f"{stack}_postgres_db") if values else "<db>"
            ports = published_ports(stack, settings)
            inside = "inside the swarm only" + (
                "" if settings.host_ports(stack) else f"; {env.host_ports_variable}=off"
            )
            postgres = (
                f"postgresql://{user}@localhost:{ports['postgres']}/{db}"
                if "postgres" in ports
                else f"postgresql://{user}@tasks.{stack}_postgres:5432/{db} ({inside})"
            )
            lines.append(f"{stack:<8} postgres {postgres}")
            redis = (
                f"localhost:{ports['redis']}"
                if "redis" in ports
                else f"tasks.{stack}_redis:6379 ({inside})"
            )
            lines.append(f"         redis    {redis}")
            lines.append(f"         tunnel   https://{settings.domain(stack)}")
        elif stack == SHARED:
            domain = settings.shared_domain
            for name in ("grafana", "n8n", "s3", "storage"):
                lines.append(f"shared   {name:<8} http://{name}.localhost  https://{name}.{domain}")
            lines.append("         prometheus http://prometheus.localhost (not routed publicly)")
            lines.append("         alerts   http://alertmanager.localhost (not routed publicly)")
            configured = receivers.configured(settings.values)
            if configured:
                names = ", ".join(r.label for r in configured)
                lines.append(f"         alerts go to: {names} (`invoke alerts.test` tries them)")
            else:
                lines.append(receivers.NONE_CONFIGURED)
    return "\n".join(lines)


def alert_summary(client: docker.DockerClient) -> tuple[list[dict] | None, list[str]]:
    """The alerts that fire now, as JSON rows and lines; None (and a line saying why) when
    Alertmanager is not deployed or does not answer: a status never fails for that."""
    from infra.alerts import api
    from infra.errors import InfraError

    if not api.deployed(client):
        return None, ["alerts: Alertmanager not deployed (invoke deploy.shared)"]
    try:
        alerts = api.firing(client)
    except InfraError as exc:
        return None, [f"alerts: unknown: {exc}"]
    return [api.as_json(a) for a in alerts], api.describe(alerts)


def node_summary(
    client: docker.DockerClient, services: list | None = None
) -> tuple[list[dict], list[str]]:
    """The swarm's nodes in one line when all are well, else a line per node that is not
    (down, drained) with the data it holds, and the manager quorum. `services`: every
    service, when read already."""
    from infra.swarm import nodes

    rows, quorum = nodes.rows(client, services)
    json_rows = [
        {
            "node": r.name, "role": r.role, "manager": r.manager, "state": r.state,
            "availability": r.availability, "data": list(r.data), "holds": list(r.stateful),
        }
        for r in rows
    ]  # fmt: skip
    unwell = [r for r in rows if r.state != "ready" or r.availability != "active"]
    managers = sum(1 for r in rows if r.role == "manager")
    lines = [
        f"nodes: {len(rows)} ({managers} manager{'s' if managers != 1 else ''}), "
        f"{len(rows) - len(unwell)} ready and active; quorum {quorum.describe()}"
    ]
    for r in unwell:
        data = f", holds {', '.join(r.data)} data" if r.data else ""
        lines.append(f"  node {r.name} ({r.role}) is {r.state}, {r.availability}{data}")
    return json_rows, lines


def backup_summary(
    last: Mapping[str, Record | None], now: float | None = None
) -> tuple[dict[str, dict | None], list[str]]:
    """The last backup run of each target, from the records Prometheus reads (no Prometheus
    needed): JSON rows and lines."""
    now = time.time() if now is None else now
    lines = ["backups (last run):"]
    lines += [status_line(target, record, now) for target, record in last.items()]
    return {target: records_json(record) for target, record in last.items()}, lines


def status_table(
    client: docker.DockerClient, verbose: bool = False, services: list | None = None
) -> tuple[str, list[dict]]:
    """One table of stacks and services; with `verbose`, tasks and networks too. `services`:
    every service read with status=True, when read already."""
    rows: list[dict] = []
    lines = [f"{'SERVICE':<28} {'REPLICAS':<10} {'HEALTH':<10} {'UPDATE':<20} {'IMAGE':<40} PORTS"]
    # Every stack and app in two API calls (services, tasks), however many there are.
    if services is None:
        services = client.services.list(status=True)
    deployed = converge.platform_states(client, services)
    apps = apps_of(services)
    for stack in _stack_order(set(deployed), apps):
        if stack not in deployed:
            lines.append(f"{stack}: not deployed")
            rows.append({"stack": stack, "deployed": False, "services": []})
            continue
        states = deployed[stack]
        if stack in apps:
            env, app = apps[stack]
            lines.append(f"{stack}: app {app} of {env}")
        else:
            lines.append(f"{stack}:")
        services = []
        for s in states:
            health = s.health
            lines.append(
                f"  {s.name:<26} {f'{s.running}/{s.desired}':<10} {health:<10} "
                f"{s.update_state or '-':<20} {s.image:<40} {', '.join(s.ports) or '-'}"
            )
            services.append(
                {
                    "name": s.name,
                    "running": s.running,
                    "desired": s.desired,
                    "health": health,
                    "failed_tasks": s.failed_tasks,
                    "errors": list(s.errors) if not s.settled else [],
                    "update_state": s.update_state,
                    "image": s.image,
                    "ports": list(s.ports),
                }
            )
            if s.health == "gave-up":
                lines.append(
                    f"      Swarm stopped retrying ({s.failed_tasks} failed tasks, none left to "
                    "start). Fix the cause, then `invoke deploy.*` restarts it."
                )
            elif s.health == "retrying":
                lines.append(f"      retrying: {s.failed_tasks} failed tasks so far")
            if (verbose or s.health in ("gave-up", "retrying")) and not s.settled:
                # Old errors of a service now running are history.
                lines += [f"      task error: {e}" for e in s.errors]
        row = {"stack": stack, "deployed": True, "services": services}
        if stack in apps:
            row.update(environment=apps[stack][0], app=apps[stack][1])
        rows.append(row)
    if verbose:
        lines.append("tasks:")
        for service in client.services.list():
            for task in service.tasks():
                node = task.get("NodeID", "")[:12]
                state = task["Status"]["State"]
                err = task["Status"].get("Err", "")
                lines.append(f"  {service.name:<26} node {node:<12} {state:<10} {err}")
        lines.append("networks:")
        for name in NETWORKS:
            found = [n for n in client.networks.list(names=[name]) if n.name == name]
            lines.append(f"  {name:<26} {'present' if found else 'missing'}")
    return "\n".join(lines), rows


def _stack_order(deployed: set[str], apps: Mapping[str, tuple[str, str]]) -> list[str]:
    """The platform's stacks in catalog order, each environment followed by its apps, then
    any other stack of the swarm."""
    order = []
    for stack in STACKS:
        order.append(stack)
        order += sorted(name for name, (env, _) in apps.items() if env == stack)
    return order + sorted(deployed - set(order))


def disk_usage(data_root: Path) -> list[str]:
    if not data_root.is_dir():
        return [f"{data_root}: not created yet"]
    lines = []
    for child in sorted(p for p in data_root.iterdir() if p.is_dir()):
        lines.append(f"  {child.name:<10} {_size(child) / 1024 / 1024:10.1f} MiB  {child}")
    return lines


def _size(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory, onerror=lambda _err: None):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
