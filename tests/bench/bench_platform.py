"""Benchmarks of the platform against plain docker, on a fresh single-node dind swarm.

Prints figures and asserts nothing (project issue 5, point 7). Each measure runs in the same
process, on the same engine, next to its plain docker equivalent:

1. deploy to converged: `infra.deploy.apply(settings, "core" | "dev", tunnel=False)` (dev
   hands core and dev to the engine, then waits on both) versus
   `docker stack deploy --detach=false` of the same rendered files (core, then dev). Every
   stack is removed before each run: each run starts from none, with the networks, secrets
   and data directories of the first deploy. Median of --repeat.
2. no-op redeploy of dev right after: seconds and the number of services whose version index
   changed (core's and dev's), for `apply` and for the same `docker stack deploy` again.
3. `invoke status` (subprocess) versus `docker service ls`, with every stack that has images
   here deployed. Median of --runs.
4. `invoke --list` start-up (subprocess) versus `docker --version`. Median of --runs.

Where the time goes is printed too: the phases of `apply`, when the engine had the last task
running versus when the deploy returned, the API calls of the status table, and the slowest
imports of `invoke --list` (python -X importtime), and the API calls of each operation: a
deploy (and of it, its convergence waits, per service changed), a no-op redeploy, the status
table.

The swarm, its settings and its images are made as the acceptance suite makes them
(tests/acceptance/conftest.py); the swarm is removed at the end.

Run: nox -s bench, or python -m tests.bench.bench_platform [--repeat N] [--runs N] [--json F]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform as host_platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker
import yaml
from docker.errors import DockerException

from infra import converge, deploy, engine, report, secrets
from infra.catalog import CORE, DEPLOY_ALL
from infra.plan import plan_stack
from infra.settings import REPO_ROOT, Settings, load_settings
from tests.acceptance.conftest import (
    DEPLOY_TIMEOUT,
    WORK_PARENT,
    swarm_settings,
)
from tests.acceptance.dind import DindSwarm
from tests.acceptance.images import choose_images

GOAL_DEPLOY_RATIO = 1.05
GOAL_NOOP_SECONDS = 2.0
GOAL_STATUS_SECONDS = 1.0
GOAL_LIST_SECONDS = 0.3

# What `apply` spends its time on: module attributes it calls, wrapped while a run is timed.
# A call made inside another measured call counts only for the outer one.
PHASES: dict[str, tuple[tuple[object, str], ...]] = {
    "prepare (read files, plan, hash)": ((deploy, "prepare"),),
    "engine reads (swarm, networks, live labels)": (
        (engine, "swarm_state"),
        (engine, "ensure_swarm"),
        (engine, "ensure_network"),
        (engine, "stack_services"),
    ),
    "secrets (ensure each)": ((engine, "ensure_secret"),),
    "render (docker stack config)": ((engine, "render_stack"),),
    "docker stack deploy": ((engine, "docker_cli"),),
    "wait converged (events; polls)": ((converge, "wait_converged"),),
    "prune unused secrets/configs": ((deploy, "prune_objects"),),
}


def log(message: str) -> None:
    print(f"bench: {message}", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Run:
    seconds: float
    engine_ready: float  # seconds from the start until the last task of the stacks ran
    phases: dict[str, float] = field(default_factory=dict)
    updates: int | None = None  # services whose version index changed (redeploys)
    converged: bool = True
    api_calls: int | None = None  # requests to the engine during the whole operation
    wait_api_calls: int | None = None  # of them, during the convergence waits
    services_changed: int | None = None  # what the deploy handed to the engine


@dataclass
class Bench:
    settings: Settings
    swarm: DindSwarm
    workdir: Path
    rendered: dict[str, tuple[str, str]] = field(default_factory=dict)  # stack -> (yaml, resolve)
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
        """As tests/acceptance/test_tasks.py runs invoke against the swarm."""
        settings = self.settings
        return {
            **os.environ,
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
        started = time.perf_counter()
        swarm.start()
        log(f"dind node up and swarm initialised in {time.perf_counter() - started:.1f} s")
        refs = sorted({c.ref for v, c in images.items() if c.ref and v != "DIND_IMAGE"})
        started = time.perf_counter()
        swarm.load_images(refs)
        log(f"{len(refs)} images loaded into the node in {time.perf_counter() - started:.1f} s")
        settings, disabled = swarm_settings(swarm, images, workdir)
        bench = Bench(settings=settings, swarm=swarm, workdir=workdir)
        log(f"manager {swarm.manager.engine_url}; left out (no image here): {', '.join(disabled)}")
        return bench
    finally:
        if bench is None:
            swarm.remove()
            shutil.rmtree(workdir, ignore_errors=True)


def stop_stacks(bench: Bench, *stacks: str) -> None:
    for stack in stacks:
        deploy.stop(bench.settings, stack, report=lambda _line: None, client=bench.client)


def versions(bench: Bench, *stacks: str) -> dict[str, int]:
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


def engine_ready_at(bench: Bench, *stacks: str) -> float:
    """When (epoch seconds) the last task the stacks want running reached `running`: the
    engine's own convergence, whatever the deploy tool waited for after it."""
    latest = 0.0
    for stack in stacks:
        for service in engine.stack_services(bench.client, stack):
            for task in service.tasks(filters={"desired-state": "running"}):
                if task["Status"]["State"] == "running":
                    latest = max(latest, _epoch(task["Status"]["Timestamp"]))
    return latest


