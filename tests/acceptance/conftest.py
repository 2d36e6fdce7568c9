"""Session fixtures: a fresh dind swarm, the platform deployed into it through `infra`.

Options: --nodes=N (default 1) for a bigger swarm, --keep-up to leave it running for
debugging. Without a Docker engine the suite skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import docker
import pytest
import requests
import testinfra
import yaml
from botocore.client import Config
from docker.errors import DockerException

from infra import catalog, converge, deploy, secrets
from infra.catalog import CORE_PORTS, DATA_TARGETS, ENVIRONMENTS
from infra.settings import REPO_ROOT, STACKS_DIR, Settings, load_settings
from infra.swarm import placement
from tests.acceptance.dind import DindSwarm
from tests.acceptance.images import (
    REQUIRE_IMAGES,
    ImageChoice,
    choose_images,
    missing_image_outcome,
    node_images,
)

DEPLOY_TIMEOUT = float(os.environ.get("ACCEPTANCE_DEPLOY_TIMEOUT", "600"))
WORK_PARENT = os.environ.get("ACCEPTANCE_WORKDIR", "/var/tmp")
# A directory for each failing test's swarm state and service logs (the GitHub workflow
# uploads it); unset: nothing is written.
ARTIFACTS = "ACCEPTANCE_ARTIFACTS"
ARTIFACT_LOG_LINES = 200
# A dind node reports the machine's CPUs (2 on the CI machine), fewer than the original's
# reservations of the whole platform add up to (stacks/README.md, Small nodes): every
# reservation is halved, limits stay. tests/unit/test_resources.py checks the sum fits.
RESERVATIONS_SCALE = "0.5"
# Every rolling update and rollback is monitored for this long instead of the stack files'
# 30 s (UPDATE_MONITOR), so a test's deploy does not wait out half a minute per changed
# service. A task that fails its health check fails before the monitor starts, so rollbacks
# of broken updates are exercised as before.
UPDATE_MONITOR = "5s"
# n8n's login limiter counts 5 logins a minute per account (Platform.n8n_login).
N8N_LOGIN_WINDOW = 65.0


# Seconds each module keeps one worker busy on the CI machine (the suite's profile of
# 2026-12-02 at 6066c1e: four workers, updates monitored 5 s; the first module of each worker
# also paid for the image seed and the swarm, taken off here), rounded.
# With `--dist loadfile` a free worker takes the next module in collection order; the longest
# first leaves the short ones to fill the gaps at the end, so the workers finish together
# instead of one running a five-minute module alone. A module missing here counts as short:
# it runs among the last.
MODULE_SECONDS = {
    "test_alerts.py": 310,
    "test_operations.py": 255,
    "test_rotation.py": 205,
    "test_persistence.py": 175,
    "test_recovery.py": 165,
    "test_backup_offsite.py": 145,
    "test_dashboards.py": 115,
    "test_shared.py": 105,
    "test_lock.py": 70,
    "test_mistakes.py": 70,
    "test_backup.py": 65,
    "test_backup_drill.py": 60,
    "test_app.py": 55,
    "test_hygiene.py": 55,
    "test_ports.py": 40,
    "test_swarm.py": 20,
    "test_node_exporter.py": 20,
    "test_isolation.py": 20,
    "test_env.py": 10,
    "test_tasks.py": 10,
    "test_core.py": 10,
}


def pytest_configure(config):
    # xdist's loadfile otherwise sorts the modules by how many tests they hold, which says
    # little about how long they take (test_shared.py's 32 tests take less than
    # test_recovery.py's 2).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """The longest modules first (MODULE_SECONDS); a module's own tests keep their order."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))


def pytest_addoption(parser):
    group = parser.getgroup("acceptance")
    group.addoption("--nodes", type=int, default=1, help="dind nodes in the swarm (default 1)")
    group.addoption("--keep-up", action="store_true", help="leave the dind swarm running")


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the acceptance suite must run)", pytrace=False)
    pytest.skip(reason)


def _image_variables_by_service() -> dict[str, str]:
    """`<stack file>:<service>` -> the *_IMAGE variable its `image:` reads."""
    found = {}
    for path in STACKS_DIR.glob("*.yml"):
        for service, spec in (yaml.safe_load(path.read_text()).get("services") or {}).items():
            match = re.search(r"\$\{(\w+_IMAGE)", str(spec.get("image", "")))
            if match:
                found[f"{path.stem}:{service}"] = match.group(1)
    return found


