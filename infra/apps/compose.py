"""An application's compose file: read, rendered by `docker stack config` (client-side, no
daemon), and checked against what an app may do (infra/apps/fill.py fills it in).

An app may not publish host ports (it is reached through Traefik), mount the Docker socket
or the platform's data, join any network but its environment's backend and the Traefik one,
run an unpinned image, or route on another host name. Each is refused with one line before
anything is changed (DESIGN decision 8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from infra import engine
from infra.catalog import TRAEFIK_NETWORK
from infra.errors import EngineError, SettingsError
from infra.labels import APP_LABEL as APP_LABEL  # re-exported: the names apps have always used
from infra.labels import ENV_LABEL as ENV_LABEL
from infra.secrets import APP_SECRETS

# The file's own key for what only the platform understands: at the top `app: <name>`, on a
# service `port: <its HTTP port>` (that service is routed).
EXTENSION = "x-nextcandle"
IMAGE_VARIABLE = "APP_IMAGE"  # what --image=REF sets; the file reads it as ${APP_IMAGE}
DOCKER_SOCKETS = (PurePosixPath("/var/run/docker.sock"), PurePosixPath("/run/docker.sock"))
# The keys the filled-in stack gives the two networks an app may join.
BACKEND, TRAEFIK = "backend", "traefik"

_APP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_ROUTER_RULE = re.compile(r"^traefik\.http\.routers\.[^.]+\.rule$")
_SERVICE_PORT = re.compile(r"^traefik\.http\.services\.[^.]+\.loadbalancer\.server\.port$")
_HOST_MATCHER = re.compile(r"\bHost\(([^)]*)\)")
_QUOTED = re.compile(r"[`\"']([^`\"']*)[`\"']")


@dataclass(frozen=True)
class Route:
    port: int
    rule: str  # the Traefik rule; Host(`<the environment's host name>`) unless the file gave one


@dataclass(frozen=True)
class AppFile:
    """A checked compose file of one app, rendered for one environment."""

    path: Path
    app: str
    env: str
    host: str  # the environment's public host name (DOMAIN_<ENV>)
    rendered: dict = field(repr=False)
    routes: dict[str, Route]  # by service

    @property
    def backend(self) -> str:
        return f"{self.env}_backend"


def _refuse(message: str) -> SettingsError:
    return SettingsError(message)


def read(path: Path) -> tuple[dict, str]:
    """The file as YAML, which must be a compose mapping with services; and its text."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _refuse(
            f"compose file {path} does not exist. Give the app's file: --file=PATH"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _refuse(f"compose file {path} cannot be read ({exc}). Fix its permissions.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise _refuse(f"{path} is not valid YAML{where}. Fix the file.") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("services"), dict)
        or not data["services"]
    ):
        raise _refuse(
            f"{path} is not a compose file (a mapping with services:). Give the app's compose file."
        )
    return data, text


def app_name(data: dict, path: Path) -> str:
    """`x-nextcandle: {app: NAME}` at the top of the file, else the file's directory name
    made a valid one (as compose makes a project name of it)."""
    extension = data.get(EXTENSION) or {}
    name = str(extension.get("app") or "") if isinstance(extension, dict) else ""
    if not name:
        name = re.sub(r"[^a-z0-9]+", "-", path.resolve().parent.name.lower()).strip("-")[:31]
    if not _APP_NAME.match(name):
        raise _refuse(
            f"{path}: app name {name!r} is not valid: use lower-case letters, digits and dashes, "
            "starting with a letter. Set it in the file: x-nextcandle: {app: my-app}"
        )
    return name


def render(path: Path, variables: dict[str, str]) -> dict:
    try:
        rendered = engine.render_stack([str(path)], variables)
    except EngineError as exc:
        detail = str(exc).split("failed: ", 1)[-1]
        raise _refuse(
            f"{path} is not a valid stack file: {detail}. Fix it (docker stack config -c {path})."
        ) from None
    return rendered


def load(
    path: Path, env: str, host: str, data_root: Path, image: str = "", engine_vars=None
) -> AppFile:
    """Read, render and check an app's compose file for environment `env`. Raises
    SettingsError with one line for anything an app may not do. Needs no daemon."""
    data, text = read(path)
    app = app_name(data, path)
    if image and IMAGE_VARIABLE not in text:
        raise _refuse(
            f"--image was given, but {path} does not use ${{{IMAGE_VARIABLE}}}. Write the "
            f"service's image as image: ${{{IMAGE_VARIABLE}:?give --image}}, or leave --image out."
        )
    variables = {**(engine_vars or {}), "ENV_NAME": env, "APP_NAME": app, "APP_HOST": host}
    if image:
        variables[IMAGE_VARIABLE] = image
    rendered = render(path, variables)
    routes = check(rendered, path, env, host, data_root)
    return AppFile(path=path, app=app, env=env, host=host, rendered=rendered, routes=routes)


# --- the checks ------------------------------------------------------------------------------


def pinned(image: str) -> bool:
    """A digest, or a tag that is not `latest` (a registry's :port is no tag)."""
    if "@" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


def labels_of(spec: dict) -> dict[str, str]:
    """Compose labels as a mapping, whether written as a mapping or as KEY=VALUE items."""
    labels = spec.get("labels") or {}
    if isinstance(labels, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in labels)
    return {str(k): "" if v is None else str(v) for k, v in labels.items()}


def network_target(key: str, declared: dict, env: str) -> tuple[str | None, str]:
    """(BACKEND or TRAEFIK or None, how the operator knows the network) for a network key."""
    spec = declared.get(key) or {}
    if spec.get("external"):
        name = str(spec.get("name") or key)
    elif key == BACKEND and not (set(spec) - {"name"}) and spec.get("name") in (None, BACKEND):
        name = f"{env}_backend"  # `backend`, declared plainly: this environment's own
    else:
        return None, f"{spec.get('name') or key} (a new network of the app's own)"
    if name == f"{env}_backend":
        return BACKEND, name
    if name == TRAEFIK_NETWORK:
        return TRAEFIK, name
    return None, name