def all_converged(bench: Bench, *stacks: str) -> bool:
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
        if re.search(r"pytest|\bnox\b", command):
            found.append(f"{entry.name}: {command.strip()[:80]}")
    return found


def watch(bench: Bench, when: str) -> None:
    """Note (and say) when another test run shares the machine during a measure."""
    others = others_running()
    if others:
        bench.disturbed.append(f"{when}: {'; '.join(others)}")
        log(f"WARNING: other test runs share the machine ({when}): {'; '.join(others)}")


# --- where apply spends its time


@contextmanager
def phases(
    calls: engine.ApiCalls | None = None, calls_by_phase: dict[str, int] | None = None
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


# --- the two ways of deploying


def ours(bench: Bench, target: str) -> Run:
    stacks = (CORE, target) if target != CORE else (CORE,)
    lines: list[str] = []
    wall = time.time()
    by_phase: dict[str, int] = {}
    with engine.count_api_calls(bench.client) as calls, phases(calls, by_phase) as spent:
        started = time.perf_counter()
        deploy.apply(
            bench.settings,
            target,
            tunnel=False,
            timeout=DEPLOY_TIMEOUT,
            report=lines.append,
            client=bench.client,
        )
        seconds = time.perf_counter() - started
    return Run(
        seconds=seconds,
        engine_ready=engine_ready_at(bench, *stacks) - wall,
        phases={**spent, "other (apply's own code)": seconds - sum(spent.values())},
        api_calls=calls.total,
        wait_api_calls=by_phase.get(WAIT_PHASE, 0),
        services_changed=services_changed(lines),
    )


WAIT_PHASE = next(
    name for name, targets in PHASES.items() if (converge, "wait_converged") in targets
)


def services_changed(lines: list[str]) -> int:
    """How many services a deploy handed to the engine, from what it reported."""
    return sum(
        len(line.split(": deploying ", 1)[1].split(", "))
        for line in lines
        if ": deploying " in line
    )


def render(bench: Bench, stack: str) -> tuple[str, str]:
    """The stack file a plain docker user would feed: rendered with infra's variables, `$`
    escaped as infra.deploy does, the DISABLED_SERVICES left out."""
    values = secrets.with_env_tokens(secrets.load(bench.settings), bench.settings)
    plan = plan_stack(stack, bench.settings, values, tunnel=False)
    rendered = engine.render_stack([str(p) for p in plan.files], plan.variables)
    for name in plan.disabled:
        rendered["services"].pop(name, None)
    text = yaml.safe_dump(deploy._escape_dollars(rendered), sort_keys=False)
    return text, plan.resolve_image


def _stack_deploy(bench: Bench, stack: str, detach: bool) -> None:
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


def plain(bench: Bench, target: str) -> Run:
    """`docker stack deploy --detach=false -c - <stack>`: core, then the target. The CLI
    returns once every service has run for its update monitor period (30 s here), one
    service after the other."""
    stacks = (CORE, target) if target != CORE else (CORE,)
    wall = time.time()
    started = time.perf_counter()
    for stack in stacks:
        _stack_deploy(bench, stack, detach=False)
    seconds = time.perf_counter() - started
    return Run(
        seconds=seconds,
        engine_ready=engine_ready_at(bench, *stacks) - wall,
        converged=all_converged(bench, *stacks),
    )


def detached(bench: Bench, target: str) -> Run:
    """The plain floor: `docker stack deploy` (detached) of core and the target at once, then
    `docker stack services` every 0.25 s until every service shows n/n replicas (a task with
    a health check counts as running once it is healthy)."""
    stacks = (CORE, target) if target != CORE else (CORE,)
    wall = time.time()
    started = time.perf_counter()
    for stack in stacks:
        _stack_deploy(bench, stack, detach=True)
    while True:
        replicas = []
        for stack in stacks:
            listed = subprocess.run(
                ["docker", "stack", "services", "--format", "{{.Replicas}}", stack],
                env=bench.docker_env,
                capture_output=True,
                text=True,
                check=False,
            )
            replicas += [line.split()[0].split("/") for line in listed.stdout.splitlines()]
        if replicas and all(running == desired for running, desired in replicas):
            break
        if time.perf_counter() - started > DEPLOY_TIMEOUT:
            raise RuntimeError(f"{', '.join(stacks)} did not converge: {replicas}")
        time.sleep(0.25)
    seconds = time.perf_counter() - started
    return Run(
        seconds=seconds,
        engine_ready=engine_ready_at(bench, *stacks) - wall,
        converged=all_converged(bench, *stacks),
    )


def redeploy(bench: Bench, how: Callable[[Bench, str], Run]) -> Run:
    """The same deploy of dev once more, right after: what it costs and what it touches."""
    before = versions(bench, CORE, "dev")
    run = how(bench, "dev")
    run.updates = changed(before, versions(bench, CORE, "dev"))
    return run


# --- the measures


def measure_deploys(bench: Bench, repeat: int) -> None:
    log("first deploy of dev on the empty swarm (secrets, networks, data dirs, initdb)")
    first = ours(bench, "dev")
    bench.figures["first_deploy_dev"] = first.seconds
    log(f"  {first.seconds:.1f} s")
    bench.rendered = {stack: render(bench, stack) for stack in (CORE, "dev")}
    stop_stacks(bench, "dev", CORE)

    def core_with(how: str, deploy_stack: Callable[[Bench, str], Run]) -> Callable[[], None]:
        def step() -> None:
            bench.runs[f"core {how}"].append(deploy_stack(bench, CORE))
            stop_stacks(bench, CORE)

        return step

    def dev_with(how: str, deploy_stack: Callable[[Bench, str], Run]) -> Callable[[], None]:
        def step() -> None:
            bench.runs[f"dev {how}"].append(deploy_stack(bench, "dev"))
            if how != "detached":
                bench.runs[f"noop {how}"].append(redeploy(bench, deploy_stack))
            stop_stacks(bench, "dev", CORE)

        return step

    ways = (("ours", ours), ("plain", plain), ("detached", detached))
    for index in range(repeat):
        # Rotate which goes first, so a drift of the machine hits every way alike.
        order = ways[index % len(ways) :] + ways[: index % len(ways)]
        for make in (core_with, dev_with):
            for how, deploy_stack in order:
                watch(bench, f"round {index + 1}, before {make.__name__} {how}")
                make(how, deploy_stack)()
        watch(bench, f"end of round {index + 1}")
        log(
            f"round {index + 1}/{repeat}: "
            + ", ".join(f"{name} {runs[-1].seconds:.1f} s" for name, runs in bench.runs.items())
        )


def subprocess_seconds(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {result.stderr.strip()[-300:]}")
    return seconds


def measure_commands(bench: Bench, runs: int) -> None:
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT)]
    pairs = {
        "status": (([*invoke, "status"], bench.invoke_env), (["docker", "service", "ls"], None)),
        "list": (([*invoke, "--list"], bench.invoke_env), (["docker", "--version"], None)),
        "python": (([sys.executable, "-c", "pass"], bench.invoke_env), None),
        "import": (([sys.executable, "-c", "import invoke"], bench.invoke_env), None),
    }
    for name, (mine, theirs) in pairs.items():
        subprocess_seconds(mine[0], mine[1])  # warm the page cache once, not counted
        for _ in range(runs):
            bench.runs[f"{name} ours"].append(Run(subprocess_seconds(*mine), 0.0))
            if theirs:
                command, env = theirs
                seconds = subprocess_seconds(command, env or bench.docker_env)
                bench.runs[f"{name} plain"].append(Run(seconds, 0.0))

    # In-process: how long connecting and building the status table take, in how many calls.
    connects, tables, calls = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        client = engine.connect(bench.settings.docker_host)
        connects.append(time.perf_counter() - started)
        with engine.count_api_calls(client) as counted:
            started = time.perf_counter()
            report.status_table(client)
            tables.append(time.perf_counter() - started)
        calls.append(counted.total)
        client.close()
    bench.figures["status_connect"] = median(connects)
    bench.figures["status_table"] = median(tables)
    bench.figures["status_api_calls"] = int(median(calls))
    bench.figures["services_deployed"] = len(bench.client.services.list())

    result = subprocess.run(
        [sys.executable, "-X", "importtime", *invoke[1:], "--list"],
        env=bench.invoke_env,
        capture_output=True,
        text=True,
        check=False,
    )
    top = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name[1:].startswith(" "):  # top level: imported by nothing measured
            top.append((int(cumulative) / 1e6, name.strip()))
    bench.figures["imports"] = sorted(top, reverse=True)[:10]
    bench.figures["imports_total"] = sum(seconds for seconds, _ in top)


