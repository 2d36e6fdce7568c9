"""node-exporter reports the node, not its own container (issue 10): the node's network
interfaces and mounts, read from the node itself through testinfra, are what Prometheus
holds; and Prometheus finds it on each node's address through the generated targets file.
The global collectors run one task on every node, and the log collector ships every node's
lines (on three nodes with `--nodes=3`, as in nox -s acceptance_nodes)."""

from __future__ import annotations

import json
import random
import re
import uuid
from types import SimpleNamespace

import pytest

from tests.acceptance.test_shared import _grafana_auth, collector_labels, log_query

# The exporter's filter (stacks/shared.yml): mount points and file system types left out.
MOUNTS_EXCLUDED = re.compile(
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
)


@pytest.fixture(scope="module")
def shared(platform):
    platform.require("TRAEFIK_IMAGE")
    platform.require("PROMETHEUS_IMAGE")
    platform.require("NODE_EXPORTER_IMAGE")
    platform.deploy("core")
    platform.deploy("shared")
    return platform


def _query(shared, expr: str) -> list[dict]:
    response = shared.web("prometheus.localhost", "/api/v1/query", params={"query": expr})
    response.raise_for_status()
    return response.json()["data"]["result"]


def _nodes(shared):
    """(testinfra host, swarm host name, address) of every node of the swarm."""
    return [
        (shared.node(index), node.name, node.address)
        for index, node in enumerate(shared.swarm.nodes)
    ]


def test_the_job_scrapes_every_node_at_its_own_address_labelled_with_its_name(shared):
    wanted = {(name, f"{address}:9100") for _, name, address in _nodes(shared)}

    def targets():
        response = shared.web("prometheus.localhost", "/api/v1/targets?state=active")
        active = response.json()["data"]["activeTargets"]
        mine = [t for t in active if t["labels"]["job"] == "node-exporter"]
        found = {(t["labels"].get("node"), t["labels"]["instance"]) for t in mine}
        return found == wanted and all(t["health"] == "up" for t in mine) and mine

    shared.wait_for(targets, timeout=180, what=f"node-exporter targets {sorted(wanted)} up")


def _interfaces(host) -> set[str]:
    """The node's network interfaces, as `ip -o link` lists them (`veth1@if5` -> `veth1`)."""
    lines = host.check_output("ip -o link").splitlines()
    return {line.split(":")[1].strip().split("@")[0] for line in lines}


def test_network_series_are_the_nodes_own_interfaces(shared):
    for host, name, _ in _nodes(shared):
        interfaces = _interfaces(host)
        # Only the node's namespace has Docker's bridges; a container on the overlay has
        # eth0 and eth1 and none of these.
        assert {"docker_gwbridge", "docker0"} <= interfaces, interfaces

        def devices(host=host, name=name):
            series = _query(shared, f'node_network_receive_bytes_total{{node="{name}"}}')
            found = {s["metric"]["device"] for s in series}
            # A container's veth comes and goes with every task the swarm starts (a busy node
            # may never hold still for one scrape), so the node's other interfaces must match
            # exactly; a container's own namespace would show eth0/eth1 and no bridges.
            now = _interfaces(host)
            stable = {d for d in found if not d.startswith("veth")}
            return stable == {d for d in now if not d.startswith("veth")} and found

        shared.wait_for(devices, timeout=120, what=f"{name}'s interfaces in Prometheus")


def test_uname_names_the_node_not_the_container(shared):
    for _, name, _ in _nodes(shared):
        shared.wait_for(
            lambda name=name: _query(shared, f'node_uname_info{{node="{name}",nodename="{name}"}}'),
            timeout=120,
            what=f"node_uname_info with nodename {name}",
        )


def _mountpoints(host) -> set[str]:
    """The mount points of the node's PID 1 (field 5 of /proc/1/mountinfo)."""
    text = host.file("/proc/1/mountinfo").content_string
    return {line.split()[4].replace("\\040", " ") for line in text.splitlines()}


def _statfs_size(host, path: str) -> int:
    blocks, block_size = host.check_output(f"stat -f -c '%b %s' {path}").split()
    return int(blocks) * int(block_size)


def test_filesystem_series_are_the_nodes_mounts_also_those_mounted_later(shared):
    for host, name, _ in _nodes(shared):
        # A mount the node makes after the exporter started: listed only from the node's own
        # mount table, and sized right only if it propagated into the exporter's /host.
        megabytes = random.randint(2, 9)  # noqa: S311 - a test value, not a secret
        probe = f"/srv/nc-probe-{uuid.uuid4().hex[:8]}"
        host.check_output(f"mkdir -p {probe}")
        host.check_output(f"mount -t tmpfs -o size={megabytes}m nc-probe {probe}")
        try:
            size = _statfs_size(host, probe)
            assert size == megabytes * 1024 * 1024
            docker_size = _statfs_size(host, "/var/lib/docker")

            def sizes(name=name, probe=probe, size=size):
                series = _query(shared, f'node_filesystem_size_bytes{{node="{name}"}}')
                found = {s["metric"]["mountpoint"]: float(s["value"][1]) for s in series}
                return found.get(probe) == size and found

            found = shared.wait_for(
                sizes,
                timeout=120,
                what=f"{probe} ({size} bytes) in {name}'s filesystems",
            )
            assert found["/var/lib/docker"] == docker_size
            node_mounts = {m for m in _mountpoints(host) if not MOUNTS_EXCLUDED.match(m)}
            assert set(found) <= node_mounts, set(found) - node_mounts
        finally:
            host.run(f"umount {probe} && rmdir {probe}")