def _stack_of(file_stem: str) -> list[str]:
    if file_stem.startswith("env"):
        return list(ENVIRONMENTS)
    return [file_stem.split(".")[0]]


def swarm_settings(
    swarm: DindSwarm, images: dict[str, ImageChoice], workdir: Path
) -> tuple[Settings, list[str]]:
    """Settings that deploy into `swarm` with the chosen images; services without an image
    are left out (DISABLED_SERVICES). Returns them with the names left out."""
    disabled = sorted(
        f"{stack}_{key.split(':')[1]}"
        for key, variable in _image_variables_by_service().items()
        if images[variable].ref is None
        for stack in _stack_of(key.split(":")[0])
    )
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "ENV_FILE": str(workdir / "env"),
        "DATA_ROOT": str(swarm.data_root),
        "SECRETS_FILE": str(workdir / "secrets.yml"),
        "DOCKER_HOST": swarm.manager.engine_url,
        "RESOLVE_IMAGE": "never",
        "DISABLED_SERVICES": ",".join(disabled),
        "RESERVATIONS_SCALE": RESERVATIONS_SCALE,
        "UPDATE_MONITOR": UPDATE_MONITOR,
        # Old config and secret versions are pruned at once, as the modules that check pruning
        # expect whatever deploys other modules recorded; test_lock.py keeps them (default 3).
        "ROLLBACK_KEEP": "0",
        # The suite checks every port of the table, also those stg and prod keep off by default.
        **{env.host_ports_variable: "on" for env in ENVIRONMENTS.values()},
        **{v: c.ref for v, c in images.items() if c.ref},
    }
    return load_settings(environ=environ), disabled