# --- the report


def table(bench: Bench) -> list[tuple[str, str, str, str, str, str]]:
    def fig(name: str) -> float:
        return median([run.seconds for run in bench.runs[name]])

    def ratio(mine: float, theirs: float) -> str:
        return f"{mine / theirs:.2f}" if theirs else "-"

    rows = []
    for label, key, way in (
        ("deploy core, vs --detach=false", "core", "plain"),
        ("deploy core, vs detached + poll", "core", "detached"),
        ("deploy dev (with core), vs --detach=false", "dev", "plain"),
        ("deploy dev (with core), vs detached + poll", "dev", "detached"),
    ):
        mine, theirs = fig(f"{key} ours"), fig(f"{key} {way}")
        rows.append(
            (
                label,
                f"{mine:.1f} s",
                f"{theirs:.1f} s",
                ratio(mine, theirs),
                f"ratio <= {GOAL_DEPLOY_RATIO}",
                "yes" if mine / theirs <= GOAL_DEPLOY_RATIO else "NO",
            )
        )
    mine, theirs = fig("noop ours"), fig("noop plain")
    rows.append(
        (
            "no-op redeploy of dev",
            f"{mine:.2f} s",
            f"{theirs:.1f} s",
            ratio(mine, theirs),
            f"<= {GOAL_NOOP_SECONDS:.0f} s",
            "yes" if mine <= GOAL_NOOP_SECONDS else "NO",
        )
    )
    updates = max(run.updates or 0 for run in bench.runs["noop ours"])
    plain_updates = max(run.updates or 0 for run in bench.runs["noop plain"])
    rows.append(
        (
            "services updated by the no-op",
            str(updates),
            str(plain_updates),
            "-",
            "0",
            "yes" if updates == 0 else "NO",
        )
    )
    for label, key, goal in (
        ("`invoke status` vs `docker service ls`", "status", GOAL_STATUS_SECONDS),
        ("`invoke --list` vs `docker --version`", "list", GOAL_LIST_SECONDS),
    ):
        mine, theirs = fig(f"{key} ours"), fig(f"{key} plain")
        rows.append(
            (
                label,
                f"{mine:.2f} s",
                f"{theirs:.2f} s",
                ratio(mine, theirs),
                f"<= {goal} s",
                "yes" if mine <= goal else "NO",
            )
        )
    return rows


