"""The history of operations, kept in the swarm: one Docker config per record.

Every deploy, stop, rotation, restore and rollback appends a record: when, who, the command,
the target, the result, and every service it changed with its old and new image and the
names of its configs and secrets (each name ends in the hash of its content, so a record
shows what changed without holding any value). A successful deploy or rollback also stores
each stack it applied, rendered, with its configs and secrets named: what a rollback
re-applies. The rendered stack holds no secret value (secrets reach services as files only,
DESIGN decision 7), so a record is safe to keep in a config, which anyone on a manager reads.

Records are named `nextcandle.history.<seq>`, created atomically by name like the lock, and
gzip-compressed JSON. HISTORY_KEEP (default 100) are kept, the oldest removed beyond it.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import docker
from docker.errors import APIError, NotFound

from infra.errors import EngineError
from infra.operations.lock import clock
from infra.plan import LABEL_SPEC_HASH as SPEC_HASH

NAME_PREFIX = "nextcandle.history."
LABEL_HISTORY = "org.nextcandle.history"  # its value: the record's sequence number
LABEL_ACTION = "org.nextcandle.history.action"
LABEL_TARGET = "org.nextcandle.history.target"
LABEL_RESULT = "org.nextcandle.history.result"
STACK_NAMESPACE = "com.docker.stack.namespace"
OK = "ok"
RE_APPLICABLE = ("deploy", "rollback")


@dataclass
class Record:
    seq: int
    time: float
    who: str
    command: str
    action: str  # deploy, stop, rotate, restore, rollback
    target: str
    result: str  # "ok", or "failed: <the error's line>"
    message: str = ""
    services: list[dict] = field(default_factory=list)
    stacks: dict[str, dict] = field(default_factory=dict)  # re-applicable rendered stacks

    @property
    def ok(self) -> bool:
        return self.result == OK

    def to_json(self, with_stacks: bool = True) -> dict:
        data = {
            "seq": self.seq,
            "time": self.time,
            "when": clock(self.time),
            "who": self.who,
            "command": self.command,
            "action": self.action,
            "target": self.target,
            "result": self.result,
            "message": self.message,
            "services": self.services,
        }
        if with_stacks:
            data["stacks"] = self.stacks
        else:
            data["stacks"] = sorted(self.stacks)
        return data

    def touches(self, stack: str) -> bool:
        return self.target == stack or any(
            s["service"].startswith(f"{stack}_") for s in self.services
        )


def _encode(record: Record) -> bytes:
    data = record.to_json()
    data.pop("when")
    return gzip.compress(json.dumps(data, sort_keys=True).encode(), mtime=0)


def _decode(attrs: Mapping) -> Record | None:
    spec = attrs.get("Spec") or {}
    try:
        data = json.loads(gzip.decompress(base64.b64decode(spec.get("Data") or "")))
        return Record(
            seq=int(data["seq"]),
            time=float(data["time"]),
            who=str(data["who"]),
            command=str(data["command"]),
            action=str(data["action"]),
            target=str(data["target"]),
            result=str(data["result"]),
            message=str(data.get("message", "")),
            services=list(data.get("services") or []),
            stacks=dict(data.get("stacks") or {}),
        )
    except (ValueError, KeyError, TypeError, OSError, EOFError):
        return None  # not one of ours, or damaged: history shows the others


def _configs(client: docker.DockerClient) -> list:
    configs = client.configs.list(filters={"label": LABEL_HISTORY})
    return [c for c in configs if c.name.startswith(NAME_PREFIX)]


def read(client: docker.DockerClient) -> list[Record]:
    """Every record the swarm keeps, oldest first (one API call: a config list carries the
    data)."""
    records = []
    for config in _configs(client):
        if "Data" not in (config.attrs.get("Spec") or {}):
            config.reload()
        record = _decode(config.attrs)
        if record is not None:
            records.append(record)
    return sorted(records, key=lambda r: r.seq)


def append(client: docker.DockerClient, record: Record, keep: int) -> Record:
    """Store the record under the next free sequence number, then remove the oldest beyond
    `keep`. Two appenders never take one number: the create is atomic by name."""
    existing = _configs(client)
    seq = max((int(c.attrs["Spec"]["Labels"][LABEL_HISTORY]) for c in existing), default=0) + 1
    while True:
        record.seq = seq
        labels = {
            LABEL_HISTORY: str(seq),
            LABEL_ACTION: record.action,
            LABEL_TARGET: record.target,
            LABEL_RESULT: OK if record.ok else "failed",
        }
        try:
            client.configs.create(
                name=f"{NAME_PREFIX}{seq:06d}", data=_encode(record), labels=labels
            )
            break
        except APIError as exc:
            if exc.status_code != 409:
                raise EngineError(
                    f"recording the operation in the history failed: {exc.explanation}"
                ) from None
            seq += 1
    by_age = sorted(_configs(client), key=lambda c: int(c.attrs["Spec"]["Labels"][LABEL_HISTORY]))
    for config in by_age[: max(len(by_age) - keep, 0)]:
        try:
            config.remove()
        except (NotFound, APIError):
            continue  # removed meanwhile, or pruned by the next append
    return record


def remove_all(client: docker.DockerClient) -> int:
    """Remove every record (for a fresh start); returns how many."""
    removed = 0
    for config in _configs(client):
        try:
            config.remove()
            removed += 1
        except (NotFound, APIError):
            continue
    return removed


# -- what a record says about services ------------------------------------------------------


def snapshot(client: docker.DockerClient) -> dict[str, dict]:
    """Every stack service's image, configs and secrets (by name), spec hash and version."""
    found = {}
    for service in client.services.list():
        spec = service.attrs["Spec"]
        if STACK_NAMESPACE not in (spec.get("Labels") or {}):
            continue
        container = spec["TaskTemplate"].get("ContainerSpec", {})
        found[service.name] = {
            "image": container.get("Image", ""),
            "configs": _by_key(ref["ConfigName"] for ref in container.get("Configs") or []),
            "secrets": _by_key(ref["SecretName"] for ref in container.get("Secrets") or []),
            "spec_hash": (spec.get("Labels") or {}).get(SPEC_HASH, ""),
            "version": service.attrs.get("Version", {}).get("Index", 0),
        }
    return found


