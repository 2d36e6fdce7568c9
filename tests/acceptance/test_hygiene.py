"""No secret value leaks (DESIGN decision 7): not into a service's or a container's definition,
a process's arguments or environment, a service's logs, a task's output, or git.

Which values are searched, by key name: passwords, secret and access keys, the encryption key,
the htpasswd line and the .env tokens. All are random and at least 20 characters long, so a
match cannot be innocent. Database names, role names and the admin user names are left out on
purpose: they are identifiers, not secrets ("admin", "nextcandle_dev"), and appear rightly in
logs ("connection authorized: user=nextcandle_dev") and in the output of `deploy`.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time

import psycopg
import pytest
import redis
import requests
import yaml

from infra import engine
from infra.catalog import CORE_PORTS, STACKS
from infra.secrets import ENV_FILE_TOKENS
from infra.settings import REPO_ROOT

SECRET_KEY_ENDINGS = ("_password", "_secret_key", "_access_key", "_encryption_key", "_htpasswd")
# Keys of .env that hold credentials: the two the platform hands to services as Docker
# secrets, and the applications' keys it passes through (Supabase, Hugging Face, ...).
# (SECRETS_FILE is a path, not a secret: endings, not words.)
ENV_SECRET_ENDINGS = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD")
STACKS_WITH_IMAGES = {
    "core": ["TRAEFIK_IMAGE"],
    "dev": ["POSTGRES_IMAGE", "REDIS_IMAGE"],
    "stg": ["POSTGRES_IMAGE", "REDIS_IMAGE"],
    "prod": ["POSTGRES_IMAGE", "REDIS_IMAGE"],
    "shared": ["TRAEFIK_IMAGE"],  # deploys what has an image; the rest is left out
}


def secret_values(platform) -> dict[str, str]:
    """Name -> value of everything that must never show: secrets.yml's secret keys (the
    swarm's, and this checkout's own secrets/secrets.yml if there is one) and .env's tokens."""
    found = {
        key: value for key, value in platform.secrets().items() if key.endswith(SECRET_KEY_ENDINGS)
    }
    own = REPO_ROOT / "secrets" / "secrets.yml"
    if own.is_file():
        mine = yaml.safe_load(own.read_text()) or {}
        found |= {
            f"{own}: {key}": str(value)
            for key, value in mine.items()
            if key.endswith(SECRET_KEY_ENDINGS) and value
        }
    tokens = {*ENV_FILE_TOKENS.values()}
    for name, value in platform.settings.values.items():
        if value and (name in tokens or name.endswith(ENV_SECRET_ENDINGS)):
            found[f".env {name}"] = value
    short = [key for key, value in found.items() if len(value) < 16]
    assert not short, f"too short to search without innocent matches: {short}"
    return found


def leaks(text: str, values: dict[str, str]) -> list[str]:
    """The names (never the values) of the secrets that occur in `text`."""
    return sorted(name for name, value in values.items() if value in text)


@pytest.fixture(scope="module")
def everything(platform):
    platform.deploy_requiring(STACKS_WITH_IMAGES)
    _use_every_credential(platform)
    return platform


def _use_every_credential(platform) -> None:
    """Log in everywhere once, rightly and wrongly, so that a service that logs what it
    receives has had the chance to."""
    values = platform.secrets()
    for env, port in (("dev", 5432), ("prod", 5434)):
        with psycopg.connect(
            host="127.0.0.1",
            port=platform.port(port),
            user=values[f"{env}_postgres_user"],
            password=values[f"{env}_postgres_password"],
            dbname=values[f"{env}_postgres_db"],
            connect_timeout=10,
        ) as conn:
            conn.execute("SELECT 1")
    client = redis.Redis(
        host="127.0.0.1",
        port=platform.port(6379),
        password=values["dev_redis_password"],
        socket_timeout=10,
    )
    assert client.ping()
    dashboard = f"http://127.0.0.1:{platform.port(CORE_PORTS['dashboard'])}/api/overview"
    user = values["traefik_dashboard_user"]
    assert requests.get(dashboard, auth=(user, values["traefik_dashboard_password"]), timeout=10)
    requests.get(dashboard, auth=(user, values["traefik_dashboard_password"][::-1]), timeout=10)
    time.sleep(2)  # log lines reach the engine's log files asynchronously


def _our_services(platform) -> list:
    return [
        service
        for service in platform.client.services.list()
        if (service.attrs["Spec"].get("Labels") or {}).get("com.docker.stack.namespace") in STACKS
    ]


def _task_containers(platform) -> list:
    return [
        container
        for container in platform.client.containers.list()
        if container.labels.get("com.docker.stack.namespace") in STACKS
    ]


# --- definitions ------------------------------------------------------------------------


def test_service_definitions_hold_no_secret(everything):
    values = secret_values(everything)
    services = _our_services(everything)
    assert services
    found = {
        service.name: hits
        for service in services
        if (hits := leaks(json.dumps(service.attrs), values))
    }
    assert not found, f"secrets in `docker service inspect` (Env, Args, labels ...): {found}"


def test_container_definitions_hold_no_secret(everything):
    values = secret_values(everything)
    containers = _task_containers(everything)
    assert containers
    found = {c.name: hits for c in containers if (hits := leaks(json.dumps(c.attrs), values))}
    assert not found, f"secrets in `docker inspect` of the task containers: {found}"


# --- processes --------------------------------------------------------------------------