def print_report(bench: Bench, machine: dict[str, str]) -> None:
    def fig(name: str, attr: str = "seconds") -> float:
        return median([getattr(run, attr) for run in bench.runs[name]])

    print()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    header = ("measure", "ours", "plain docker", "ratio", "goal", "met?")
    rows = table(bench)
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    print()
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")

    if bench.disturbed:
        print()
        print("WARNING: other test runs shared the machine during the measures:")
        print("\n".join(f"  {line}" for line in bench.disturbed))
    print()
    print("every run (seconds; the engine had the last task running after the 2nd figure):")
    for name, runs in bench.runs.items():
        figures = ", ".join(
            f"{run.seconds:.2f}" + (f" ({run.engine_ready:.1f})" if run.engine_ready > 0 else "")
            for run in runs
        )
        extra = ""
        if any(run.updates is not None for run in runs):
            extra = f"  updates {[run.updates for run in runs]}"
        if not all(run.converged for run in runs):
            extra += "  NOT CONVERGED when docker returned"
        print(f"  {name:<12} {figures}{extra}")
    print(f"  first deploy of dev on the empty swarm: {bench.figures['first_deploy_dev']:.1f} s")

    print()
    print("where apply spends its time (median seconds per phase):")
    for name in ("core ours", "dev ours", "noop ours"):
        spent: dict[str, list[float]] = defaultdict(list)
        for run in bench.runs[name]:
            for phase, seconds in run.phases.items():
                spent[phase].append(seconds)
        ready = fig(name, "engine_ready")
        after = f", engine had every task running after {ready:.1f}" if ready > 0 else ""
        print(f"  {name} (total {fig(name):.2f}{after})")
        for phase, values in spent.items():
            print(f"    {phase:<44} {median(values):6.2f}")
    for name in ("core plain", "core detached", "dev plain", "dev detached"):
        ready = fig(name, "engine_ready")
        print(f"  {name}: total {fig(name):.1f}, engine had every task running after {ready:.1f}")

    print()
    print("API calls per operation (median; in brackets: during the convergence waits):")
    for name in ("core ours", "dev ours", "noop ours"):
        runs = [run for run in bench.runs[name] if run.api_calls is not None]
        if not runs:
            continue
        changed_services = int(median([run.services_changed or 0 for run in runs]))
        wait_calls = int(median([run.wait_api_calls or 0 for run in runs]))
        per = (
            f", {wait_calls / changed_services:.1f} per changed service" if changed_services else ""
        )
        print(
            f"  {name:<10} {int(median([run.api_calls for run in runs])):4d} "
            f"({wait_calls} waiting; {changed_services} services changed{per})"
        )
    if "deploy_all_api_calls" in bench.figures:
        print(
            f"  deploy all {bench.figures['deploy_all_api_calls']:4d} "
            f"({bench.figures['deploy_all_wait_api_calls']} waiting)"
        )
    print(f"  status     {bench.figures['status_api_calls']:4d} (the status table, in-process)")
    print()
    print(
        f"status: {bench.figures['services_deployed']} services deployed; in-process "
        f"connect {bench.figures['status_connect']:.2f} s, status table "
        f"{bench.figures['status_table']:.2f} s in {bench.figures['status_api_calls']} API calls"
    )
    print(
        f"start-up: python -c pass {fig('python ours'):.3f} s, python -c 'import invoke' "
        f"{fig('import ours'):.3f} s, invoke --list {fig('list ours'):.3f} s"
    )
    print(
        f"slowest top-level imports of invoke --list (python -X importtime, total "
        f"{bench.figures['imports_total']:.3f} s):"
    )
    for seconds, name in bench.figures["imports"]:
        print(f"  {seconds:6.3f} s  {name}")


