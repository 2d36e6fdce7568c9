"""The platform's fixed facts: environments, stacks, published ports and data directories.

This is the one place that holds them. Stack files receive these values as ${VARS}; the
plan, the status report and the tests derive from the same tables.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

from infra.errors import SettingsError

CORE = "core"
SHARED = "shared"
RUNNER = "runner"

TRAEFIK_NETWORK = "traefik-public"
MONITORING_NETWORK = "monitoring"
# Overlay networks every stack joins by name; created by infra before the first deploy.
NETWORKS = (TRAEFIK_NETWORK, MONITORING_NETWORK)


@dataclass(frozen=True)
class Resources:
    cpu_reservation: str
    cpu_limit: str
    memory_reservation: str
    memory_limit: str

    def variables(self, prefix: str) -> dict[str, str]:
        return {
            f"{prefix}_CPU_RESERVATION": self.cpu_reservation,
            f"{prefix}_CPU_LIMIT": self.cpu_limit,
            f"{prefix}_MEMORY_RESERVATION": self.memory_reservation,
            f"{prefix}_MEMORY_LIMIT": self.memory_limit,
        }


@dataclass(frozen=True)
class Environment:
    """One application environment: its own Postgres and Redis, on its own network."""

    name: str
    postgres_port: int
    redis_port: int | None  # None: Redis is reachable only inside the swarm
    postgres_config: str
    postgres: Resources
    redis: Resources
    redis_maxmemory: str
    redis_appendfsync: str
    # Default of <ENV>_HOST_PORTS: whether the ports above are published on the node at all.
    # Swarm publishes on every interface (it cannot bind to 127.0.0.1), so a published
    # database port is reachable from every network the node is on.
    host_ports: bool

    @property
    def host_ports_variable(self) -> str:
        return f"{self.name.upper()}_HOST_PORTS"

    def variables(self) -> dict[str, str]:
        return {
            "ENV_NAME": self.name,
            "POSTGRES_PORT": str(self.postgres_port),
            "REDIS_PORT": "" if self.redis_port is None else str(self.redis_port),
            "POSTGRES_CONFIG_FILE": self.postgres_config,
            "REDIS_MAXMEMORY": self.redis_maxmemory,
            "REDIS_APPENDFSYNC": self.redis_appendfsync,
            **self.postgres.variables("POSTGRES"),
            **self.redis.variables("REDIS"),
        }

    def published_ports(self) -> dict[str, int]:
        """The host ports of the table, published only while the host ports are on."""
        ports = {"postgres": self.postgres_port}
        if self.redis_port is not None:
            ports["redis"] = self.redis_port
        return ports


_SMALL_POSTGRES = Resources("0.10", "0.50", "256M", "512M")
_SMALL_REDIS = Resources("0.05", "0.20", "64M", "256M")

# DESIGN.md's per-environment table: the contract inherited from the original platform.
# Host ports: on for dev, as the original (psql and IDEs on localhost); off for stg and
# prod, whose data should not be reachable from every interface by default. Applications
# in the swarm reach every database over its environment's network (tasks.<env>_postgres)
# either way; turn a port on with <ENV>_HOST_PORTS=on (and see `invoke firewall.plan`).
ENVIRONMENTS: dict[str, Environment] = {
    "dev": Environment(
        name="dev",
        postgres_port=5432,
        redis_port=6379,
        postgres_config="postgresql.conf",
        postgres=_SMALL_POSTGRES,
        redis=_SMALL_REDIS,
        redis_maxmemory="128mb",
        redis_appendfsync="everysec",
        host_ports=True,
    ),
    "stg": Environment(
        name="stg",
        postgres_port=5433,
        redis_port=None,
        postgres_config="postgresql.conf",
        postgres=_SMALL_POSTGRES,
        redis=_SMALL_REDIS,
        redis_maxmemory="128mb",
        redis_appendfsync="everysec",
        host_ports=False,
    ),
    "prod": Environment(
        name="prod",
        postgres_port=5434,
        redis_port=6381,
        postgres_config="postgresql-prod.conf",
        postgres=Resources("0.20", "1.00", "512M", "1G"),
        redis=Resources("0.10", "0.50", "128M", "512M"),
        redis_maxmemory="256mb",
        redis_appendfsync="everysec",
        host_ports=False,
    ),
}


# The original platform's reservations and limits, by service (<stack>_<service>): the
# contract the stack files are checked against (tests/unit/test_resources.py), and what the
# table in stacks/README.md shows. None: no record of that value survives, in this repository
# or its issues; it is not guessed. A service whose values differ from these, or whose values
# are not all recorded, says why in a comment in its stack file's `resources:` block.
@dataclass(frozen=True)
class OriginalResources:
    source: str  # where the record is
    cpu_reservation: str | None = None
    cpu_limit: str | None = None
    memory_reservation: str | None = None
    memory_limit: str | None = None

    def values(self) -> tuple[str | None, str | None, str | None, str | None]:
        return (self.cpu_reservation, self.cpu_limit, self.memory_reservation, self.memory_limit)


_DESIGN = "DESIGN.md's per-environment table"
_ISSUE = "issue 17"
_NO_RECORD = "no record"
NOT_IN_THE_ORIGINAL = "none: the original had no such service"

ORIGINAL_RESOURCES: dict[str, OriginalResources] = {
    **{
        f"{env.name}_{service}": OriginalResources(_DESIGN, *astuple(resources))
        for env in ENVIRONMENTS.values()
        for service, resources in (("postgres", env.postgres), ("redis", env.redis))
    },
    **{f"{env}_postgres-exporter": OriginalResources(NOT_IN_THE_ORIGINAL) for env in ENVIRONMENTS},
    # The original ran one redis-exporter, in the shared stack, for every environment.
    **{
        f"{env}_redis-exporter": OriginalResources(
            f"{_ISSUE}: changed, the original's values not given"
        )
        for env in ENVIRONMENTS
    },
    "core_traefik": OriginalResources(_NO_RECORD),
    "core_cloudflared": OriginalResources(f"{_ISSUE}: changed, the original's values not given"),
    # The original mounted the Docker socket into Traefik; this proxy replaces that mount.
    "core_docker-proxy": OriginalResources(NOT_IN_THE_ORIGINAL),
    "shared_seaweedfs": OriginalResources(f"{_NO_RECORD} (the original ran MinIO here)"),
    "shared_grafana": OriginalResources(
        f"{_ISSUE}: the limits it found were twice these", cpu_limit="0.25", memory_limit="256M"
    ),
    "shared_prometheus": OriginalResources(_ISSUE, "0.10", "0.50", "128M", "512M"),
    "shared_alertmanager": OriginalResources(NOT_IN_THE_ORIGINAL),
    "shared_loki": OriginalResources(
        f"{_ISSUE}: the limits it found were twice these", cpu_limit="0.25", memory_limit="256M"
    ),
    "shared_alloy": OriginalResources(f"{_NO_RECORD} (the original ran Promtail here)"),
    "shared_cadvisor": OriginalResources(_NO_RECORD),
    "shared_node-exporter": OriginalResources(
        f"{_ISSUE}: the original's were higher, its values not given"
    ),
    "shared_backup-exporter": OriginalResources(NOT_IN_THE_ORIGINAL),
    "shared_n8n": OriginalResources(_ISSUE, "0.50", "2.00", "512M", "2G"),
    "runner_runner": OriginalResources(_ISSUE, "0.50", "2.00", "1G", "4G"),
}

# Host ports of the core stack (Traefik), published in host mode on the manager.
CORE_PORTS: dict[str, int] = {"web": 80, "websecure": 443, "dashboard": 8080}

# Ports of services that run in the node's own network namespace (the predefined `host`
# network), by service: Swarm publishes nothing for them, they listen on every interface of
# every node themselves. Prometheus scrapes them at each node's address; the firewall guards
# them in INPUT (infra/firewall.py), not in DOCKER-USER.
HOST_NETWORK_PORTS: dict[str, int] = {"node-exporter": 9100}


@dataclass(frozen=True)
class Stack:
    """A deployable stack: its compose files and what the plan must prepare for it."""

    name: str
    description: str

    @property
    def is_environment(self) -> bool:
        return self.name in ENVIRONMENTS


STACKS: dict[str, Stack] = {
    CORE: Stack(CORE, "Traefik and the Cloudflare tunnel"),
    **{name: Stack(name, f"{name} environment: Postgres and Redis") for name in ENVIRONMENTS},
    SHARED: Stack(SHARED, "object storage, monitoring, logs and n8n"),
    RUNNER: Stack(RUNNER, "self-hosted GitHub Actions runners"),
}

# deploy.all and stop.all: core first, runner only on its own (as in the original scripts).
DEPLOY_ALL = (CORE, SHARED, "dev", "stg", "prod")
STOP_ALL = (RUNNER, "prod", "stg", "dev", SHARED, CORE)

# The node label that says a node holds a target's data (DESIGN decision 10): the stateful
# services of dev, stg, prod and shared are constrained to `node.labels.<label> == true`.
DATA_LABEL_PREFIX = "nextcandle.data"
DATA_TARGETS = (*ENVIRONMENTS, SHARED)


def data_label(target: str) -> str:
    return f"{DATA_LABEL_PREFIX}.{target}"


# Owner (uid, gid) each image expects of its bind-mounted data directory, by service name.
# Images that start as root and fix ownership themselves (postgres, redis) still get their
# final owner, so a restart never has to chown a large directory.
DATA_OWNERS: dict[str, tuple[int, int]] = {
    "postgres": (999, 999),
    "redis": (999, 999),
    "grafana": (472, 0),
    "prometheus": (65534, 65534),
    "alertmanager": (65534, 65534),
    "loki": (10001, 10001),
    "n8n": (1000, 1000),
    "seaweedfs": (1000, 1000),  # the upstream image runs as user seaweed
    "alloy": (0, 0),
    # Only read by the exporter (as nobody, the directory is 0755); written by `invoke backup.*`.
    "node-exporter": (0, 0),
    "backup-exporter": (0, 0),  # written by `invoke backup.*` as root, read by nobody (0755)
}


def published_ports(stack: str) -> dict[str, int]:
    """The host ports of a stack's table, by service or entry point name. An environment
    publishes them only while its host ports are on: see plan.published_ports."""
    if stack == CORE:
        return dict(CORE_PORTS)
    if stack in ENVIRONMENTS:
        return ENVIRONMENTS[stack].published_ports()
    return {}


def port_variables() -> dict[str, str]:
    return {
        **{f"TRAEFIK_{name.upper()}_PORT": str(port) for name, port in CORE_PORTS.items()},
        **{
            f"{name.upper().replace('-', '_')}_PORT": str(port)
            for name, port in HOST_NETWORK_PORTS.items()
        },
    }


def check_target(name: str, allowed: tuple[str, ...] | None = None) -> str:
    """Validate a stack or environment name given on the command line."""
    allowed = allowed or tuple(STACKS)
    if name not in allowed:
        raise SettingsError(
            f"unknown {'environment' if set(allowed) <= set(ENVIRONMENTS) else 'target'} "
            f"{name!r}. Valid: {', '.join(allowed)}."
        )
    return name
