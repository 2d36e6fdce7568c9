"""Operator settings: `.env`, the process environment and the image file, validated once.

Precedence is the usual one for compose tools: the process environment wins over `.env`,
which wins over the defaults below. Paths are resolved to absolute ones here, once, so every
task works from any directory (DESIGN decision 5).
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from dotenv.parser import parse_stream

from infra import runner
from infra.alerts import receivers
from infra.catalog import ENVIRONMENTS, STACKS, check_target  # noqa: F401 (re-exported)
from infra.errors import SettingsError
from infra.operations import config as operating

REPO_ROOT = Path(__file__).resolve().parent.parent
STACKS_DIR = REPO_ROOT / "stacks"
CONFIGS_DIR = REPO_ROOT / "configs"
DEFAULT_IMAGES_FILE = STACKS_DIR / "images.env"


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


_ON_OFF = ("on", "off")

# Every variable the original platform's .env knew, plus DATA_ROOT, with its default.
# None marks a value that has no default and is needed only by some commands.
DEFAULTS: dict[str, str | None] = {
    "PROJECT_NAME": "nextcandle",
    "DOMAIN_DEV": "dev.localhost",
    "DOMAIN_STG": "stg.localhost",
    "DOMAIN_PROD": "localhost",
    "CLOUDFLARE_TUNNEL_TOKEN": None,
    # The runner stack (README: Runners): where runners register, and one way to register.
    "GITHUB_OWNER": None,  # an organisation (acme) or one repository (acme/app)
    "RUNNER_ACCESS_TOKEN": None,  # a personal access token: the image mints registrations
    "RUNNER_APP_ID": None,  # or a GitHub App: its id, its private key file (.pem) ...
    "RUNNER_APP_PRIVATE_KEY_FILE": None,
    "RUNNER_APP_LOGIN": None,  # ... and the account it is installed on (default: the owner)
    "RUNNER_TOKEN": None,  # or a registration token, which GitHub lets live one hour
    "RUNNER_REPLICAS": "2",
    "RUNNER_EPHEMERAL": "off",  # on: a runner takes one job, then a fresh one registers
    "RUNNER_LABELS": "",  # extra labels, comma-separated
    "RUNNER_GROUP": "",  # an organisation's runner group (default: Default)
    "DATA_ROOT": None,  # <repo>/.data
    "SECRETS_FILE": None,  # <repo>/secrets/secrets.yml
    "SWARM_ADVERTISE_ADDR": None,  # let Docker choose
    "RESOLVE_IMAGE": "changed",  # docker stack deploy --resolve-image
    "DOCKER_HOST": None,  # the swarm manager's engine; default: the local socket
    "DISABLED_SERVICES": "",  # e.g. shared_n8n,shared_cadvisor: left out of every deploy
    # DEV_HOST_PORTS, STG_HOST_PORTS, PROD_HOST_PORTS: on|off, defaults from the catalog
    **{env.host_ports_variable: _on_off(env.host_ports) for env in ENVIRONMENTS.values()},
    "FIREWALL_ALLOW": "",  # networks (CIDRs) `invoke firewall.apply` lets reach the ports
    # The off-site copy of every verified backup (infra/backup/offsite.py); its keys are
    # backup_s3_access_key and backup_s3_secret_key in secrets.yml. No bucket: no copy.
    "BACKUP_S3_BUCKET": "",
    "BACKUP_S3_ENDPOINT": "",  # e.g. https://s3.example.com; empty: AWS S3 of the region
    "BACKUP_S3_REGION": "us-east-1",
    "BACKUP_ROOT": None,  # <repo>/.backups
    # Which backups `invoke backup.*` keeps once a new one is verified (parse_keep); all: every one
    "BACKUP_KEEP": "7d,4w,6m",
    # When the installed schedule (invoke backup.schedule) backs up, in TIMEZONE (parse_schedule)
    "BACKUP_SCHEDULE": "daily 03:00",
    # Where `invoke backup.schedule --install` writes its systemd units
    "SYSTEMD_UNIT_DIR": "/etc/systemd/system",
    # The platform's time zone: the backup schedule's and n8n's (GENERIC_TIMEZONE, TZ)
    "TIMEZONE": "Asia/Seoul",
    # Alert receivers and route timings (infra/alerts/receivers.py); none set: UI only.
    **receivers.DEFAULTS,
    # Every CPU and memory reservation is multiplied by it when a stack is rendered, limits
    # are not: for a node smaller than the original's reservations (stacks/README.md,
    # Small nodes).
    "RESERVATIONS_SCALE": "1",
    # Set (5s, 1m): every update and rollback monitor period of the rendered stacks, in place of
    # the stack files' own (30 s, the runner's 60 s). Empty: the stack files' values. For a
    # test swarm, where each rolling update would otherwise wait out the full period.
    "UPDATE_MONITOR": "",
    # The deploy lock's TTL, and how much history and how many old versions the swarm keeps
    # (infra/operations/config.py).
    **operating.DEFAULTS,
}
# ENV_FILE (default <repo>/.env) is read from the process environment only.

_PROJECT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_RESOLVE_IMAGE = ("always", "changed", "never")
_UPDATE_MONITOR = re.compile(r"[1-9][0-9]*(ms|s|m)")


@dataclass(frozen=True)
class Keep:
    """BACKUP_KEEP: the newest backup of each of the last `days` days, `weeks` ISO weeks and
    `months` months (UTC) is kept; `everything` keeps every backup (BACKUP_KEEP=all)."""

    days: int = 0
    weeks: int = 0
    months: int = 0
    everything: bool = False

    def __str__(self) -> str:
        if self.everything:
            return "all"
        return f"{self.days}d,{self.weeks}w,{self.months}m"


_KEEP_ITEM = re.compile(r"^(\d{1,4})([dwm])$")
_KEEP_UNITS = {"d": "days", "w": "weeks", "m": "months"}


def parse_keep(value: str, where: str = "") -> Keep:
    """`7d,4w,6m` (each of d, w, m at most once, in any order, a missing one is 0) or `all`."""
    text = value.strip().lower()
    if text == "all":
        return Keep(everything=True)
    counts: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        match = _KEEP_ITEM.match(item)
        if not match or _KEEP_UNITS[match.group(2)] in counts:
            raise SettingsError(
                f"BACKUP_KEEP={value!r}{where} is not valid: say how many daily, weekly and "
                "monthly backups to keep, like 7d,4w,6m (each of d, w, m once), or all."
            )
        counts[_KEEP_UNITS[match.group(2)]] = int(match.group(1))
    return Keep(**counts)


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NAMES = {
    name: index
    for index, full in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    )
    for name in (full, full[:3])
}
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Schedule:
    """BACKUP_SCHEDULE: at each of `times` (hour, minute) every day, or only on `weekday`
    (0 Monday .. 6 Sunday), in the platform's time zone."""

    times: tuple[tuple[int, int], ...]
    weekday: int | None = None

    def __str__(self) -> str:
        clocks = ",".join(f"{h:02d}:{m:02d}" for h, m in self.times)
        if self.weekday is None:
            return f"daily {clocks}"
        return f"weekly {_WEEKDAYS[self.weekday]} {clocks}"


