"""Prometheus targets generated from the swarm: node-exporter on every node's own address.

Why a generated file: node-exporter runs in each node's network namespace (the `host`
network, so its network collectors see the node's interfaces, issue 10), so it has no
address on the monitoring overlay and `tasks.shared_node-exporter` no longer finds it.
Prometheus could discover the nodes itself (`dockerswarm_sd_configs`, role nodes), but
only through a manager's Docker API, and it has no Docker socket (DESIGN decision 14).
So infra, which talks to the manager anyway, reads the node list at deploy time and ships
it as a file_sd targets file in a content-hashed Docker config: an unchanged node list
keeps the config's name and restarts nothing; a joined, removed or re-addressed node
gives a new name and rolls only Prometheus (DESIGN decision 2). Until the next
`invoke deploy.shared`, a node that joined is not scraped.

Pure: the daemon's node list comes in as data (`SwarmNode.from_api`), so the plan and its
dry run need no daemon.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from infra.catalog import HOST_NETWORK_PORTS

NODE_EXPORTER_PORT = HOST_NETWORK_PORTS["node-exporter"]
# The config key in stacks/shared.yml, and where Prometheus reads it.
NODE_TARGETS_KEY = "prometheus_node_targets"
UNKNOWN = (
    f"the swarm's nodes at deploy time: node-exporter at each node's address, port "
    f"{NODE_EXPORTER_PORT}, labelled with its host name (read from the manager; a dry run "
    "reads nothing)"
)


@dataclass(frozen=True)
class SwarmNode:
    hostname: str
    address: str  # the address the node advertises to the swarm; "" if it reports none
    drained: bool = False

    @classmethod
    def from_api(cls, attrs: Mapping) -> SwarmNode:
        """A node from the engine's node list (`docker node inspect`). A manager may report
        Status.Addr 0.0.0.0 (the swarm's listen address); its ManagerStatus.Addr
        (address:2377) is then the one the other nodes use."""
        address = (attrs.get("Status") or {}).get("Addr") or ""
        if not _usable(address):
            manager = (attrs.get("ManagerStatus") or {}).get("Addr") or ""
            address = manager.rsplit(":", 1)[0].strip("[]") if manager else ""
        return cls(
            hostname=(attrs.get("Description") or {}).get("Hostname") or attrs.get("ID", ""),
            address=address if _usable(address) else "",
            drained=(attrs.get("Spec") or {}).get("Availability") == "drain",
        )


def _usable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not ip.is_unspecified


def scraped(nodes: Sequence[SwarmNode]) -> list[SwarmNode]:
    """The nodes node-exporter runs on and Prometheus can reach: a global service places no
    task on a drained node, and a node without an address cannot be scraped."""
    return sorted(
        (node for node in nodes if node.address and not node.drained),
        key=lambda node: (node.hostname, node.address),
    )


def _target(address: str) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{host}:{NODE_EXPORTER_PORT}"


def node_exporter_targets(nodes: Sequence[SwarmNode]) -> bytes:
    """The file_sd targets file: one group per node, `node` = its host name. Stable bytes
    for the same nodes in any order, so the config's content hash is too."""
    groups = [
        {"targets": [_target(node.address)], "labels": {"node": node.hostname}}
        for node in scraped(nodes)
    ]
    return (json.dumps(groups, indent=2, sort_keys=True) + "\n").encode()


def describe(nodes: Sequence[SwarmNode]) -> str:
    """For the plan: what was found, and what is left out and why."""
    found = [f"{node.hostname} {_target(node.address)}" for node in scraped(nodes)]
    left_out = [
        f"{node.hostname} ({'drained' if node.drained else 'no address'})"
        for node in sorted(nodes, key=lambda node: node.hostname)
        if node not in scraped(nodes)
    ]
    text = "the swarm's nodes: " + (", ".join(found) or "none")
    return text + (f"; left out: {', '.join(left_out)}" if left_out else "")