# Every process of every task container, seen from the node: nested containers' processes
# are all visible in the node's process table, also those of images with no shell or ps.
PROCESS_TABLE = r"""
for d in /proc/[0-9]*; do
  echo "@@pid ${d#/proc/}"
  tr '\0' ' ' < "$d/cmdline" 2>/dev/null; echo
  echo "@@environ"
  tr '\0' '\n' < "$d/environ" 2>/dev/null; echo
done
"""


def _processes(platform) -> dict[str, tuple[str, str]]:
    """pid -> (command line, environment) of every process on the manager node."""
    result = platform.node().run(PROCESS_TABLE)
    assert result.rc == 0, result.stderr
    processes = {}
    for block in result.stdout.split("@@pid ")[1:]:
        head, _, environ = block.partition("@@environ\n")
        pid, _, cmdline = head.partition("\n")
        processes[pid.strip()] = (cmdline.strip(), environ)
    return processes


def test_no_process_has_a_secret_in_its_arguments(everything):
    values = secret_values(everything)
    processes = _processes(everything)
    found = {
        cmdline[:80]: hits for cmdline, _ in processes.values() if (hits := leaks(cmdline, values))
    }
    assert not found, f"secrets on process command lines: {found}"


def test_redis_password_is_not_on_the_redis_server_command_line(everything):
    values = everything.secrets()
    servers = [cmd for cmd, _ in _processes(everything).values() if "redis-server" in cmd]
    assert len(servers) >= 3, f"expected a redis-server per environment, found: {servers}"
    for env in ("dev", "stg", "prod"):
        assert not any(values[f"{env}_redis_password"] in cmd for cmd in servers), env


def test_no_running_process_has_a_secret_in_its_environment(everything):
    """Health checks run `REDISCLI_AUTH=... redis-cli ping` for a few milliseconds: the
    password is in that process's environment by design (never in its arguments). Only a
    process that still holds a secret two seconds later counts: a server, not a probe."""
    values = secret_values(everything)
    first = _processes(everything)
    time.sleep(2)
    second = _processes(everything)
    found = {
        f"{pid} {cmdline[:60]}": hits
        for pid, (cmdline, environ) in second.items()
        if (hits := leaks(environ, values)) and pid in first and leaks(first[pid][1], values)
    }
    assert not found, f"secrets in the environment of running processes: {found}"


# --- logs -------------------------------------------------------------------------------


def test_service_logs_hold_no_secret(everything):
    values = secret_values(everything)
    secrets = everything.secrets()
    basic = f"{secrets['traefik_dashboard_user']}:{secrets['traefik_dashboard_password']}"
    values["dashboard basic auth header"] = base64.b64encode(basic.encode()).decode()
    found = {}
    for service in _our_services(everything):
        text = engine.service_logs(service, stdout=True, stderr=True).decode(errors="replace")
        if hits := leaks(text, values):
            found[service.name] = hits
    assert not found, f"secrets in `docker service logs`: {found}"


# --- task output ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task",
    [
        ("deploy.env", "--name=dev", "--no-tunnel"),
        ("deploy.env", "--name=dev", "--no-tunnel", "--dry-run"),
        ("status", "-v"),
        ("status", "--json"),
        ("secrets.list",),
        ("secrets.sync",),
    ],
    ids=" ".join,
)
def test_task_output_holds_no_secret(everything, task):
    values = secret_values(everything)
    result = everything.invoke(*task)
    assert result.returncode == 0, result.stderr
    assert not leaks(result.stdout + result.stderr, values)


def test_logs_task_output_holds_no_secret(everything):
    values = secret_values(everything)
    found = {}
    for service in _our_services(everything):
        result = everything.invoke("logs", f"--service={service.name}", "--tail=1000")
        assert result.returncode == 0, result.stderr
        if hits := leaks(result.stdout + result.stderr, values):
            found[service.name] = hits
    assert not found, f"secrets in `invoke logs`: {found}"


# --- files and git ----------------------------------------------------------------------


def test_secrets_file_is_readable_by_its_owner_only(everything):
    assert everything.settings.secrets_file.stat().st_mode & 0o777 == 0o600


def _git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, check=False, timeout=120
    )


@pytest.fixture(scope="module")
def git_repo():
    try:
        result = _git("rev-parse", "--is-inside-work-tree")
    except FileNotFoundError:
        pytest.skip("git is not installed: the repository cannot be checked")
    if result.returncode != 0:
        pytest.skip(f"{REPO_ROOT} is not a git checkout: {result.stderr.decode().strip()}")


def test_secrets_file_and_env_are_ignored_by_git(git_repo):
    for path in ("secrets/secrets.yml", ".env"):
        assert _git("check-ignore", "-q", path).returncode == 0, f"{path} is not git-ignored"


def test_git_tracks_no_secrets_file_or_env(git_repo):
    tracked = _git("ls-files", "-z").stdout.decode().split("\0")
    assert "secrets/secrets.yml" not in tracked
    assert ".env" not in tracked


def test_no_secret_value_in_tracked_files_or_history(everything, git_repo):
    """Searched here, not by `git grep`/`git log -S`: a pattern argument would put every
    secret on a command line."""
    values = secret_values(everything)
    tracked = [p for p in _git("ls-files", "-z").stdout.decode().split("\0") if p]
    found = {}
    for path in tracked:
        file = REPO_ROOT / path
        if file.is_file() and (hits := leaks(file.read_text(errors="replace"), values)):
            found[path] = hits
    assert not found, f"secrets in tracked files: {found}"
    history = _git("log", "-p", "--all", "--no-color").stdout.decode(errors="replace")
    assert history, "git log printed nothing"
    assert not leaks(history, values), "secrets in the git history"
