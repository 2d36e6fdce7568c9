"""The benchmark's swarm, its runs, and the two ways of deploying it measures: through infra
(`apply`, or `deploy_stack` and `wait_converged` for a stack outside the catalog) and with
plain docker commands."""

from __future__ import annotations

import functools
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker
import yaml

from infra import converge, deploy, engine, secrets
from infra import plan as planning
from infra.plan import StackPlan, override_update_monitor, plan_stack, scale_reservations
from infra.settings import Settings, load_settings
from tests.acceptance.conftest import DEPLOY_TIMEOUT, WORK_PARENT, swarm_settings
from tests.acceptance.dind import DindSwarm
from tests.acceptance.images import choose_images, node_images
from tests.apicalls import ApiCalls, count_api_calls

# What `apply` spends its time on: module attributes it calls, wrapped while a run is timed.
# A call made inside another measured call counts only for the outer one.
WAIT_PHASE = "wait converged (events; polls)"
PHASES: dict[str, tuple[tuple[object, str], ...]] = {
    "prepare (read files, plan, hash)": ((deploy, "prepare"),),
    "engine reads (swarm, nodes, ports, networks, live labels)": (
        (engine, "swarm_state"),
        (engine, "ensure_swarm"),
        (deploy, "check_ports_free"),
        (engine, "ensure_network"),
        (engine, "stack_services"),
    ),
    "secrets and configs (listed once, created if missing)": (
        (engine, "existing_secret_names"),
        (engine, "existing_config_names"),
        (engine, "ensure_secret"),
        (engine, "ensure_config"),
    ),
    # render_all runs the renders side by side: timed as one.
    "render (docker stack config)": ((deploy, "render_all"), (engine, "render_stack")),
    "docker stack deploy": ((engine, "docker_cli"),),
    WAIT_PHASE: ((converge, "wait_converged"),),
    "prune unused secrets/configs": ((deploy, "prune_objects"),),
}
POLL_PLAIN = 0.25  # how often the plain way asks `docker service ls`


def cpu_busy_seconds() -> float:
    """The machine's CPU time spent on anything but idling and waiting for I/O since boot,
    summed over every core (/proc/stat's first line; guest time is already in user)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@contextmanager
def cpu_used() -> Iterator[list[float]]:
    """The busy CPU seconds of the block, in the one-item list yielded, once it ends."""
    spent: list[float] = []
    before = cpu_busy_seconds()
    try:
        yield spent
    finally:
        spent.append(cpu_busy_seconds() - before)


def log(message: str) -> None:
    print(f"bench: {message}", flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Run:
    seconds: float
    engine_ready: float = 0.0  # seconds from the start until the last task of the stacks ran
    phases: dict[str, float] = field(default_factory=dict)
    updates: int | None = None  # services whose version index changed (redeploys)
    converged: bool = True
    api_calls: int | None = None  # requests to the engine during the whole operation
    wait_api_calls: int | None = None  # of them, during the convergence waits
    services_changed: int | None = None  # what the deploy handed to the engine
    api_summary: str = ""
    slowest: dict[str, float] = field(default_factory=dict)  # last services running, seconds
    cpu_seconds: float | None = None  # the machine's busy CPU time meanwhile, every core

    @property
    def cores_busy(self) -> float | None:
        """How many cores were busy on average: near the machine's count, the run waited on
        CPU (every process's, the engine's and the services' own start), not on anyone."""
        return self.cpu_seconds / self.seconds if self.cpu_seconds is not None else None


@dataclass
class Bench:
    settings: Settings
    swarm: DindSwarm
    workdir: Path
    rendered: dict[str, tuple[str, str]] = field(default_factory=dict)  # stack -> (yaml, resolve)
    extra: dict[str, StackPlan] = field(default_factory=dict)  # stacks outside the catalog
    generated: dict[str, list] = field(default_factory=dict)  # stack -> configs infra makes
    runs: dict[str, list[Run]] = field(default_factory=lambda: defaultdict(list))
    figures: dict[str, object] = field(default_factory=dict)
    disturbed: list[str] = field(default_factory=list)  # other test runs seen while measuring

    @property
    def client(self) -> docker.DockerClient:
        return self.swarm.manager.client

    @property
    def docker_env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.settings.docker_host}

    @property
    def invoke_env(self) -> dict[str, str]:
        """As tests/acceptance/test_tasks.py runs invoke against the swarm, with Python
        writing its bytecode as it does on an operator's machine (a session that turns that
        off would compile every module of infra at each `invoke`, some 0.1 s)."""
        settings = self.settings
        environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {
            **environ,
            "DOCKER_HOST": settings.docker_host,
            "ENV_FILE": str(settings.env_file or ""),
            "DATA_ROOT": str(settings.data_root),
            "SECRETS_FILE": str(settings.secrets_file),
        }