@dataclass
class Platform:
    settings: Settings
    swarm: DindSwarm
    images: dict[str, ImageChoice]
    deployed: dict[str, float] = field(default_factory=dict)  # stack -> seconds to converge
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def client(self) -> docker.DockerClient:
        return self.swarm.manager.client

    def deploy(self, stack: str) -> None:
        """Deploy a stack once per session through infra, as `invoke deploy.*` does."""
        if stack in self.failures:
            pytest.fail(f"deploying {stack} failed earlier:\n{self.failures[stack]}", pytrace=False)
        if stack in self.deployed:
            return
        started = time.monotonic()
        try:
            deploy.apply(
                self.settings,
                stack,
                tunnel=False,
                timeout=DEPLOY_TIMEOUT,
                report=lambda line: print(line, flush=True),
                client=self.client,
            )
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then re-raised
            self.failures[stack] = str(exc)
            raise
        self.deployed[stack] = time.monotonic() - started
        print(f"acceptance: {stack} deployed and converged in {self.deployed[stack]:.0f} s")

    def restart_manager(self) -> None:
        """Restart the manager node's Docker engine (its dind container) and point the client,
        the ports and the settings' DOCKER_HOST at the new published ports. Callers wait for
        the swarm and the stacks to converge again."""
        self.swarm.restart_node(0)
        values = {**self.settings.values, "DOCKER_HOST": self.swarm.manager.engine_url}
        self.settings = dataclasses.replace(self.settings, values=values)

    def apply(self, stack: str, settings: Settings | None = None, **kwargs) -> list[str]:
        """Deploy `stack` again through infra (whether or not this session deployed it);
        the lines it reported."""
        lines: list[str] = []
        deploy.apply(
            settings or self.settings,
            stack,
            tunnel=False,
            timeout=300,
            report=lines.append,
            client=self.client,
            **kwargs,
        )
        return lines

    def deploy_requiring(self, images_by_stack: dict[str, list[str]]) -> None:
        """Deploy each stack once its image variables are known to have an image (else the
        test skips, naming the image)."""
        for stack, variables in images_by_stack.items():
            for variable in variables:
                self.require(variable)
            self.deploy(stack)

    def require(self, variable: str) -> str:
        """The image reference for `variable`; without one the test skips, naming the image,
        or fails where ACCEPTANCE_REQUIRE_IMAGES=true."""
        choice = self.images[variable]
        if choice.ref is None:
            try:
                outcome = missing_image_outcome()
            except ValueError as exc:
                pytest.fail(str(exc), pytrace=False)
            if outcome == "fail":
                pytest.fail(
                    f"{variable}: {choice.reason} ({REQUIRE_IMAGES}=true: no test may skip "
                    "for want of an image)",
                    pytrace=False,
                )
            pytest.skip(f"{variable}: {choice.reason}")
        return choice.ref

    def port(self, node_port: int) -> int:
        """The 127.0.0.1 port that reaches `node_port` on the manager node."""
        return self.swarm.manager.ports[node_port]

    def secrets(self) -> dict[str, str]:
        return secrets.load(self.settings)

    def command_env(self, **overrides: str) -> dict[str, str]:
        """The process environment that gives `invoke` this swarm's settings, as an operator's
        .env and shell would."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
        env.update({key: value for key, value in self.settings.values.items() if value})
        env.update(self.settings.images)
        env["ENV_FILE"] = str(self.settings.env_file or "")
        return {**env, **overrides}

    def invoke(self, *args: str, timeout: float = 1200, **overrides: str):
        """The real command line, in a child process, against this swarm."""
        return subprocess.run(
            [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args],
            env=self.command_env(**overrides),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def s3(self, access_key: str = "", secret_key: str = ""):
        """An S3 client for the object store through Traefik (`s3.localhost`), with the
        generated keys unless others are given."""
        values = self.secrets()
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.port(CORE_PORTS['web'])}",
            aws_access_key_id=access_key or values["s3_access_key"],
            aws_secret_access_key=secret_key or values["s3_secret_key"],
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
            ),
        )

        def route_by_host(request, **_):
            request.headers["Host"] = "s3.localhost"  # Traefik routes on it; SigV4 signs it

        client.meta.events.register("before-sign.s3", route_by_host)
        return client

    def node(self, index: int = 0):
        """A testinfra host for a swarm node (the dind container, via this machine's engine)."""
        return testinfra.get_host(f"docker://{self.swarm.nodes[index].name}")

    def web(self, host: str, path: str = "/", **kwargs) -> requests.Response:
        """A request to Traefik's web entry point with a Host header, as the tunnel sends."""
        url = f"http://127.0.0.1:{self.port(CORE_PORTS['web'])}{path}"
        headers = {"Host": host, **kwargs.pop("headers", {})}
        return requests.get(url, headers=headers, timeout=10, **kwargs)

    def n8n_login(self, email: str, password: str) -> requests.Response:
        """n8n's REST login through Traefik, as a browser sends it. n8n allows 5 logins a
        minute per account and answers 429 beyond that; modules that log in as the owner can
        follow each other within the minute on one swarm, so a 429 is waited out (up to
        N8N_LOGIN_WINDOW) and the login's own answer returned."""
        url = f"http://127.0.0.1:{self.port(CORE_PORTS['web'])}/rest/login"
        body = {"emailOrLdapLoginId": email, "password": password}
        deadline = time.monotonic() + N8N_LOGIN_WINDOW
        while True:
            response = requests.post(url, json=body, headers={"Host": "n8n.localhost"}, timeout=30)
            if response.status_code != 429 or time.monotonic() > deadline:
                return response
            time.sleep(5)

    def wait_for(self, check, timeout: float = 120, interval: float = 0.5, what: str = ""):
        """Poll `check` until it returns a truthy value; fail with its last result or error."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except Exception as exc:  # noqa: BLE001 - polled until the deadline
                last = exc
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}: {last!r}", pytrace=False)

    def dump(self) -> str:
        """Service and task states, and the last log lines of each unconverged service."""
        lines = []
        for stack in [*self.deployed, *self.failures]:
            for state in converge.stack_states(self.client, stack):
                lines.append(f"{state.name}: {state.summary()} image={state.image}")
                lines += [f"  task error: {e}" for e in state.errors]
                if not state.converged:
                    tail = converge.service_log_tail(self.client, state.name)
                    lines += [f"  log: {line}" for line in tail]
        return "\n".join(lines)

    def service_logs(self, lines: int = ARTIFACT_LOG_LINES) -> str:
        """The last log lines of every service in the swarm, converged or not."""
        text = []
        for service in sorted(self.client.services.list(), key=lambda s: s.name):
            text.append(f"--- {service.name}")
            text += converge.service_log_tail(self.client, service.name, lines=lines)
        return "\n".join(text)


def write_failure_artifact(directory: Path, nodeid: str, phase: str, platform: Platform) -> Path:
    """The swarm state and every service's last log lines, in one file per failing test."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', nodeid)[:180]}.{phase}.txt"
    parts = [f"{nodeid}: {phase} failed"]
    for title, read in (("swarm state", platform.dump), ("service logs", platform.service_logs)):
        try:
            text = read()
        except Exception as exc:  # noqa: BLE001 - the artifact must never hide the failure
            text = f"could not read it: {exc}"
        parts += ["", f"=== {title}", text]
    path.write_text("\n".join(parts) + "\n")
    return path