def _by_key(names: Iterable[str]) -> dict[str, str]:
    """`dev_redis_conf-1a2b3c4d5e6f` -> {"dev_redis_conf": "dev_redis_conf-1a2b3c4d5e6f"}."""
    return {name.rsplit("-", 1)[0] if "-" in name else name: name for name in names}


def changes(before: Mapping[str, dict], after: Mapping[str, dict]) -> list[dict]:
    """Every service added, removed or updated between two snapshots, with its old and new
    image and the configs and secrets that changed (old and new names)."""
    changed = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old is not None and new is not None and old["version"] == new["version"]:
            continue
        entry: dict = {
            "service": name,
            "change": "added" if old is None else "removed" if new is None else "updated",
            "image": [(old or {}).get("image", ""), (new or {}).get("image", "")],
        }
        for kind in ("configs", "secrets"):
            was, now = (old or {}).get(kind, {}), (new or {}).get(kind, {})
            entry[kind] = {
                key: [was.get(key, ""), now.get(key, "")]
                for key in sorted(set(was) | set(now))
                if was.get(key) != now.get(key)
            }
            entry[f"{kind}_now"] = sorted(now.values())
        changed.append(entry)
    return changed


def re_applicable(rendered: Mapping) -> dict:
    """A rendered stack as a record keeps it: every config and secret referred to by its
    name as external, so re-applying it reuses the versions that exist (their source files
    may have changed since) and never needs a secret value."""
    stack = copy.deepcopy(dict(rendered))
    for kind in ("configs", "secrets"):
        stack[kind] = {
            key: {"name": spec.get("name", key), "external": True}
            for key, spec in (stack.get(kind) or {}).items()
        }
    return stack


def object_names(rendered: Mapping) -> set[str]:
    return {
        spec.get("name", key)
        for kind in ("configs", "secrets")
        for key, spec in (rendered.get(kind) or {}).items()
    }


def re_applicable_records(records: Iterable[Record], stack: str) -> list[Record]:
    """Successful deploys and rollbacks that stored `stack`, newest first."""
    found = [r for r in records if r.ok and r.action in RE_APPLICABLE and stack in r.stacks]
    return sorted(found, key=lambda r: r.seq, reverse=True)


def kept_objects(
    client: docker.DockerClient, stack: str, count: int, records: list[Record] | None = None
) -> set[str]:
    """The configs and secrets the newest `count` re-applicable records of `stack` use:
    pruning keeps them so a rollback finds them (ROLLBACK_KEEP). `records`, when given, were
    read already (a deploy reads them once for all its stacks)."""
    if count == 0:
        return set()
    if records is None:
        try:
            records = read(client)
        except APIError:
            return set()
    names: set[str] = set()
    for record in re_applicable_records(records, stack)[:count]:
        names |= object_names(record.stacks[stack])
    return names


def new_record(who: str, command: str, action: str, target: str, message: str = "") -> Record:
    return Record(0, time.time(), who, command, action, target, "running", message)