# --- every global collector on every node (on the one-node suite too) -------------------

# The shared stack's global services (stacks/shared.yml, mode: global) and their images.
COLLECTORS = {
    "shared_node-exporter": "NODE_EXPORTER_IMAGE",
    "shared_alloy": "ALLOY_IMAGE",
    "shared_cadvisor": "CADVISOR_IMAGE",
}


@pytest.fixture(scope="module")
def deployed(platform):
    platform.require("TRAEFIK_IMAGE")
    platform.deploy("core")
    platform.deploy("shared")
    return platform


def _ready_nodes(platform) -> dict[str, str]:
    """Node id -> host name of every node the swarm has ready."""
    return {
        n.id: n.attrs["Description"]["Hostname"]
        for n in platform.client.nodes.list()
        if n.attrs["Status"]["State"] == "ready"
    }


def _running_nodes(service) -> list[str]:
    tasks = service.tasks(filters={"desired-state": "running"})
    return sorted(t["NodeID"] for t in tasks if t["Status"]["State"] == "running")


def test_the_collectors_are_the_global_services_of_the_shared_stack():
    """COLLECTORS follows the stack file: a global service added there fails here."""
    import yaml

    from infra.settings import REPO_ROOT

    stack = yaml.safe_load((REPO_ROOT / "stacks" / "shared.yml").read_text())
    found = {
        f"shared_{name}"
        for name, service in stack["services"].items()
        if (service.get("deploy") or {}).get("mode") == "global"
    }
    assert found == set(COLLECTORS)


@pytest.mark.parametrize("service", sorted(COLLECTORS), ids=sorted(COLLECTORS))
def test_a_global_collector_runs_one_task_on_every_node(deployed, service):
    nodes = _ready_nodes(deployed)
    assert len(nodes) == len(deployed.swarm.nodes)
    deployed.require(COLLECTORS[service])
    found = deployed.client.services.get(service)
    deployed.wait_for(
        lambda: _running_nodes(found) == sorted(nodes),
        timeout=120,
        what=f"{service}: one running task on each of {sorted(nodes.values())}",
    )


def _probe_containers(platform, name: str) -> dict[str, SimpleNamespace]:
    """Host name -> the probe's container on that node, inspected by the node's own engine
    (the manager's engine sees only its own containers)."""
    found = {}
    for index, node in enumerate(platform.swarm.nodes):
        host = platform.node(index)
        ids = host.check_output(
            f"docker ps -q --filter label=com.docker.swarm.service.name={name}"
        ).split()
        if len(ids) == 1:
            (attrs,) = json.loads(host.check_output(f"docker inspect {ids[0]}"))
            found[node.name] = SimpleNamespace(name=attrs["Name"].lstrip("/"), attrs=attrs)
    return found


def test_the_log_collector_ships_every_nodes_lines_with_their_labels(deployed):
    # Any image the swarm has with a shell: the probe only prints lines, one task per node.
    image = deployed.require("REDIS_IMAGE")
    name = "acceptance-nodelogprobe"
    token = f"acceptance-{uuid.uuid4().hex}"
    probe = deployed.client.services.create(
        image,
        name=name,
        mode={"Global": {}},
        command=["/bin/sh", "-c"],
        args=[f"while true; do echo {token}; sleep 2; done"],
        container_labels={
            "com.docker.stack.namespace": "acceptance",
            "com.nextcandle.image": image,
        },
    )
    try:
        nodes = sorted(_ready_nodes(deployed).values())
        containers = deployed.wait_for(
            lambda: (found := _probe_containers(deployed, name)) and sorted(found) == nodes
            and found,
            timeout=90,
            what=f"the probe's container on each of {nodes}",
        )  # fmt: skip
        queries = {}
        for node, container in containers.items():
            labels = collector_labels(container)
            assert labels["service"] == name and labels["container"] == container.name
            queries[node] = log_query(labels, token)

        # From here on the log pipeline itself is needed.
        deployed.require("ALLOY_IMAGE")
        deployed.require("LOKI_IMAGE")
        deployed.require("GRAFANA_IMAGE")  # Loki is asked through Grafana's data source proxy
        for node, query in sorted(queries.items()):

            def found(query=query):
                response = deployed.web(
                    "grafana.localhost",
                    "/api/datasources/proxy/uid/loki/loki/api/v1/query_range",
                    params={"query": query},
                    auth=_grafana_auth(deployed),
                )
                return response.json().get("data", {}).get("result")

            deployed.wait_for(found, timeout=180, what=f"the probe's line from {node} in Loki")
    finally:
        probe.remove()