def machine_facts(bench: Bench, outer: docker.DockerClient) -> dict[str, str]:
    cli = subprocess.run(
        ["docker", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "memory": f"{memory:.0f} GiB",
        "python": host_platform.python_version(),
        "docker CLI": cli.split(",")[0].removeprefix("Docker version "),
        "outer engine": outer.version()["Version"],
        "dind engine": bench.client.version()["Version"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3, help="deploy rounds (default 3)")
    parser.add_argument("--runs", type=int, default=5, help="command runs (default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep-up", action="store_true", help="leave the dind swarm running")
    args = parser.parse_args(argv)

    try:
        outer = docker.from_env(timeout=300)
        outer.ping()
    except DockerException as exc:
        print(f"bench: no Docker engine reachable ({exc})", file=sys.stderr)
        return 1
    bench = start(outer)
    try:
        measure_deploys(bench, args.repeat)
        log("deploying every stack that has images here, for `invoke status`")
        started = time.perf_counter()
        by_phase: dict[str, int] = {}
        with engine.count_api_calls(bench.client) as calls, phases(calls, by_phase):
            deploy.apply(
                bench.settings,
                "all",
                tunnel=False,
                timeout=DEPLOY_TIMEOUT,
                report=lambda _line: None,
                client=bench.client,
            )
        bench.figures["deploy_all"] = time.perf_counter() - started
        bench.figures["deploy_all_api_calls"] = calls.total
        bench.figures["deploy_all_wait_api_calls"] = by_phase.get(WAIT_PHASE, 0)
        log(f"  {', '.join(DEPLOY_ALL)} in {bench.figures['deploy_all']:.1f} s")
        watch(bench, "before the commands")
        measure_commands(bench, args.runs)
        watch(bench, "after the commands")
        machine = machine_facts(bench, outer)
        print_report(bench, machine)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": machine,
                        "table": table(bench),
                        "runs": {
                            name: [run.__dict__ for run in runs]
                            for name, runs in bench.runs.items()
                        },
                        "figures": bench.figures,
                        "disturbed": bench.disturbed,
                    },
                    indent=2,
                )
            )
    finally:
        if args.keep_up:
            log(f"kept up; DOCKER_HOST={bench.swarm.manager.engine_url}")
        else:
            bench.swarm.remove()
            shutil.rmtree(bench.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