# --- the swarm and its settings, made as the acceptance suite's `platform` fixture makes them


def start(outer: docker.DockerClient) -> Bench:
    base = load_settings()
    images = choose_images(outer, dict(base.images))
    dind = images["DIND_IMAGE"]
    if dind.ref is None:
        raise SystemExit(f"bench: DIND_IMAGE: {dind.reason}")
    workdir = Path(tempfile.mkdtemp(prefix="nextcandle-bench-", dir=WORK_PARENT))
    data_root = workdir / "data"
    data_root.mkdir()
    env_file = workdir / "env"
    env_file.write_text("PROJECT_NAME=nextcandle\nDOMAIN_PROD=example.test\n")
    # No published node ports: every figure is read through the engine's API.
    swarm = DindSwarm(image=dind.ref, node_count=1, data_root=data_root, node_ports=(), outer=outer)
    bench = None
    try:
        # The same images as the acceptance suite's swarm: its kept image seed serves both.
        refs = node_images(images)
        started = time.perf_counter()
        swarm.start(images=refs)
        log(
            f"dind node up with {len(refs)} images and swarm initialised in "
            f"{time.perf_counter() - started:.1f} s"
        )
        settings, disabled = swarm_settings(swarm, images, workdir)
        bench = Bench(settings=settings, swarm=swarm, workdir=workdir)
        log(f"manager {swarm.manager.engine_url}; left out (no image here): {', '.join(disabled)}")
        return bench
    finally:
        if bench is None:
            swarm.remove()
            shutil.rmtree(workdir, ignore_errors=True)


def stop_stacks(bench: Bench, stacks: Sequence[str]) -> None:
    for stack in reversed(stacks):
        deploy.stop(bench.settings, stack, report=lambda _line: None, client=bench.client)


def versions(bench: Bench, stacks: Sequence[str]) -> dict[str, int]:
    return {
        service.name: service.version
        for stack in stacks
        for service in engine.stack_services(bench.client, stack)
    }


