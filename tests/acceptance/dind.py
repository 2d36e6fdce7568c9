"""A fresh swarm of Docker-in-Docker nodes for the acceptance suite.

Nodes run the dind image (upstream docker:dind where present, else the stand-in) without
--privileged, which these machines refuse: every capability but SYS_RESOURCE is added
explicitly, as ../shared/CI-MACHINE.md verified. The manager's engine is reached through a
port published on 127.0.0.1, and so is every port of the platform's port table.

Images reach the nodes through a seed: once per set of images, a dind engine loads them
(`docker save | docker load`, about 2 minutes for the stand-ins) into a volume that is then
kept; every later node starts on a copy of that volume's image store (hard links for the
layer files, which the engine never writes again), in seconds. Where this machine's engine
volumes cannot be reached as files (not root, a remote engine), each node loads the images.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, NotFound

from tests.images import dind

LABEL = "org.nextcandle.acceptance"
SEED_LABEL = "org.nextcandle.acceptance-seed"
SEED_LOCK = Path(os.environ.get("ACCEPTANCE_WORKDIR", "/var/tmp")) / "nextcandle-seed.lock"
NODE_INIT = 'mount --make-rshared / && exec dockerd-entrypoint.sh "$@"'
ENGINE_PORT = 2375
# What a node's engine needs of the seed: the image store. Everything else (engine id,
# networks, containerd state, the swarm) each engine makes for itself.
SEED_PARTS = ("image", "overlay2")
# A kept seed of another image set is removed once no session has started a node on it
# for this long: sessions with other image sets (a branch, the nodes suite) may run at once.
SEED_IDLE_SECONDS = 3 * 3600
# Concurrent `docker save | docker load` streams into one node (DindSwarm.load_images).
LOAD_STREAMS = 3


@dataclass
class Node:
    name: str
    container: object
    engine_url: str
    client: docker.DockerClient | None
    ports: dict[int, int] = field(default_factory=dict)  # port on the node -> port on 127.0.0.1
    address: str = ""


@dataclass
class DindSwarm:
    """Start with `start()`, always `remove()` (unless keeping it up for debugging)."""

    image: str
    node_count: int
    data_root: Path
    node_ports: tuple[int, ...]
    outer: docker.DockerClient = field(default_factory=docker.from_env)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    nodes: list[Node] = field(default_factory=list)

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def network_name(self) -> str:
        return f"nc-acceptance-{self.run_id}"

    def start(self, images: tuple[str, ...] | list[str] = (), timeout: float = 120) -> None:
        """Start the nodes with `images` in their engines, and form the swarm."""
        self.outer.networks.create(self.network_name, driver="bridge", labels={LABEL: self.run_id})
        seed = self.image_seed(list(images)) if images else None
        for index in range(self.node_count):
            self.nodes.append(self._start_node(index, publish=index == 0, seed=seed))
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            self._wait_engine(node, deadline)
        if images and seed is None:
            self.load_images(list(images))
        self._form_swarm()

    def _start_node(
        self, index: int, publish: bool, seed: Path | None = None, name: str = ""
    ) -> Node:
        name = name or f"nc-node{index}-{self.run_id}"
        ports = {ENGINE_PORT: ("127.0.0.1", None)}
        if publish:
            ports |= {port: ("127.0.0.1", None) for port in self.node_ports}
        volume = self.outer.volumes.create(f"{name}-docker", labels={LABEL: self.run_id})
        if seed is not None:
            self._copy_seed(seed, Path(volume.attrs["Mountpoint"]))
        container = dind.create(
            self.outer,
            self.image,
            volume.name,
            ports=ports,
            binds=[f"{self.data_root}:{self.data_root}:rw"],
            name=name,
            hostname=name,
            labels={LABEL: self.run_id},
            # A node's / is a shared mount, as systemd makes it on a real host, so that
            # rslave binds of it (node-exporter's /host) see the node's later mounts. A
            # container's / is only a slave of the machine's; on every (re)start, before
            # dockerd starts any task.
            entrypoint=["sh", "-c", NODE_INIT, "dind-node"],
        )
        self.outer.networks.get(self.network_name).connect(container)
        container.start()
        node = Node(name=name, container=container, engine_url="", client=None)
        self._read_bindings(node)
        return node

    def _read_bindings(self, node: Node) -> None:
        """Fill in the node's 127.0.0.1 ports, engine URL, client and address from its
        container. Ports published without a fixed host port get new ones on every start."""
        node.container.reload()
        bindings = node.container.attrs["NetworkSettings"]["Ports"]
        published = {
            int(spec.split("/")[0]): int(binding[0]["HostPort"])
            for spec, binding in bindings.items()
            if binding
        }
        node.ports.clear()  # in place: callers may hold the dict
        node.ports.update(published)
        node.engine_url = f"tcp://127.0.0.1:{published[ENGINE_PORT]}"
        # A fixed API version: "auto" would query the engine before it has started.
        node.client = docker.DockerClient(base_url=node.engine_url, version="1.41", timeout=300)
        networks = node.container.attrs["NetworkSettings"]["Networks"]
        node.address = networks[self.network_name]["IPAddress"]

    def restart_node(self, index: int = 0, stop_timeout: int = 60, timeout: float = 180) -> None:
        """Restart a node's container, and with it its Docker engine (dockerd is its main
        process): SIGTERM first, as `systemctl restart docker` does, SIGKILL after
        `stop_timeout` seconds. Returns once the engine answers again; the node's ports,
        engine URL and client are refreshed, since Docker publishes new host ports."""
        node = self.nodes[index]
        address = node.address
        node.container.restart(timeout=stop_timeout)
        self._read_bindings(node)
        if node.address != address:
            raise RuntimeError(
                f"dind node {node.name} came back with address {node.address}, not {address}: "
                "the swarm advertises the old one"
            )
        self._wait_engine(node, time.monotonic() + timeout)

    def stop_node(self, index: int, stop_timeout: int = 10) -> None:
        """Stop a node's container: its engine is gone, as when a machine is lost."""
        self.nodes[index].container.stop(timeout=stop_timeout)

    def start_node(self, index: int, timeout: float = 180) -> None:
        """Start a stopped node again; returns once its engine answers (it rejoins the swarm
        by itself, from the swarm state kept in its volume)."""
        node = self.nodes[index]
        node.container.start()
        self._read_bindings(node)
        self._wait_engine(node, time.monotonic() + timeout)

    def _wait_engine(self, node: Node, deadline: float) -> None:
        while True:
            try:
                node.client.ping()
                return
            except (DockerException, OSError) as exc:
                node.container.reload()
                if node.container.status != "running" or time.monotonic() > deadline:
                    logs = node.container.logs(tail=20).decode(errors="replace")
                    raise RuntimeError(
                        f"dind node {node.name} did not start its engine ({exc}):\n{logs}"
                    ) from None
            time.sleep(0.5)

    def _form_swarm(self) -> None:
        manager = self.manager
        manager.client.swarm.init(advertise_addr=manager.address, listen_addr="0.0.0.0:2377")
        if len(self.nodes) > 1:
            tokens = manager.client.swarm.attrs["JoinTokens"]
            for worker in self.nodes[1:]:
                worker.client.swarm.join(
                    remote_addrs=[f"{manager.address}:2377"],
                    join_token=tokens["Worker"],
                    advertise_addr=worker.address,
                )

    def start_spare(self, timeout: float = 120) -> Node:
        """One more dind node, outside the swarm (join it with `join_as_worker`); removed with
        the swarm, or earlier with `remove_spare`."""
        spares = len(
            self.outer.containers.list(all=True, filters={"label": f"{LABEL}={self.run_id}"})
        )
        node = self._start_node(spares, publish=False)
        self._wait_engine(node, time.monotonic() + timeout)
        return node

    def join_as_worker(self, node: Node) -> str:
        """Join `node` to the swarm as a drained worker (no task lands on it); its node id."""
        tokens = self.manager.client.swarm.attrs["JoinTokens"]
        node.client.swarm.join(
            remote_addrs=[f"{self.manager.address}:2377"],
            join_token=tokens["Worker"],
            advertise_addr=node.address,
        )
        node_id = node.client.info()["Swarm"]["NodeID"]
        member = self.manager.client.nodes.get(node_id)
        member.update({**member.attrs["Spec"], "Availability": "drain"})
        return node_id

    def remove_spare(self, node: Node) -> None:
        node_id = node.client.info()["Swarm"].get("NodeID")
        with contextlib.suppress(APIError):
            node.client.swarm.leave(force=True)
        if node_id:
            with contextlib.suppress(NotFound, APIError):
                self.manager.client.nodes.get(node_id).remove(force=True)
        node.container.remove(force=True, v=True)
        with contextlib.suppress(NotFound, APIError):
            self.outer.volumes.get(f"{node.name}-docker").remove(force=True)

    def load_images(self, refs: list[str], nodes: list[Node] | None = None) -> None:
        """Copy images from this machine's engine into every node (`docker save | load`).
        One stream per image, LOAD_STREAMS at a time, the largest first: a single stream of
        them all keeps one core busy untarring while the other waits for the next image.
        (The stand-ins are one layer each, so no two streams carry the same layer.)"""
        by_size = sorted(refs, key=lambda ref: -(self.outer.images.get(ref).attrs["Size"] or 0))
        for node in self.nodes if nodes is None else nodes:
            with concurrent.futures.ThreadPoolExecutor(LOAD_STREAMS) as pool:
                for failure in pool.map(_save_and_load, by_size, [node] * len(by_size)):
                    if failure:
                        raise RuntimeError(f"loading images into {node.name} failed: {failure}")

    def image_seed(self, refs: list[str]) -> Path | None:
        """The directory of a kept volume whose image store holds exactly `refs` (built the
        first time); None where engine volumes cannot be read as files here."""
        if os.geteuid() != 0:
            return None
        ids = [self.outer.images.get(ref).id for ref in [self.image, *sorted(refs)]]
        key = hashlib.sha256(" ".join([*SEED_PARTS, *ids]).encode()).hexdigest()[:12]
        name = f"nc-acceptance-seed-{key}"
        with SEED_LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time, across sessions
            kept = {v.name: v for v in self.outer.volumes.list(filters={"label": SEED_LABEL})}
            if name in kept and f"{name}-complete" in kept:
                path = Path(kept[name].attrs["Mountpoint"])
                if not path.is_dir():
                    return None
                os.utime(path)  # in use: see SEED_IDLE_SECONDS
                return path
            self._remove_idle_seeds(kept)
            volume = self.outer.volumes.create(name, labels={SEED_LABEL: key})
            path = Path(volume.attrs["Mountpoint"])
            if not path.is_dir():
                volume.remove(force=True)
                return None
            self._fill_seed(name, refs)
            self.outer.volumes.create(f"{name}-complete", labels={SEED_LABEL: key})
            return path

    @staticmethod
    def _remove_idle_seeds(kept: dict) -> None:
        """Remove the kept seeds nobody used for SEED_IDLE_SECONDS, and any build that was
        cut short (called under SEED_LOCK, so no build is under way)."""
        complete = {name.removesuffix("-complete") for name in kept if name.endswith("-complete")}
        for name, volume in kept.items():
            seed = name.removesuffix("-complete")
            path = Path(kept[seed].attrs["Mountpoint"]) if seed in kept else None
            idle = (
                path is None
                or not path.is_dir()
                or time.time() - path.stat().st_mtime > SEED_IDLE_SECONDS
            )
            if seed not in complete or idle:
                with contextlib.suppress(APIError):
                    volume.remove(force=True)

    def _fill_seed(self, volume: str, refs: list[str]) -> None:
        builder_name = f"nc-seed-{self.run_id}"
        container = dind.create(
            self.outer,
            self.image,
            volume,
            ports={ENGINE_PORT: ("127.0.0.1", None)},
            name=builder_name,
            hostname=builder_name,
            labels={LABEL: self.run_id},
        )
        try:
            container.start()
            container.reload()
            port = container.attrs["NetworkSettings"]["Ports"][f"{ENGINE_PORT}/tcp"][0]["HostPort"]
            url = f"tcp://127.0.0.1:{port}"
            node = Node(builder_name, container, url, docker.DockerClient(url, version="1.41"))
            self._wait_engine(node, time.monotonic() + 120)
            self.load_images(refs, nodes=[node])
            container.stop(timeout=60)  # a clean shutdown: the store is consistent on disk
        finally:
            container.remove(force=True)

    @staticmethod
    def _copy_seed(seed: Path, target: Path) -> None:
        """The seed's image store into a new node's volume: layer files hard-linked (the
        engine never writes into an image layer; it renames new metadata files into place),
        directories and everything else copied."""
        for part in SEED_PARTS:
            if (target / part).exists():
                shutil.rmtree(target / part)
            command = ["cp", "-a", "--link" if part == "overlay2" else "--reflink=auto"]
            subprocess.run([*command, str(seed / part), str(target / part)], check=True)

    def remove(self) -> None:
        for container in self.outer.containers.list(
            all=True, filters={"label": f"{LABEL}={self.run_id}"}
        ):
            with contextlib.suppress(NotFound):
                container.remove(force=True, v=True)
        for node in self.nodes:
            with contextlib.suppress(NotFound, APIError):
                self.outer.volumes.get(f"{node.name}-docker").remove(force=True)
        for network in self.outer.networks.list(names=[self.network_name]):
            network.remove()


def _save_and_load(ref: str, node: Node) -> str:
    """`docker save REF | docker -H NODE load`; what went wrong, or "" if nothing did."""
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
    load = subprocess.run(
        ["docker", "-H", node.engine_url, "load", "-q"],
        stdin=save.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    save.stdout.close()
    save.wait()
    if save.returncode or load.returncode:
        return f"{ref}: {load.stderr.strip() or f'docker save exit {save.returncode}'}"
    return ""
