"""The live diff: what a deploy would change in the running swarm, per service.

The stack is rendered exactly as `deploy.render` renders it for the deploy (the same
`docker stack config`, the same spec hash), then each service is compared with its live
spec: unchanged (the hash it carries is the one it would get), added, removed, or changed
with what changed: the image, which configs and secrets (by name, whose suffix is the hash
of their content; never a value), environment variables (by name), resources, ports,
labels, or else the rest of the definition. Reads only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import docker

from infra import engine
from infra.plan import LABEL_SPEC_HASH, memory_bytes
from infra.settings import Settings

UNCHANGED = "unchanged"
CHANGED = "changed"
ADDED = "added"
REMOVED = "removed"
STACK_LABELS = "com.docker.stack."


@dataclass(frozen=True)
class ServiceDiff:
    service: str
    status: str  # unchanged, changed, added, removed
    changes: tuple[str, ...] = ()

    @property
    def line(self) -> str:
        return f"{self.service}: {'; '.join(self.changes) if self.changes else self.status}"

    def to_json(self) -> dict:
        return {"service": self.service, "status": self.status, "changes": list(self.changes)}


def _short(name: str) -> str:
    """`dev_redis_conf-1a2b3c4d5e6f` -> `1a2b3c4d5e6f`: the content hash a name ends in."""
    return name.rsplit("-", 1)[-1] if "-" in name else name


def _key(name: str) -> str:
    return name.rsplit("-", 1)[0] if "-" in name else name


def _image(ref: str) -> str:
    """An image reference without the digest Swarm pins and without Docker Hub's prefix."""
    ref = ref.split("@", 1)[0]
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def _mounted(service: Mapping, rendered: Mapping, kind: str) -> dict[str, str]:
    names = {}
    for ref in service.get(kind) or []:
        source = ref["source"] if isinstance(ref, dict) else ref
        name = (rendered.get(kind) or {}).get(source, {}).get("name", source)
        names[_key(name)] = name
    return names


def _environment(value) -> dict[str, str]:
    if isinstance(value, list):
        pairs = (item.split("=", 1) for item in value)
        return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}
    return {key: "" if item is None else str(item) for key, item in (value or {}).items()}


def _cpus(value) -> int:
    return int(Decimal(str(value)) * 1_000_000_000)


def _resources(deploy: Mapping) -> dict:
    wanted = deploy.get("resources") or {}
    return {
        kind: {
            "cpus": _cpus(wanted[kind]["cpus"]) if "cpus" in (wanted.get(kind) or {}) else 0,
            "memory": memory_bytes(wanted[kind]["memory"])
            if "memory" in (wanted.get(kind) or {})
            else 0,
        }
        for kind in ("limits", "reservations")
    }


def _live_resources(task: Mapping) -> dict:
    live = task.get("Resources") or {}
    return {
        kind: {
            "cpus": (live.get(key) or {}).get("NanoCPUs", 0),
            "memory": (live.get(key) or {}).get("MemoryBytes", 0),
        }
        for kind, key in (("limits", "Limits"), ("reservations", "Reservations"))
    }


def _ports(ports) -> set[tuple]:
    found = set()
    for port in ports or []:
        found.add(
            (
                int(port.get("target", 0)),
                int(port.get("published") or 0),
                port.get("protocol") or "tcp",
                port.get("mode") or "ingress",
            )
        )
    return found


def _live_ports(spec: Mapping) -> set[tuple]:
    return {
        (
            int(port.get("TargetPort", 0)),
            int(port.get("PublishedPort") or 0),
            port.get("Protocol") or "tcp",
            port.get("PublishMode") or "ingress",
        )
        for port in (spec.get("EndpointSpec") or {}).get("Ports") or []
    }


def _ours(labels: Mapping | None) -> dict[str, str]:
    return {
        key: str(value)
        for key, value in (labels or {}).items()
        if not key.startswith(STACK_LABELS) and key != LABEL_SPEC_HASH
    }