@pytest.fixture(scope="session")
def platform(request) -> Platform:
    try:
        outer = docker.from_env(timeout=300)
        outer.ping()
    except DockerException as exc:
        _unavailable(f"no Docker engine reachable for the acceptance swarm ({exc})")
    base = load_settings()
    images = choose_images(outer, dict(base.images))
    dind = images["DIND_IMAGE"]
    if dind.ref is None:
        _unavailable(f"DIND_IMAGE: {dind.reason}")

    # Not under /tmp: dind's entrypoint (upstream's too) mounts a tmpfs over the node's /tmp,
    # which would hide a DATA_ROOT mounted there.
    workdir = Path(tempfile.mkdtemp(prefix="nextcandle-acceptance-", dir=WORK_PARENT))
    data_root = workdir / "data"
    data_root.mkdir()
    env_file = workdir / "env"
    env_file.write_text("PROJECT_NAME=nextcandle\nDOMAIN_PROD=example.test\n")
    node_ports = tuple(
        sorted(
            {
                *CORE_PORTS.values(),
                *(port for env in ENVIRONMENTS.values() for port in env.published_ports().values()),
            }
        )
    )
    swarm = DindSwarm(
        image=dind.ref,
        node_count=request.config.getoption("--nodes"),
        data_root=data_root,
        node_ports=node_ports,
        outer=outer,
    )
    try:
        swarm.start(images=node_images(images))
        if len(swarm.nodes) > 1:
            # As an operator of a bigger swarm does first (`invoke swarm.label`): the manager
            # holds the environments' data; a deploy refuses while no node is labelled.
            # Shared's is on a worker from the start (before any module deploys shared), so
            # test_swarm.py runs its backup, restore and alerts from the manager against a
            # data node that is not the engine's; prod's joins it there (test_swarm.py),
            # leaving the other worker free of data for the node-loss tests.
            manager = swarm.manager.client
            here = manager.nodes.get(manager.info()["Swarm"]["NodeID"])
            workers = [n for n in manager.nodes.list() if n.attrs["Spec"]["Role"] == "worker"]
            placement.set_labels(
                manager, here, [t for t in DATA_TARGETS if t != "shared" or not workers]
            )
            if workers:
                placement.set_labels(manager, workers[-1], ["shared"])
        settings, _ = swarm_settings(swarm, images, workdir)
        print(
            f"acceptance: swarm of {len(swarm.nodes)} node(s), manager {swarm.manager.engine_url}"
        )
        for choice in images.values():
            where = choice.ref or choice.reason
            print(f"acceptance: {choice.variable:<22} {choice.source:<9} {where}")
        yield Platform(settings=settings, swarm=swarm, images=images)
    finally:
        if request.config.getoption("--keep-up"):
            print(f"acceptance: kept up; DOCKER_HOST={swarm.manager.engine_url}")
        else:
            swarm.remove()
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "platform" in item.fixturenames:
        platform = item.funcargs.get("platform")
        if platform is not None:
            try:
                report.sections.append(("swarm state", platform.dump()))
            except Exception as exc:  # noqa: BLE001 - the dump must never hide the failure
                report.sections.append(("swarm state", f"could not read it: {exc}"))
    artifacts = os.environ.get(ARTIFACTS)
    if artifacts and report.failed and report.when in ("setup", "call"):
        platform = item.funcargs.get("platform")
        if isinstance(platform, Platform):
            try:
                write_failure_artifact(Path(artifacts), item.nodeid, report.when, platform)
            except OSError as exc:
                report.sections.append(("failure artifact", f"could not write it: {exc}"))


def expected_ports() -> set[int]:
    """Every port of the port table: what the whole platform publishes on its manager."""
    return {port for stack in catalog.STACKS for port in catalog.published_ports(stack).values()}