def _check_network(key: str, declared: dict, env: str, where: str) -> str:
    target, name = network_target(key, declared, env)
    if target is None:
        raise _refuse(
            f"{where} joins network {name}. An app of {env} joins only {env}_backend (and "
            f"{TRAEFIK_NETWORK}, when routed): remove it."
        )
    return target


def _check_volumes(service: dict, where: str, data_root: Path) -> None:
    for volume in service.get("volumes") or []:
        if not isinstance(volume, dict) or volume.get("type") != "bind":
            continue
        source = PurePosixPath(str(volume.get("source", "")))
        for socket_path in DOCKER_SOCKETS:
            if source == socket_path or socket_path.is_relative_to(source):
                what = (
                    f"the Docker socket ({source})"
                    if source == socket_path
                    else f"{source}, which holds the Docker socket"
                )
                raise _refuse(
                    f"{where} mounts {what}. An app gets no access to the Docker API: "
                    "remove that volume."
                )
        root = PurePosixPath(data_root)
        if source.is_relative_to(root) or root.is_relative_to(source):
            raise _refuse(
                f"{where} mounts {source}, which holds the platform's data (DATA_ROOT {root}). "
                "Give the app a volume of its own."
            )


def _host_rule_problem(rule: str, host: str) -> str:
    """What is wrong with a router rule the file wrote ("" when it routes on `host` only)."""
    if "HostRegexp(" in rule:
        return f"routes on a pattern ({rule})"
    matchers = _HOST_MATCHER.findall(rule)
    if not matchers:
        return f"has a router rule without Host(`{host}`) ({rule}): it takes every host's requests"
    for arguments in matchers:
        for named in _QUOTED.findall(arguments) or [arguments]:
            if named != host:
                return f"routes Host(`{named}`)"
    return ""


def _route(name: str, service: dict, where: str, env: str, host: str) -> Route | None:
    """The service's route, from `x-nextcandle: {port: N}` or the Traefik port label, and a
    rule the file may give (checked); None for a service that is not routed."""
    port: object = None
    extension = service.get(EXTENSION) or {}
    if isinstance(extension, dict):
        port = extension.get("port")
    rule = ""
    for key, value in labels_of(service.get("deploy") or {}).items():
        if not key.startswith("traefik."):
            continue
        if _SERVICE_PORT.match(key):
            port = port or value
        elif _ROUTER_RULE.match(key):
            if rule:
                raise _refuse(f"{where} gives two router rules. Give one, naming {host}.")
            rule = value
        elif key != "traefik.enable":
            raise _refuse(
                f"{where} sets the label {key}: Traefik labels are filled in by infra. Keep "
                f"x-nextcandle: {{port: N}} and at most a router rule naming {host}."
            )
    if port is None:
        if rule:
            raise _refuse(f"{where} has a router rule but no port. Add x-nextcandle: {{port: N}}.")
        return None
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise _refuse(
            f"{where}: port {port!r} is not a port number. Give x-nextcandle: {{port: 8000}}."
        )
    if rule:
        problem = _host_rule_problem(rule, host)
        if problem:
            raise _refuse(
                f"{where} {problem}; an app of {env} is routed on {host} only. Remove the rule "
                f"(infra fills it in) or name {host}."
            )
    return Route(int(port), rule or f"Host(`{host}`)")


def check(rendered: dict, path: Path, env: str, host: str, data_root: Path) -> dict[str, Route]:
    """Every refusal, on the file as `docker stack config` renders it. Returns the routes."""
    declared = rendered.get("networks") or {}
    routes: dict[str, Route] = {}
    for name, service in (rendered.get("services") or {}).items():
        where = f"{path}: service {name}"
        image = str(service.get("image") or "")
        if not image:
            raise _refuse(
                f"{where} has no image. Give one with a version tag (image: my-app:1.4.2), or "
                f"image: ${{{IMAGE_VARIABLE}}} and --image=REF."
            )
        if not pinned(image):
            base = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
            raise _refuse(
                f"{where} uses image {image}, which is not pinned. Give a version tag or a "
                f"digest ({base}:1.4.2), or --image=REF."
            )
        for port in service.get("ports") or []:
            published = (
                port.get("published") or port.get("target") if isinstance(port, dict) else port
            )
            target = port.get("target", published) if isinstance(port, dict) else port
            raise _refuse(
                f"{where} publishes host port {published}. An app is reached through Traefik "
                f"on {host}: remove ports: and give x-nextcandle: {{port: {target}}}."
            )
        if service.get("network_mode"):
            raise _refuse(
                f"{where} sets network_mode. An app of {env} joins only {env}_backend (and "
                f"{TRAEFIK_NETWORK}, when routed): remove it."
            )
        _check_volumes(service, where, data_root)
        for key in service.get("networks") or {}:
            _check_network(key, declared, env, where)
        route = _route(name, service, where, env, host)
        if route:
            routes[name] = route
    for key in declared:
        _check_network(key, declared, env, f"{path}: networks: {key}")
    for key, spec in (rendered.get("secrets") or {}).items():
        if key in APP_SECRETS:
            raise _refuse(
                f"{path}: secret {key} is one infra gives every app (/run/secrets/{key}). "
                "Remove it from the file, or rename yours."
            )
        if (spec or {}).get("external"):
            raise _refuse(
                f"{path}: secret {key} is external. An app mounts the connection secrets infra "
                "gives it and secrets from files of its own: give it a file:."
            )
    return routes