def parse_schedule(value: str, where: str = "") -> Schedule:
    """`daily 03:00` (or `daily 03:00,15:00`) or `weekly Sun 03:00`."""
    words = value.split()
    bad = SettingsError(
        f"BACKUP_SCHEDULE={value!r}{where} is not valid: write `daily HH:MM` (e.g. daily 03:00; "
        "several times: daily 03:00,15:00) or `weekly DAY HH:MM` (e.g. weekly Sun 03:00), "
        "a 24-hour clock in TIMEZONE."
    )
    if len(words) == 2 and words[0].lower() == "daily":
        weekday, clocks = None, words[1]
    elif len(words) == 3 and words[0].lower() == "weekly":
        day = words[1].lower()
        if day not in _DAY_NAMES:
            raise bad
        weekday, clocks = _DAY_NAMES[day], words[2]
    else:
        raise bad
    times = []
    for clock in clocks.split(","):
        match = _CLOCK.match(clock)
        if not match:
            raise bad
        times.append((int(match.group(1)), int(match.group(2))))
    if len(set(times)) != len(times):
        raise bad
    return Schedule(tuple(sorted(times)), weekday)


def parse_timezone(value: str, where: str = "") -> str:
    """An IANA time zone name this machine knows (zoneinfo), e.g. Asia/Seoul or UTC."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        if not value or value.startswith(("/", ".")):
            raise ValueError(value)
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"TIMEZONE={value!r}{where} is not a time zone this machine knows. Write an IANA "
            "name such as Asia/Seoul, Europe/Berlin or UTC (default Asia/Seoul)."
        ) from None
    return value


@dataclass(frozen=True)
class Settings:
    root: Path
    values: Mapping[str, str]
    images: Mapping[str, str]
    data_root: Path
    secrets_file: Path
    env_file: Path | None = field(default=None)
    backup_root: Path | None = field(default=None)  # None: <root>/.backups

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    @property
    def stacks_dir(self) -> Path:
        return self.root / "stacks"

    @property
    def backups(self) -> Path:
        """BACKUP_ROOT: where `invoke backup.*` writes (absolute)."""
        return self.backup_root or self.root / ".backups"

    @property
    def backup_keep(self) -> Keep:
        """BACKUP_KEEP: how many daily, weekly and monthly backups retention keeps."""
        return parse_keep(self.values["BACKUP_KEEP"])

    @property
    def backup_schedule(self) -> Schedule:
        """BACKUP_SCHEDULE: when the installed schedule backs up (in `timezone`)."""
        return parse_schedule(self.values["BACKUP_SCHEDULE"])

    @property
    def timezone(self) -> str:
        """TIMEZONE: the platform's time zone (the schedule's, n8n's)."""
        return parse_timezone(self.values["TIMEZONE"])

    @property
    def systemd_unit_dir(self) -> Path:
        """SYSTEMD_UNIT_DIR: where the schedule's systemd units are installed (absolute)."""
        return _absolute(self.root, self.values["SYSTEMD_UNIT_DIR"])

    @property
    def project_name(self) -> str:
        return self.values["PROJECT_NAME"]

    @property
    def shared_domain(self) -> str:
        return self.values["DOMAIN_PROD"]

    def domain(self, environment: str) -> str:
        return self.values[f"DOMAIN_{environment.upper()}"]

    @property
    def tunnel_token(self) -> str:
        return self.get("CLOUDFLARE_TUNNEL_TOKEN")

    @property
    def docker_host(self) -> str:
        return self.get("DOCKER_HOST")

    @property
    def disabled_services(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.get("DISABLED_SERVICES").split(",") if n.strip())

    def host_ports(self, environment: str) -> bool:
        """Whether the environment's Postgres and Redis ports are published on the node."""
        return self.get(ENVIRONMENTS[environment].host_ports_variable).lower() == "on"

    @property
    def firewall_allow(self) -> tuple[ipaddress.IPv4Network, ...]:
        return parse_networks(self.get("FIREWALL_ALLOW"))

    @property
    def reservations_scale(self) -> Decimal:
        return Decimal(self.values["RESERVATIONS_SCALE"])

    @property
    def update_monitor(self) -> str:
        return self.values["UPDATE_MONITOR"]

    @property
    def runner_replicas(self) -> int:
        return int(self.values["RUNNER_REPLICAS"])

    def stack_variables(self) -> dict[str, str]:
        """Variables every stack file may use (images, paths, domains)."""
        return {
            **self.images,
            "DATA_ROOT": str(self.data_root),
            "PROJECT_NAME": self.project_name,
            "DOMAIN_DEV": self.domain("dev"),
            "DOMAIN_STG": self.domain("stg"),
            "DOMAIN_PROD": self.domain("prod"),
            "SHARED_DOMAIN": self.shared_domain,
            "GITHUB_OWNER": self.get("GITHUB_OWNER"),
            "RUNNER_REPLICAS": str(self.runner_replicas),
            "TIMEZONE": self.timezone,
            **self.engine_variables(),
        }

    def engine_variables(self) -> dict[str, str]:
        """For the docker CLI's environment: the same engine as the SDK's."""
        return {"DOCKER_HOST": self.docker_host} if self.docker_host else {}


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file; a line that is neither that nor a comment is an error."""
    if path.is_dir():
        raise SettingsError(f"{path} is a directory, not a KEY=VALUE file. Give the file's path.")
    try:
        # utf-8-sig: an editor's byte order mark would otherwise glue itself to the first key
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SettingsError(
            f"{path} cannot be read ({exc.strerror}). Fix its permissions."
        ) from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise SettingsError(
            f"{path} line {line} is not UTF-8 text. Save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)."
        ) from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error or (binding.key is not None and binding.value is None):
            # The line itself is not echoed: it may hold a token.
            raise SettingsError(
                f"{path} line {binding.original.line} is not KEY=VALUE. "
                "Fix or remove that line (comments start with #)."
            )
        if binding.key is not None:
            values[binding.key] = binding.value
    return values


def load_settings(root: Path = REPO_ROOT, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    env_file = _absolute(root, environ.get("ENV_FILE") or ".env")
    from_file = read_env_file(env_file) if env_file.exists() else {}

    values: dict[str, str] = {}
    for name, default in DEFAULTS.items():
        value = environ.get(name, from_file.get(name, default or ""))
        values[name] = value.strip()
    for name, value in from_file.items():  # keys the platform passes through (Supabase, ...)
        values.setdefault(name, environ.get(name, value))

    _validate(values, env_file if env_file.exists() else None)
    images = load_images(root, values, environ)
    data_root = _absolute(root, values["DATA_ROOT"] or ".data")
    secrets_file = _absolute(root, values["SECRETS_FILE"] or "secrets/secrets.yml")
    backup_root = _absolute(root, values["BACKUP_ROOT"] or ".backups")
    return Settings(
        root=root,
        values=values,
        images=images,
        data_root=data_root,
        secrets_file=secrets_file,
        env_file=env_file if env_file.exists() else None,
        backup_root=backup_root,
    )


def load_images(
    root: Path, values: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """The image file (IMAGES_FILE or stacks/images.env), each entry overridable by name."""
    path = Path(environ.get("IMAGES_FILE") or values.get("IMAGES_FILE") or "")
    path = _absolute(root, str(path)) if str(path) not in ("", ".") else DEFAULT_IMAGES_FILE
    if path.is_dir():
        raise SettingsError(
            f"image file {path} is a directory. Set IMAGES_FILE to a file like stacks/images.env."
        )
    if not path.is_file():
        raise SettingsError(f"image file {path} does not exist. Unset IMAGES_FILE or fix its path.")
    images = read_env_file(path)
    for name in images:
        if not name.endswith("_IMAGE"):
            raise SettingsError(f"{path}: {name} is not an image variable (names end in _IMAGE).")
        images[name] = environ.get(name, images[name]).strip()
        if not images[name] or ":" not in images[name].rsplit("/", 1)[-1]:
            raise SettingsError(
                f"{path}: {name}={images[name]!r} has no pinned tag. Write it as name:tag."
            )
        if images[name].endswith(":latest"):
            raise SettingsError(f"{path}: {name} uses :latest. Pin a version tag.")
    return images


def _validate(values: Mapping[str, str], env_file: Path | None) -> None:
    where = f" (in {env_file} or the environment)" if env_file else ""
    if not _PROJECT_NAME.match(values["PROJECT_NAME"]):
        raise SettingsError(
            f"PROJECT_NAME={values['PROJECT_NAME']!r}{where} is not valid: use lower-case "
            "letters, digits and dashes, starting with a letter (e.g. nextcandle)."
        )
    replicas = values["RUNNER_REPLICAS"]
    if not replicas.isdigit() or not 0 < int(replicas) <= 32:
        raise SettingsError(
            f"RUNNER_REPLICAS={replicas!r}{where} is not a number from 1 to 32. Fix it in .env."
        )
    if not _is_scale(values["RESERVATIONS_SCALE"]):
        raise SettingsError(
            f"RESERVATIONS_SCALE={values['RESERVATIONS_SCALE']!r}{where} is not a number above "
            "0 and at most 1 (e.g. 0.5 halves every reservation). Fix it in .env."
        )
    if values["UPDATE_MONITOR"] and not _UPDATE_MONITOR.fullmatch(values["UPDATE_MONITOR"]):
        raise SettingsError(
            f"UPDATE_MONITOR={values['UPDATE_MONITOR']!r}{where} is not a duration like 5s or "
            "1m (or empty: the stack files' own monitor periods). Fix it in .env."
        )
    if values["RESOLVE_IMAGE"] not in _RESOLVE_IMAGE:
        raise SettingsError(
            f"RESOLVE_IMAGE={values['RESOLVE_IMAGE']!r}{where} is not valid. "
            f"Valid: {', '.join(_RESOLVE_IMAGE)}."
        )
    for env in ENVIRONMENTS.values():
        name = env.host_ports_variable
        if values[name].lower() not in _ON_OFF:
            raise SettingsError(
                f"{name}={values[name]!r}{where} is not valid. Valid: on, off "
                f"(default {_on_off(env.host_ports)})."
            )
    for name in (n.strip() for n in values["DISABLED_SERVICES"].split(",")):
        stack, _, service = name.partition("_")
        if name and (stack not in STACKS or not service):
            raise SettingsError(
                f"DISABLED_SERVICES{where} has {name!r}, which is not <stack>_<service> "
                f"(e.g. shared_n8n). Stacks: {', '.join(STACKS)} (invoke status lists services)."
            )
    _check_advertise_addr(values["SWARM_ADVERTISE_ADDR"], where)
    parse_networks(values["FIREWALL_ALLOW"], where)
    parse_keep(values["BACKUP_KEEP"], where)
    parse_schedule(values["BACKUP_SCHEDULE"], where)
    parse_timezone(values["TIMEZONE"], where)
    if not values["SYSTEMD_UNIT_DIR"]:
        raise SettingsError(
            f"SYSTEMD_UNIT_DIR{where} is empty. Unset it (default /etc/systemd/system) or give "
            "a directory."
        )
    receivers.validate(values, where)
    runner.validate(values, where)
    operating.validate(values, where)
    for env in ENVIRONMENTS:
        domain = values[f"DOMAIN_{env.upper()}"]
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", domain):
            raise SettingsError(
                f"DOMAIN_{env.upper()}={domain!r}{where} is not a host name. "
                "Write it like app.example.com."
            )


def _check_advertise_addr(value: str, where: str) -> None:
    """SWARM_ADVERTISE_ADDR: what `docker swarm init --advertise-addr` takes, an address
    (with an optional :port) or an interface name; checked here because the deploy that
    inits the swarm has already written secrets.yml by then."""
    if not value:
        return
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        address = True
    except ValueError:
        address = False
    interface = re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,14}", host) is not None
    if not (address or interface) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise SettingsError(
            f"SWARM_ADVERTISE_ADDR={value!r}{where} is not an address or interface. Write "
            "this node's address (10.0.0.5, 10.0.0.5:2377) or its interface (eth0)."
        )


def _is_scale(value: str) -> bool:
    try:
        scale = Decimal(value)
    except InvalidOperation:
        return False
    return scale.is_finite() and 0 < scale <= 1


def parse_networks(value: str, where: str = "") -> tuple[ipaddress.IPv4Network, ...]:
    """FIREWALL_ALLOW: comma-separated IPv4 networks (10.0.0.0/8) or addresses (192.0.2.7)."""
    networks = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise SettingsError(
                    f"FIREWALL_ALLOW{where} has {item!r}, which is not a network. "
                    "Write networks like 10.0.0.0/8 or addresses like 192.0.2.7, "
                    "separated by commas."
                ) from None
            raise SettingsError(
                f"FIREWALL_ALLOW{where} has {item!r}, which has host bits set. "
                f"Did you mean {loose}?"
            ) from None
        if network.version != 4:
            raise SettingsError(
                f"FIREWALL_ALLOW{where} has {item!r}, an IPv6 network: the firewall filters "
                "IPv4 only (see README, Host ports and the firewall). Remove it."
            )
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def _absolute(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else root / path).resolve()
