"""Which node holds a target's data, and the one-line refusals when none or several do.

DESIGN decision 10: a stateful service (one with a bind mount under DATA_ROOT) is placed by a
node label, never by role alone. With three managers, `node.role == manager` lets Postgres
start on a manager whose data directory is empty; the image then initialises a new, empty
database there and applications write to it. So env.yml and shared.yml constrain every such
service to `node.labels.nextcandle.data.<target> == true`, and a deploy refuses, before it
changes anything, while no node or more than one carries that label, or the one that does is
down. A swarm of one node needs no decision: its only node is labelled at the first deploy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import docker
from docker.errors import APIError, NotFound

from infra.catalog import DATA_LABEL_PREFIX as LABEL_PREFIX
from infra.catalog import DATA_TARGETS
from infra.catalog import data_label as label_key
from infra.errors import EngineError, SettingsError

__all__ = ["DATA_TARGETS", "LABEL_PREFIX", "label_key"]


def hostname(node) -> str:
    attrs = node.attrs if hasattr(node, "attrs") else node
    return (attrs.get("Description") or {}).get("Hostname") or attrs.get("ID", "")[:12]


def holders(nodes: Iterable, target: str) -> list:
    """The nodes labelled as holding `target`'s data."""
    return [n for n in nodes if target in held_targets(n)]


def held_targets(node) -> list[str]:
    """The targets whose data `node` is labelled as holding."""
    labels = (node.attrs.get("Spec") or {}).get("Labels") or {}
    return [t for t in DATA_TARGETS if labels.get(label_key(t)) == "true"]


def check(client: docker.DockerClient, targets: Sequence[str]) -> list[str]:
    """Refuse (one line) unless each of `targets` has exactly one labelled node, and it is up.
    Returns the targets that no node holds yet on a one-node swarm: the deploy labels that
    node (label_only_node) once it goes ahead."""
    return check_nodes(client.nodes.list(), targets) if targets else []


def check_nodes(nodes: Sequence, targets: Sequence[str]) -> list[str]:
    """check() on a node list (SDK Node objects: `.id` and `.attrs`)."""
    unlabelled = []
    for target in targets:
        found = holders(nodes, target)
        if len(found) > 1:
            names = ", ".join(sorted(hostname(n) for n in found))
            raise SettingsError(
                f"stack {target}: nodes {names} are all labelled {label_key(target)}=true, and "
                f"its data can be on one only. Keep the label on the node that holds "
                f"DATA_ROOT/{target}: invoke swarm.label --node=NAME --data={target} --remove "
                "on each of the others."
            )
        if not found and len(nodes) > 1:
            raise SettingsError(
                f"stack {target} keeps its data on the node labelled {label_key(target)}=true, "
                f"and none of this swarm's {len(nodes)} nodes has it. Label the node that holds "
                f"(or is to hold) DATA_ROOT/{target}: invoke swarm.label --node=NAME "
                f"--data={target}"
            )
        if not found:
            unlabelled.append(target)
            continue
        state = (found[0].attrs.get("Status") or {}).get("State", "")
        if state != "ready":
            raise SettingsError(
                f"stack {target}: node {hostname(found[0])}, which holds its data, is {state}. "
                "Bring it back (`invoke swarm.status`) before deploying; its data is nowhere else."
            )
    return unlabelled


def label_only_node(client: docker.DockerClient, targets: Sequence[str]) -> list[str]:
    """Label a one-node swarm's only node as holding `targets`' data; the lines to report."""
    if not targets:
        return []
    nodes = client.nodes.list()
    if len(nodes) != 1:  # check() refused already; never guess on several nodes
        return []
    set_labels(client, nodes[0], targets)
    return [
        f"swarm: node {hostname(nodes[0])} holds {', '.join(targets)} data (the swarm's only "
        f"node; label {LABEL_PREFIX}.<target>=true)"
    ]