def changed(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(1 for name in after if before.get(name) != after[name])


def _epoch(stamp: str) -> float:
    """An engine timestamp (RFC 3339 with nanoseconds, UTC) as seconds since the epoch."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    base = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return base + float(f"0.{fraction or 0}")


def ready_times(bench: Bench, stacks: Sequence[str]) -> dict[str, float]:
    """When (epoch seconds) each service's last task the stacks want running reached
    `running`, by service."""
    ready: dict[str, float] = {}
    for stack in stacks:
        for service in engine.stack_services(bench.client, stack):
            for task in service.tasks(filters={"desired-state": "running"}):
                if task["Status"]["State"] == "running":
                    at = _epoch(task["Status"]["Timestamp"])
                    ready[service.name] = max(ready.get(service.name, 0.0), at)
    return ready


def engine_ready_at(bench: Bench, stacks: Sequence[str]) -> float:
    """When (epoch seconds) the last task the stacks want running reached `running`: the
    engine's own convergence, whatever the deploy tool waited for after it."""
    return max(ready_times(bench, stacks).values(), default=0.0)


def all_converged(bench: Bench, stacks: Sequence[str]) -> bool:
    return all(
        state.converged for stack in stacks for state in converge.stack_states(bench.client, stack)
    )


def others_running() -> list[str]:
    """Other pytest or nox processes on this machine (not this one nor its parents): what
    would share the machine with the measures and distort them."""
    mine, pid = set(), os.getpid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # A process waiting for the Docker lock (flock) or wrapping one (timeout) uses nothing.
        if re.search(r"pytest|\bnox\b", command) and not command.startswith(("flock", "timeout")):
            found.append(f"{entry.name}: {command.strip()[:80]}")
    return found


def watch(bench: Bench, when: str) -> None:
    """Note (and say) when another test run shares the machine during a measure."""
    others = others_running()
    if others:
        bench.disturbed.append(f"{when}: {'; '.join(others)}")
        log(f"WARNING: other test runs share the machine ({when}): {'; '.join(others)}")


# --- where infra spends its time


@contextmanager
def phases(
    calls: ApiCalls | None = None, calls_by_phase: dict[str, int] | None = None
) -> Iterator[dict[str, float]]:
    """Seconds per phase; with `calls` (a counter running meanwhile), API calls per phase
    into `calls_by_phase`."""
    spent: dict[str, float] = defaultdict(float)
    depth = [0]
    originals = []

    def wrap(phase: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            depth[0] += 1
            started = time.perf_counter()
            calls_before = calls.total if calls is not None else 0
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[phase] += time.perf_counter() - started
                    if calls is not None and calls_by_phase is not None:
                        calls_by_phase[phase] = (
                            calls_by_phase.get(phase, 0) + calls.total - calls_before
                        )

        return timed

    for phase, targets in PHASES.items():
        for module, name in targets:
            original = getattr(module, name)
            originals.append((module, name, original))
            setattr(module, name, wrap(phase, original))
    try:
        yield spent
    finally:
        for module, name, original in reversed(originals):
            setattr(module, name, original)


# --- ours: infra, as `invoke deploy.*` runs it


def services_changed(lines: list[str]) -> int:
    """How many services a deploy handed to the engine, from what it reported."""
    return sum(
        len(line.split(": deploying ", 1)[1].split(", "))
        for line in lines
        if ": deploying " in line
    )


def ours(bench: Bench, target: str, stacks: Sequence[str]) -> Run:
    """`apply(target)` for a catalog target; for a stack outside the catalog (the synthetic
    one), what apply does with it: `deploy_stack`, then `wait_converged` on what changed."""
    lines: list[str] = []
    # What a deploy keeps for its own second look (parsed stack files, the n8n owner hash)
    # starts empty, as in the fresh process of an `invoke deploy.*`.
    planning._parsed_stack_file.cache_clear()
    secrets.n8n_password_hash.cache_clear()
    wall = time.time()
    by_phase: dict[str, int] = {}
    with (
        count_api_calls(bench.client) as calls,
        phases(calls, by_phase) as spent,
        cpu_used() as cpu,
    ):
        started = time.perf_counter()
        if target in bench.extra:
            since = time.time()
            plan = bench.extra[target]
            names = deploy.deploy_stack(bench.client, plan, report=lines.append)
            converge.wait_converged(
                bench.client,
                plan.name,
                changed=set(names),
                timeout=DEPLOY_TIMEOUT,
                progress=lines.append,
                since=since,
            )
        else:
            deploy.apply(
                bench.settings,
                target,
                tunnel=False,
                timeout=DEPLOY_TIMEOUT,
                report=lines.append,
                client=bench.client,
            )
        seconds = time.perf_counter() - started
    ready = ready_times(bench, stacks)
    slowest = sorted(ready.items(), key=lambda item: item[1], reverse=True)[:3]
    return Run(
        seconds=seconds,
        engine_ready=max(ready.values(), default=wall) - wall,
        slowest={name: round(at - wall, 2) for name, at in slowest},
        phases={**spent, "other (infra's own code)": seconds - sum(spent.values())},
        api_calls=calls.total,
        wait_api_calls=by_phase.get(WAIT_PHASE, 0),
        services_changed=services_changed(lines),
        api_summary=calls.summary(),
        cpu_seconds=cpu[0],
    )


# --- plain: the docker CLI on the very files infra renders


def render(bench: Bench, stack: str) -> tuple[str, str]:
    """The stack file a plain docker user would feed: rendered with infra's variables, `$`
    escaped as infra.deploy does, the DISABLED_SERVICES left out."""
    if stack in bench.extra:
        plan = bench.extra[stack]
    else:
        values = secrets.with_env_tokens(secrets.load(bench.settings), bench.settings)
        # With the swarm's nodes, as apply plans it: the configs generated from them exist.
        nodes = engine.swarm_nodes(bench.client)
        plan = plan_stack(stack, bench.settings, values, tunnel=False, nodes=nodes)
    rendered = engine.render_stack([str(p) for p in plan.files], plan.variables)
    # The reservations apply scales (RESERVATIONS_SCALE), so both ways fit on the node alike,
    # and the monitor periods it sets (UPDATE_MONITOR).
    rendered = scale_reservations(rendered, plan.reservations_scale)
    rendered = override_update_monitor(rendered, plan.update_monitor)
    for name in plan.disabled:
        rendered["services"].pop(name, None)
    text = yaml.safe_dump(deploy._escape_dollars(rendered), sort_keys=False)
    # The configs infra generates (Prometheus' node targets) carry the stack's namespace, so
    # `docker stack rm` removes them: the plain way creates them again before each deploy.
    bench.generated[stack] = [obj for obj in plan.configs if obj.generated]
    return text, plan.resolve_image


def create_generated_configs(bench: Bench, stacks: Sequence[str]) -> None:
    """What a plain docker user does first (`docker config create`), not timed."""
    for stack in stacks:
        for obj in bench.generated.get(stack, []):
            engine.ensure_config(bench.client, obj)


def stack_deploy(bench: Bench, stack: str, detach: bool) -> None:
    text, resolve = bench.rendered[stack]
    command = ["docker", "stack", "deploy", f"--detach={str(detach).lower()}"]
    result = subprocess.run(
        [*command, f"--resolve-image={resolve}", "-c", "-", stack],
        input=text,
        env=bench.docker_env,
        capture_output=True,
        text=True,
        check=False,
        timeout=DEPLOY_TIMEOUT,
    )
    if result.returncode:
        raise RuntimeError(f"docker stack deploy {stack} failed: {result.stderr.strip()}")


def cli_wait(bench: Bench, stacks: Sequence[str]) -> Run:
    """`docker stack deploy --detach=false -c - <stack>`, one stack after the other. The CLI
    returns once every service has run for its update monitor period (30 s here), one
    service after the other."""
    create_generated_configs(bench, stacks)
    wall = time.time()
    started = time.perf_counter()
    for stack in stacks:
        stack_deploy(bench, stack, detach=False)
    seconds = time.perf_counter() - started
    return Run(
        seconds=seconds,
        engine_ready=engine_ready_at(bench, stacks) - wall,
        converged=all_converged(bench, stacks),
    )


def plain(bench: Bench, stacks: Sequence[str]) -> Run:
    """The plain floor: `docker stack deploy` (detached) of every stack at once, then
    `docker service ls` every POLL_PLAIN s until each of their services shows n/n replicas
    (a task with a health check counts as running once it is healthy)."""
    create_generated_configs(bench, stacks)
    wall = time.time()
    with cpu_used() as cpu:
        started = time.perf_counter()
        seconds = _plain_deploy(bench, stacks, started)
    return Run(
        seconds=seconds,
        engine_ready=engine_ready_at(bench, stacks) - wall,
        converged=all_converged(bench, stacks),
        cpu_seconds=cpu[0],
    )


def _plain_deploy(bench: Bench, stacks: Sequence[str], started: float) -> float:
    for stack in stacks:
        stack_deploy(bench, stack, detach=True)
    prefixes = tuple(f"{stack}_" for stack in stacks)
    while True:
        listed = subprocess.run(
            ["docker", "service", "ls", "--format", "{{.Name}} {{.Replicas}}"],
            env=bench.docker_env,
            capture_output=True,
            text=True,
            check=False,
        )
        replicas = [
            line.split()[1].split("/")
            for line in listed.stdout.splitlines()
            if line.startswith(prefixes)
        ]
        if replicas and all(running == desired for running, desired in replicas):
            break
        if time.perf_counter() - started > DEPLOY_TIMEOUT:
            raise RuntimeError(f"{', '.join(stacks)} did not converge: {replicas}")
        time.sleep(POLL_PLAIN)
    return time.perf_counter() - started


def redeploy(bench: Bench, how: Callable[[], Run], stacks: Sequence[str]) -> Run:
    """The same deploy once more, right after: what it costs and what it touches."""
    before = versions(bench, stacks)
    run = how()
    run.updates = changed(before, versions(bench, stacks))
    return run


def subprocess_seconds(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {result.stderr.strip()[-300:]}")
    return seconds