def _changed_names(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def compare(name: str, wanted: Mapping, rendered: Mapping, live_spec: Mapping) -> ServiceDiff:
    """One service: its rendered definition against its live spec."""
    labels = live_spec.get("Labels") or {}
    if labels.get(LABEL_SPEC_HASH) == wanted["deploy"]["labels"][LABEL_SPEC_HASH]:
        return ServiceDiff(name, UNCHANGED)
    task = live_spec.get("TaskTemplate") or {}
    container = task.get("ContainerSpec") or {}
    changes = []
    old_image, new_image = container.get("Image", ""), wanted.get("image", "")
    if _image(old_image) != _image(new_image):
        changes.append(f"image {_image(old_image)} -> {_image(new_image)}")
    for kind, field, word in (
        ("configs", "ConfigName", "config"),
        ("secrets", "SecretName", "secret"),
    ):
        live = {_key(ref[field]): ref[field] for ref in container.get(kind.capitalize()) or []}
        new = _mounted(wanted, rendered, kind)
        for key in sorted(set(live) | set(new)):
            if key not in live:
                changes.append(f"{word} {key} added ({_short(new[key])})")
            elif key not in new:
                changes.append(f"{word} {key} removed")
            elif live[key] != new[key]:
                changes.append(f"{word} {key} changed ({_short(live[key])} -> {_short(new[key])})")
    env = _changed_names(
        _environment(container.get("Env") or []), _environment(wanted.get("environment"))
    )
    if env:
        changes.append(f"environment changed ({', '.join(env)})")
    if _live_resources(task) != _resources(wanted.get("deploy") or {}):
        changes.append("resources changed")
    if _live_ports(live_spec) != _ports(wanted.get("ports")):
        changes.append("ports changed")
    label_names = []
    for live_labels, new_labels in (
        (_ours(labels), _ours((wanted.get("deploy") or {}).get("labels"))),
        (_ours(container.get("Labels")), _ours(wanted.get("labels"))),
    ):
        for key in _changed_names(live_labels, new_labels):
            # A label that carries the image reference (com.nextcandle.image) changes with
            # the image: the image line above says it.
            was, now = _image(live_labels.get(key, "")), _image(new_labels.get(key, ""))
            if (was, now) != (_image(old_image), _image(new_image)):
                label_names.append(key)
    if label_names:
        changes.append(f"labels changed ({', '.join(sorted(set(label_names)))})")
    if not changes:
        changes.append(
            "definition changed (command, health check, mounts, networks, placement or "
            "update policy)"
        )
    return ServiceDiff(name, CHANGED, tuple(changes))


def diff_stack(client: docker.DockerClient, stack: str, rendered: Mapping) -> list[ServiceDiff]:
    """Every service of a rendered stack (and every live one it no longer has)."""
    live = {service.name: service.attrs["Spec"] for service in engine.stack_services(client, stack)}
    found = []
    for short, wanted in sorted(rendered["services"].items()):
        name = f"{stack}_{short}"
        if name not in live:
            found.append(ServiceDiff(name, ADDED, ("added",)))
        else:
            found.append(compare(name, wanted, rendered, live[name]))
    found += [
        ServiceDiff(name, REMOVED, ("removed",))
        for name in sorted(set(live) - {f"{stack}_{short}" for short in rendered["services"]})
    ]
    return found


def live_diff(
    settings: Settings,
    target: str,
    tunnel: bool = True,
    client: docker.DockerClient | None = None,
) -> dict[str, list[ServiceDiff]]:
    """What `deploy.apply(settings, target, tunnel)` would change, per stack."""
    from infra import deploy

    client = client or engine.connect(settings.docker_host)
    engine.require_manager(client)
    plan = deploy.prepare(settings, target, tunnel, engine.swarm_nodes(client))
    return {
        stack.name: diff_stack(client, stack.name, deploy.render(stack)) for stack in plan.stacks
    }


def format_diff(diffs: Mapping[str, list[ServiceDiff]]) -> list[str]:
    lines = []
    for stack, services in diffs.items():
        changing = [s for s in services if s.status != UNCHANGED]
        lines.append(
            f"stack {stack}: {len(changing)} services would change, "
            f"{len(services) - len(changing)} unchanged"
        )
        lines += [f"  {service.line}" for service in services]
    return lines


def anything_changes(diffs: Mapping[str, list[ServiceDiff]]) -> bool:
    return any(s.status != UNCHANGED for services in diffs.values() for s in services)
