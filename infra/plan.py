"""Plan a deploy: which networks, data directories, secrets, configs and stack commands a
target needs, with content-hashed names. Pure: reads files, never talks to Docker.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import yaml

from infra import catalog, labels, runner, targets
from infra.alerts import config as alerts_config
from infra.alerts.config import ALERTMANAGER_CONFIG_KEY
from infra.catalog import CORE, ENVIRONMENTS, NETWORKS, RUNNER, SHARED
from infra.errors import SettingsError
from infra.secrets import render_secret
from infra.settings import STACKS_DIR, Settings

HASH_LENGTH = 12
# The labels, defined in infra.labels, under the names the planner has always given them.
LABEL_STACK = labels.LABEL_STACK
LABEL_KEY = labels.LABEL_KEY
LABEL_HASH = labels.LABEL_HASH
LABEL_SPEC_HASH = labels.LABEL_SPEC_HASH

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HASH_LENGTH]


def versioned_name(stack: str, key: str, data: bytes) -> str:
    return f"{stack}_{key}-{content_hash(data)}"


@dataclass(frozen=True)
class DockerObject:
    """A Docker config or secret the stack mounts, named after its content."""

    kind: str  # "config" or "secret"
    stack: str
    key: str
    name: str
    source: str  # where the content comes from, for people: a file path or secrets.yml
    data: bytes = field(repr=False, compare=False)
    generated: bool = False  # made by infra (not `docker stack deploy`), like secrets

    @property
    def variable(self) -> str:
        return f"{self.kind.upper()}_{self.key.upper()}"

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_STACK: self.stack,
            LABEL_KEY: self.key,
            LABEL_HASH: self.name.rsplit("-", 1)[1],
        }


@dataclass(frozen=True)
class DataDir:
    path: Path
    uid: int
    gid: int


@dataclass(frozen=True)
class StackPlan:
    name: str
    files: tuple[Path, ...]
    variables: Mapping[str, str] = field(repr=False)
    secrets: tuple[DockerObject, ...]
    configs: tuple[DockerObject, ...]
    data_dirs: tuple[DataDir, ...]
    ports: Mapping[str, int]
    resolve_image: str = "changed"
    disabled: tuple[str, ...] = ()  # services of the stack files left out (DISABLED_SERVICES)
    reservations_scale: Decimal = Decimal(1)  # RESERVATIONS_SCALE, applied to the rendered stack
    update_monitor: str = ""  # UPDATE_MONITOR, applied to the rendered stack; "": the files'

    def deploy_command(self) -> list[str]:
        """The stack is rendered by config_command() and read from stdin: only its changed
        services, each labelled with the hash of its definition."""
        return [
            "docker", "stack", "deploy", f"--resolve-image={self.resolve_image}",
            "-c", "-", self.name,
        ]  # fmt: skip

    def config_command(self) -> list[str]:
        command = ["docker", "stack", "config"]
        for path in self.files:
            command += ["-c", str(path)]
        return command


@dataclass(frozen=True)
class Plan:
    networks: tuple[str, ...]
    stacks: tuple[StackPlan, ...]
    generate_secrets: bool = False  # secrets.yml is missing and will be written first
    warnings: tuple[str, ...] = ()  # one line each, shown before the deploy (or its plan)

    @property
    def data_dirs(self) -> tuple[DataDir, ...]:
        return tuple(d for stack in self.stacks for d in stack.data_dirs)


def stack_files(
    stack: str,
    tunnel: bool = True,
    stacks_dir: Path = STACKS_DIR,
    host_ports: bool = True,
    registration: runner.Registration | None = None,
) -> tuple[Path, ...]:
    """The compose files of a stack, base file first, overlays after. An environment's port
    overlays are left out when its host ports are off (<ENV>_HOST_PORTS=off); the runner's
    overlay is the one of the way it registers (its credential's secret)."""
    if stack == CORE:
        names = ["core.yml"] + (["core.tunnel.yml"] if tunnel else [])
    elif stack in ENVIRONMENTS:
        env = ENVIRONMENTS[stack]
        names = ["env.yml"]
        if host_ports:
            names += ["env.postgres-port.yml"]
            names += ["env.redis-port.yml"] if env.redis_port is not None else []
    elif stack == RUNNER:
        names = [f"{stack}.yml"] + ([registration.overlay] if registration else [])
    elif stack == SHARED:
        names = [f"{stack}.yml"]
    else:
        raise SettingsError(f"unknown stack {stack!r}. Valid: {', '.join(catalog.STACKS)}.")
    return tuple(stacks_dir / name for name in names)


def host_ports(stack: str, settings: Settings) -> bool:
    """False only for an environment whose <ENV>_HOST_PORTS is off."""
    return settings.host_ports(stack) if stack in ENVIRONMENTS else True


def published_ports(stack: str, settings: Settings) -> dict[str, int]:
    """The host ports a stack publishes with these settings, by service or entry point."""
    return catalog.published_ports(stack) if host_ports(stack, settings) else {}


def stack_variables(stack: str, settings: Settings) -> dict[str, str]:
    """Everything a stack file may interpolate, except the hashed config and secret names."""
    variables = {
        **settings.stack_variables(),
        "TRAEFIK_NETWORK": catalog.TRAEFIK_NETWORK,
        "MONITORING_NETWORK": catalog.MONITORING_NETWORK,
        **catalog.port_variables(),
    }
    if stack in ENVIRONMENTS:
        variables.update(ENVIRONMENTS[stack].variables())
    if stack in catalog.DATA_TARGETS:
        # Its stateful services run on the node labelled as holding its data (decision 10).
        variables["DATA_NODE_LABEL"] = catalog.data_label(stack)
    if stack == RUNNER:
        variables.update(runner.stack_variables(settings.values))
    return variables


def interpolate(text: str, variables: Mapping[str, str], where: str) -> str:
    """Compose-style ${NAME}, ${NAME:-default} and ${NAME:?message}, for the plan's own reading.

    The stack files themselves are interpolated by `docker stack`; this only resolves the
    file paths the plan hashes and the bind-mount paths it creates.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name in variables:
            return variables[name]
        whole = match.group(0)
        if ":-" in whole:
            return whole.split(":-", 1)[1][:-1]
        raise SettingsError(f"{where} uses ${{{name}}}, which infra does not set.")

    return _VARIABLE.sub(replace, text)


# libyaml's parser where PyYAML has it (its wheels do): the same safe loading, some ten times
# faster; a deploy reads every stack file twice and parses every rendered stack.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str):
    """yaml.safe_load, with libyaml's parser where available."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a safe loader


def _read_stack_file(path: Path) -> dict:
    try:
        stat = path.stat()
        data = _parsed_stack_file(str(path), stat.st_mtime_ns, stat.st_size)
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"stack file {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"stack file {path} is not a compose file.")
    return copy.deepcopy(data)


@functools.lru_cache(maxsize=64)
def _parsed_stack_file(path: str, mtime_ns: int, size: int):
    """A stack file parsed once per version of it (its path, time and size): a deploy plans
    every stack twice and each plan reads each file twice. Callers get a copy."""
    return load_yaml(Path(path).read_text(encoding="utf-8"))


# Configs a stack file declares `external: true`: infra makes their content and creates
# them before the deploy (their names carry its hash). Each maker returns the content, or
# None when it needs the swarm's nodes and the plan has none (a plan made without a daemon),
# and says where the content comes from.
Maker = Callable[[Settings, "Sequence[targets.SwarmNode] | None"], "bytes | None"]


def _node_targets(settings: Settings, nodes: Sequence[targets.SwarmNode] | None) -> bytes | None:
    return None if nodes is None else targets.node_exporter_targets(nodes)


def _alertmanager_config(settings: Settings, nodes: object) -> bytes:
    return alerts_config.render(settings.values)


GENERATED_CONFIGS: dict[str, Maker] = {
    targets.NODE_TARGETS_KEY: _node_targets,
    ALERTMANAGER_CONFIG_KEY: _alertmanager_config,
}


def _generated_config(
    stack: str,
    key: str,
    settings: Settings,
    nodes: Sequence[targets.SwarmNode] | None,
    where: str,
) -> DockerObject:
    if key not in GENERATED_CONFIGS:
        raise SettingsError(
            f"{where}: config {key} is external, and infra generates none of that name. "
            f"Give it a file: (generated: {', '.join(sorted(GENERATED_CONFIGS))})."
        )
    data = GENERATED_CONFIGS[key](settings, nodes)
    if data is None:  # the swarm's node list, in a plan made without a daemon
        return DockerObject(
            "config", stack, key, f"{stack}_{key}-<from the swarm>", targets.UNKNOWN, b"", True
        )
    if key == targets.NODE_TARGETS_KEY:
        source = targets.describe(nodes or ())
    else:
        source = "the ALERT_* settings (.env), rendered by infra/alerts/config.py"
    return DockerObject("config", stack, key, versioned_name(stack, key, data), source, data, True)


def plan_stack(
    stack: str,
    settings: Settings,
    secret_values: Mapping[str, str] | None,
    tunnel: bool = True,
    nodes: Sequence[targets.SwarmNode] | None = None,
) -> StackPlan:
    """What deploying one stack needs. Without secret values (secrets.yml not yet generated),
    secret names carry a placeholder hash; so do configs generated from the swarm's nodes
    without `nodes` (a plan made without a daemon)."""
    files = stack_files(
        stack,
        tunnel,
        settings.stacks_dir,
        host_ports(stack, settings),
        runner.registration(settings.values) if stack == RUNNER else None,
    )
    variables = stack_variables(stack, settings)
    secrets: dict[str, DockerObject] = {}
    configs: dict[str, DockerObject] = {}
    data_dirs: dict[Path, DataDir] = {}

    for path in files:
        document = _read_stack_file(path)
        for key, spec in (document.get("configs") or {}).items():
            if spec.get("external"):
                configs[key] = _generated_config(stack, key, settings, nodes, path.name)
                continue
            source = Path(
                interpolate(str(spec.get("file", "")), variables, f"{path.name} config {key}")
            )
            source = (path.parent / source).resolve()
            try:
                data = source.read_bytes()
            except OSError:
                raise SettingsError(
                    f"{path.name}: config {key} reads {source}, which does not exist."
                ) from None
            configs[key] = DockerObject(
                "config",
                stack,
                key,
                versioned_name(stack, key, data),
                _relative(source, settings.root),
                data,
            )
        for key in document.get("secrets") or {}:
            if secret_values is None:
                data, name = b"", f"{stack}_{key}-<new>"
            else:
                data = render_secret(stack, key, secret_values)
                name = versioned_name(stack, key, data)
            secrets[key] = DockerObject("secret", stack, key, name, "secrets.yml", data)
        for service, spec in (document.get("services") or {}).items():
            for volume in spec.get("volumes") or []:
                source = (
                    volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
                )
                if not re.match(r"\$\{DATA_ROOT[}:]", source):
                    continue
                directory = Path(interpolate(source, variables, f"{path.name} {service}"))
                uid, gid = catalog.DATA_OWNERS.get(service, (0, 0))
                data_dirs[directory] = DataDir(directory, uid, gid)

    for obj in (*secrets.values(), *configs.values()):
        variables[obj.variable] = obj.name
    disabled = tuple(
        sorted(
            name.split("_", 1)[1]
            for name in settings.disabled_services
            if name.startswith(f"{stack}_")
        )
    )
    known = {
        name
        for path in stack_files(stack, True, settings.stacks_dir)
        for name in _read_stack_file(path).get("services") or {}
    }
    unknown = [name for name in disabled if name not in known]
    if unknown:
        raise SettingsError(
            f"DISABLED_SERVICES names {stack}_{unknown[0]}, which stack {stack} does not have. "
            f"Valid: {', '.join(f'{stack}_{s}' for s in sorted(known))}."
        )
    return StackPlan(
        name=stack,
        files=files,
        variables=variables,
        secrets=tuple(secrets.values()),
        configs=tuple(configs.values()),
        data_dirs=tuple(data_dirs.values()),
        ports=published_ports(stack, settings),
        resolve_image=settings.get("RESOLVE_IMAGE") or "changed",
        disabled=disabled,
        reservations_scale=settings.reservations_scale,
        update_monitor=settings.update_monitor,
    )


_CPU_STEP = Decimal("0.001")
_MEMORY_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>[kmg]?)b?")
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_bytes(value: object) -> int:
    """A compose memory size: bytes (as `docker stack config` writes them) or 64M, 1G, ..."""
    match = _MEMORY_SIZE.fullmatch(str(value).strip().lower())
    if match is None:
        raise SettingsError(f"memory size {value!r} is not a size like 64M or 1G.")
    return int(Decimal(match["number"]) * _MEMORY_UNITS[match["unit"]])