def find_node(client: docker.DockerClient, name: str):
    """A node by hostname or id (prefix), or one line naming the valid ones."""
    nodes = client.nodes.list()
    matches = [n for n in nodes if hostname(n) == name or n.id == name]
    if not matches and name:
        matches = [n for n in nodes if n.id.startswith(name)]
    if len(matches) != 1:
        valid = ", ".join(sorted(hostname(n) for n in nodes))
        what = "matches several nodes" if matches else "is no node of this swarm"
        raise SettingsError(f"--node={name} {what}. Valid: {valid}.")
    return matches[0]


def parse_targets(text: str) -> list[str]:
    targets = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in targets if t not in DATA_TARGETS]
    if not targets or unknown:
        given = unknown[0] if unknown else "nothing"
        raise SettingsError(
            f"--data names {given}. Valid: a comma-separated list of {', '.join(DATA_TARGETS)}."
        )
    return targets


def assign(client: docker.DockerClient, node, targets: Sequence[str], remove: bool = False) -> None:
    """Label `node` as holding (or no longer holding) `targets`' data; refuses a target whose
    data another node is labelled as holding (two holders would split its data)."""
    if not remove:
        for target in targets:
            others = [n for n in holders(client.nodes.list(), target) if n.id != node.id]
            if others:
                other = hostname(others[0])
                raise SettingsError(
                    f"node {other} already holds {target}'s data. Move the data first, then: "
                    f"invoke swarm.label --node={other} --data={target} --remove"
                )
    set_labels(client, node, targets, remove=remove)


def set_labels(client, node, targets: Sequence[str], remove: bool = False) -> None:
    """Add (or remove) the data labels of `targets` on `node`, keeping its other labels."""

    def change(spec: dict) -> None:
        labels = dict(spec.get("Labels") or {})
        for target in targets:
            if remove:
                labels.pop(label_key(target), None)
            else:
                labels[label_key(target)] = "true"
        spec["Labels"] = labels

    update_node_spec(node, change, "its labels could not be changed")


def update_node_spec(node, change: Callable[[dict], None], failure: str) -> None:
    """Apply `change` to the node's spec; retried when the spec moved meanwhile (a node's
    spec is versioned, and Swarm updates nodes on its own)."""
    for attempt in range(3):
        node.reload()
        spec = dict(node.attrs["Spec"])
        change(spec)
        try:
            node.update(spec)
            return
        except APIError as exc:
            if attempt == 2 or "update out of sequence" not in str(exc):
                raise EngineError(
                    f"node {hostname(node)}: {failure} ({getattr(exc, 'explanation', exc)}). Retry."
                ) from None


def node_id_here(client: docker.DockerClient) -> str:
    return (client.info().get("Swarm") or {}).get("NodeID", "")


def remote_holder(
    client: docker.DockerClient, target: str, nodes: Sequence | None = None, here: str = ""
):
    """The node labelled as holding `target`'s data when it is not the engine's own node
    (its directories must then be made there), else None. `nodes` and `here` (the engine's
    node id), when given, were read already."""
    found = holders(client.nodes.list() if nodes is None else nodes, target)
    if len(found) != 1 or found[0].id == (here or node_id_here(client)):
        return None
    return found[0]


def stateful_services(
    client: docker.DockerClient, services: list | None = None
) -> dict[str, list[str]]:
    """Target -> the deployed services placed by its data label (`services`: every service,
    when read already)."""
    found: dict[str, list[str]] = {t: [] for t in DATA_TARGETS}
    for service in client.services.list() if services is None else services:
        constraints = (
            service.attrs["Spec"].get("TaskTemplate", {}).get("Placement", {}).get("Constraints")
            or []
        )
        for target in DATA_TARGETS:
            if any(label_key(target) in c for c in constraints):
                found[target].append(service.name)
    return {t: sorted(names) for t, names in found.items()}


def remove_service_quietly(client, name: str) -> None:
    with contextlib.suppress(NotFound, APIError):  # already gone
        client.services.get(name).remove()
