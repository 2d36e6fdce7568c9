"""The operator's view of the swarm's nodes: status with labels and the data each holds, the
manager quorum, join tokens, and drain / activate with the data check."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import APIError

from infra import engine
from infra.errors import EngineError, SettingsError
from infra.swarm.placement import (
    LABEL_PREFIX,
    held_targets,
    hostname,
    stateful_services,
    update_node_spec,
)

ROLES = ("worker", "manager")


@dataclass(frozen=True)
class NodeRow:
    name: str
    node_id: str
    role: str
    availability: str
    state: str
    manager: str  # leader, reachable, unreachable; "" for a worker
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    data: tuple[str, ...] = ()  # the targets whose data it holds (its labels)
    stateful: tuple[str, ...] = ()  # the deployed services placed on it by those labels


@dataclass(frozen=True)
class Quorum:
    managers: int
    reachable: int

    @property
    def needed(self) -> int:
        return self.managers // 2 + 1

    @property
    def healthy(self) -> bool:
        return self.reachable >= self.needed

    @property
    def can_lose(self) -> int:
        return max(self.reachable - self.needed, 0)

    def describe(self) -> str:
        if not self.healthy:
            return (
                f"LOST: {self.reachable} of {self.managers} managers reachable, {self.needed} "
                "needed; the swarm cannot change until enough managers come back"
            )
        lose = "no manager" if self.can_lose == 0 else f"{self.can_lose} more manager(s)"
        advice = " (3 managers let one be lost)" if self.managers < 3 else ""
        return (
            f"healthy: {self.reachable} of {self.managers} managers reachable; "
            f"it can lose {lose}{advice}"
        )


def rows(client: docker.DockerClient, services: list | None = None) -> tuple[list[NodeRow], Quorum]:
    """Every node, and the quorum; `services` (every service), when read already."""
    services = stateful_services(client, services)
    found, managers, reachable = [], 0, 0
    for node in sorted(client.nodes.list(), key=hostname):
        attrs = node.attrs
        role = attrs["Spec"].get("Role", "")
        manager = attrs.get("ManagerStatus") or {}
        status = "leader" if manager.get("Leader") else manager.get("Reachability", "")
        if role == "manager":
            managers += 1
            reachable += status in ("leader", "reachable")
        data = tuple(held_targets(node))
        labels = attrs["Spec"].get("Labels") or {}
        found.append(
            NodeRow(
                name=hostname(node),
                node_id=node.id,
                role=role,
                availability=attrs["Spec"].get("Availability", ""),
                state=(attrs.get("Status") or {}).get("State", ""),
                manager=status,
                address=(attrs.get("Status") or {}).get("Addr", ""),
                labels={k: v for k, v in labels.items() if not k.startswith(LABEL_PREFIX)},
                data=data,
                stateful=tuple(name for target in data for name in services[target]),
            )
        )
    return found, Quorum(managers, reachable)


def write_join_token(client: docker.DockerClient, role: str, path: Path) -> str:
    """Write the token that admits a node as `role` to `path` (mode 0600, never printed: it
    is the swarm's credential for new nodes); returns the manager address to join."""
    if role not in ROLES:
        raise SettingsError(f"--role={role} is not a node role. Valid: {', '.join(ROLES)}.")
    try:
        token = (client.swarm.attrs.get("JoinTokens") or {}).get(role.capitalize(), "")
    except APIError as exc:
        raise EngineError(f"the swarm's join tokens cannot be read ({exc.explanation}).") from None
    if not token:
        raise EngineError("the engine returned no join token: is it a swarm manager?")
    if path.is_dir():
        raise SettingsError(f"--file={path} is a directory. Give a file path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(token + "\n")
    swarm = client.info().get("Swarm") or {}
    here = swarm.get("NodeAddr", "")
    remote = [m.get("Addr", "") for m in swarm.get("RemoteManagers") or []]
    return next((a for a in remote if a.rsplit(":", 1)[0] == here), "") or f"{here}:2377"


def join(
    client: docker.DockerClient, manager: str, token_file: Path, advertise_addr: str = ""
) -> str:
    """Join this engine to the swarm at `manager` with the token in `token_file`, through the
    Docker API (the token never reaches a command line); the line to report."""
    state, _ = engine.swarm_state(client)
    if state == "active":
        raise SettingsError(
            "this engine is already in a swarm. `invoke swarm.status` on a manager lists it; "
            "`docker swarm leave` first to join another."
        )
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"--token-file={token_file} cannot be read ({exc.__class__.__name__}). Copy the file "
            "`invoke swarm.join-token` wrote on a manager to this node and retry."
        ) from None
    if not manager:
        raise SettingsError("--manager is empty. Give ADDRESS:2377 as `swarm.join-token` printed.")
    try:
        client.swarm.join(
            remote_addrs=[manager], join_token=token, advertise_addr=advertise_addr or None
        )
    except APIError as exc:
        raise EngineError(f"joining the swarm at {manager} failed: {exc.explanation}") from None
    return f"swarm: this node joined the swarm at {manager}"


def drain(client: docker.DockerClient, node, force: bool = False) -> list[str]:
    """Set `node` to drain (Swarm moves its tasks away). Refuses, naming them, while it holds
    a target's data and that target's stateful services are deployed, unless `force`; the
    lines to report."""
    row = next(r for r in rows(client)[0] if r.node_id == node.id)
    check_drain(row, force)
    _set_availability(node, "drain")
    lines = [f"swarm: node {row.name} drained; Swarm moves its tasks to the other nodes"]
    if row.stateful:
        lines.append(f"swarm: {', '.join(row.stateful)} stay down until the node is activated")
    return lines


def check_drain(row: NodeRow, force: bool) -> None:
    """Refuse to drain a node whose data a deployed stateful service needs, unless forced."""
    if row.stateful and not force:
        raise SettingsError(
            f"node {row.name} holds the data of {', '.join(row.data)}: draining it stops "
            f"{', '.join(row.stateful)}, which can run nowhere else. Stop those stacks first, "
            "or pass --force to drain anyway (they stay down until `invoke swarm.activate`)."
        )


def activate(client: docker.DockerClient, node) -> list[str]:
    _set_availability(node, "active")
    return [f"swarm: node {hostname(node)} active; Swarm may place tasks on it again"]


def _set_availability(node, availability: str) -> None:
    def change(spec: dict) -> None:
        spec["Availability"] = availability

    update_node_spec(node, change, f"could not set it to {availability}")