def scale_reservations(rendered: dict, scale: Decimal) -> dict:
    """The rendered stack with every service's CPU and memory reservations multiplied by
    `scale` (RESERVATIONS_SCALE); limits stay as the stack files say. Scale 1: unchanged."""
    if scale == 1:
        return rendered
    scaled = copy.deepcopy(rendered)
    for service in (scaled.get("services") or {}).values():
        reservations = (service.get("deploy") or {}).get("resources", {}).get("reservations")
        if not reservations:
            continue
        if "cpus" in reservations:
            cpus = (Decimal(str(reservations["cpus"])) * scale).quantize(_CPU_STEP, ROUND_HALF_UP)
            reservations["cpus"] = str(max(cpus, _CPU_STEP))
        if "memory" in reservations:
            memory = int(memory_bytes(reservations["memory"]) * scale)
            reservations["memory"] = str(max(memory, 1))
    return scaled


def override_update_monitor(rendered: dict, monitor: str) -> dict:
    """The rendered stack with the monitor period of every service's update and rollback
    config set to `monitor` (UPDATE_MONITOR); "" leaves the stack files' own."""
    if not monitor:
        return rendered
    changed = copy.deepcopy(rendered)
    for service in (changed.get("services") or {}).values():
        for key in ("update_config", "rollback_config"):
            config = (service.get("deploy") or {}).get(key)
            if config is not None:
                config["monitor"] = monitor
    return changed


def deploy_order(target: str) -> tuple[str, ...]:
    """The stacks a deploy of `target` brings up, in order: core first, as the original did."""
    if target == "all":
        return catalog.DEPLOY_ALL
    if target == CORE:
        return (CORE,)
    return (CORE, target)


def plan_deploy(
    stack_names: tuple[str, ...],
    settings: Settings,
    secret_values: Mapping[str, str] | None,
    tunnel: bool = True,
    nodes: Sequence[targets.SwarmNode] | None = None,
) -> Plan:
    stacks = tuple(plan_stack(name, settings, secret_values, tunnel, nodes) for name in stack_names)
    return Plan(networks=NETWORKS, stacks=stacks, generate_secrets=secret_values is None)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
