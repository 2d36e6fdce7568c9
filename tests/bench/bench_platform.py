"""Benchmarks of the platform against plain docker, on a fresh single-node dind swarm.

Prints figures and asserts nothing. Each measure runs in the same process, on the same
engine, next to its plain docker equivalent, for three platforms: core + dev, all five
stacks (core, shared, dev, stg, prod: every service that has an image here), and a generated
stack of 50 small services (tests/bench/synthetic.py):

1. deploy to converged, from none of the platform's stacks deployed: infra
   (`infra.deploy.apply`; for the generated stack `deploy_stack` then `wait_converged`, what
   apply does with each stack) versus `docker stack deploy --detach=true` of the same
   rendered files, then `docker service ls` every 0.25 s until every service shows n/n (the
   engine's floor). For core + dev, also `docker stack deploy --detach=false` (core, then
   dev) in the first round: the CLI's own wait.
2. no-op redeploy right after: seconds, and how many services' version index moved.
3. `invoke status` (a subprocess, as an operator runs it) versus `docker service ls`, with
   the platform deployed; the status table's API calls in-process.
4. API calls of each operation of ours, and of them those of the convergence waits, per
   service changed (a counting wrapper around the SDK client's HTTP session:
   tests/apicalls.py).
5. `invoke --list` start-up versus `docker --version`.

The swarm, its settings and its images are made as the acceptance suite makes them
(tests/acceptance/conftest.py); the swarm is removed at the end.

Run: nox -s bench, or python -m tests.bench.bench_platform [--repeat N] [--runs N] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host_platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import docker
from docker.errors import DockerException

from infra import converge, report
from infra.catalog import CORE, DEPLOY_ALL
from infra.settings import REPO_ROOT
from tests.apicalls import count_api_calls
from tests.bench import synthetic
from tests.bench.harness import (
    Bench,
    Run,
    cli_wait,
    log,
    median,
    ours,
    plain,
    redeploy,
    render,
    start,
    stop_stacks,
    subprocess_seconds,
    watch,
)


@dataclass(frozen=True)
class Platform:
    key: str  # the prefix of its runs' names
    label: str
    target: str  # what `apply` (or the generated stack's deploy) is given
    stacks: tuple[str, ...]
    goal_deploy: float | None = None  # seconds, from nothing to converged
    goal_noop: float | None = None
    goal_status: float | None = None


PLATFORMS = (
    Platform("coredev", "core + dev", "dev", (CORE, "dev"), goal_deploy=3.0),
    Platform(
        "all",
        "all five stacks",
        "all",
        DEPLOY_ALL,
        goal_deploy=8.0,
        goal_noop=1.0,
        goal_status=0.5,
    ),
    Platform(
        "synthetic",
        f"{synthetic.SERVICES} generated services",
        synthetic.STACK,
        (synthetic.STACK,),
        goal_status=1.0,
    ),
)
GOAL_LIST_SECONDS = 0.3


# --- the measures


def measure_status(bench: Bench, platform: Platform, runs: int) -> None:
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "status"]
    subprocess_seconds(invoke, bench.invoke_env)  # warm the page cache once, not counted
    for _ in range(runs):
        bench.runs[f"{platform.key} status ours"].append(
            Run(subprocess_seconds(invoke, bench.invoke_env))
        )
        bench.runs[f"{platform.key} status plain"].append(
            Run(subprocess_seconds(["docker", "service", "ls"], bench.docker_env))
        )
    with count_api_calls(bench.client) as counted:
        started = time.perf_counter()
        report.status_table(bench.client)
        seconds = time.perf_counter() - started
    if platform.key == "all":
        report.alert_summary(bench.client)  # its imports, not counted
        with count_api_calls(bench.client) as asked:
            started = time.perf_counter()
            report.alert_summary(bench.client)
            bench.figures["all alerts"] = {
                "seconds": time.perf_counter() - started,
                "api_calls": asked.total,
            }
    bench.figures[f"{platform.key} status table"] = {
        "seconds": seconds,
        "api_calls": counted.total,
        "services": len(bench.client.services.list()),
        "calls": counted.summary(),
    }


def measure_platform(bench: Bench, platform: Platform, index: int, last: bool, runs: int) -> None:
    def with_ours() -> None:
        bench.runs[f"{platform.key} ours"].append(ours(bench, platform.target, platform.stacks))
        bench.runs[f"{platform.key} noop ours"].append(
            redeploy(bench, lambda: ours(bench, platform.target, platform.stacks), platform.stacks)
        )
        if last:
            measure_status(bench, platform, runs)
        stop_stacks(bench, platform.stacks)

    def with_plain() -> None:
        bench.runs[f"{platform.key} plain"].append(plain(bench, platform.stacks))
        bench.runs[f"{platform.key} noop plain"].append(
            redeploy(bench, lambda: plain(bench, platform.stacks), platform.stacks)
        )
        stop_stacks(bench, platform.stacks)

    def with_cli_wait() -> None:
        bench.runs[f"{platform.key} cli-wait"].append(cli_wait(bench, platform.stacks))
        stop_stacks(bench, platform.stacks)

    ways = [("ours", with_ours), ("plain", with_plain)]
    if platform.key == "coredev" and index == 0:
        ways.append(("cli-wait", with_cli_wait))
    # Rotate which goes first, so a drift of the machine hits every way alike.
    shift = index % len(ways)
    for how, step in ways[shift:] + ways[:shift]:
        watch(bench, f"round {index + 1}, before {platform.key} {how}")
        step()
        # Said as it goes, so a run cut short still shows what it measured.
        # (`done`, not `runs`: the steps above read this function's `runs` when they run.)
        for name, done in bench.runs.items():
            if name.startswith(f"{platform.key} {how}") or name.startswith(
                f"{platform.key} noop {how}"
            ):
                run = done[-1]
                calls = f", {run.api_calls} API calls ({run.wait_api_calls} waiting)"
                log(
                    f"  {name}: {run.seconds:.2f} s"
                    + (f", engine ready {run.engine_ready:.2f} s" if run.engine_ready else "")
                    + (calls if run.api_calls is not None else "")
                    + (f", {run.updates} updated" if run.updates is not None else "")
                    + (f"; last running: {run.slowest}" if run.slowest else "")
                    + (f"; {run.cores_busy:.2f} cores busy" if run.cores_busy is not None else "")
                )
                if run.phases:
                    log("    " + ", ".join(f"{k} {v:.2f}" for k, v in run.phases.items()))


def warm_up(bench: Bench) -> None:
    """The first deploys write secrets.yml, create the secrets, networks and data
    directories and initialise the databases: timed, but apart."""
    log("first deploy of dev on the empty swarm (secrets, networks, data dirs, initdb)")
    first = ours(bench, "dev", (CORE, "dev"))
    bench.figures["first deploy of dev"] = first.seconds
    log(f"  {first.seconds:.1f} s")
    log("first deploy of every stack (shared's data dirs, stg's and prod's initdb)")
    first = ours(bench, "all", DEPLOY_ALL)
    bench.figures["first deploy of the other stacks"] = first.seconds
    log(f"  {first.seconds:.1f} s")
    image = bench.settings.images["REDIS_IMAGE"]
    bench.extra[synthetic.STACK] = synthetic.plan(
        bench.workdir, image, bench.settings.engine_variables()
    )
    bench.rendered = {stack: render(bench, stack) for stack in (*DEPLOY_ALL, synthetic.STACK)}
    stop_stacks(bench, DEPLOY_ALL)


# --- the report


def fig(bench: Bench, name: str, attr: str = "seconds") -> float:
    return median([getattr(run, attr) for run in bench.runs.get(name, [])])


def verdict(value: float, goal: float | None) -> tuple[str, str]:
    if goal is None:
        return "-", "-"
    return f"<= {goal:g} s", "yes" if value <= goal else "NO"


def ratio(mine: float, theirs: float) -> str:
    return f"{mine / theirs:.2f}" if theirs else "-"


def table(bench: Bench) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for p in PLATFORMS:
        mine, theirs = fig(bench, f"{p.key} ours"), fig(bench, f"{p.key} plain")
        rows.append(
            (
                f"deploy {p.label} to converged, vs detached deploy + poll (engine floor)",
                f"{mine:.2f} s",
                f"{theirs:.2f} s",
                ratio(mine, theirs),
                *verdict(mine, p.goal_deploy),
            )
        )
        if bench.runs.get(f"{p.key} cli-wait"):
            cli = fig(bench, f"{p.key} cli-wait")
            rows.append(
                (
                    f"deploy {p.label} to converged, vs `docker stack deploy --detach=false`",
                    f"{mine:.2f} s",
                    f"{cli:.1f} s",
                    ratio(mine, cli),
                    "-",
                    "-",
                )
            )
        mine, theirs = fig(bench, f"{p.key} noop ours"), fig(bench, f"{p.key} noop plain")
        rows.append(
            (
                f"no-op redeploy of {p.label}",
                f"{mine:.2f} s",
                f"{theirs:.2f} s",
                ratio(mine, theirs),
                *verdict(mine, p.goal_noop),
            )
        )
        updates = max((run.updates or 0) for run in bench.runs[f"{p.key} noop ours"])
        plain_updates = max((run.updates or 0) for run in bench.runs[f"{p.key} noop plain"])
        rows.append(
            (
                "services updated by that no-op",
                str(updates),
                str(plain_updates),
                "-",
                "0",
                "yes" if updates == 0 else "NO",
            )
        )
        mine, theirs = fig(bench, f"{p.key} status ours"), fig(bench, f"{p.key} status plain")
        rows.append(
            (
                f"`invoke status` vs `docker service ls`, {p.label} deployed",
                f"{mine:.2f} s",
                f"{theirs:.2f} s",
                ratio(mine, theirs),
                *verdict(mine, p.goal_status),
            )
        )
    mine, theirs = fig(bench, "list ours"), fig(bench, "list plain")
    rows.append(
        (
            "`invoke --list` vs `docker --version`",
            f"{mine:.2f} s",
            f"{theirs:.2f} s",
            ratio(mine, theirs),
            *verdict(mine, GOAL_LIST_SECONDS),
        )
    )
    return rows


def wait_budget(changed: int, stacks: int) -> int:
    """What a deploy's waits may cost: WAIT_CALLS_PER_CHANGED_SERVICE per changed service
    plus WAIT_CONSTANT_CALLS for each stack waited on."""
    return converge.WAIT_CALLS_PER_CHANGED_SERVICE * changed + converge.WAIT_CONSTANT_CALLS * stacks


def api_table(bench: Bench) -> list[tuple[str, ...]]:
    rows = []
    for p in PLATFORMS:
        for kind, name in (("deploy", f"{p.key} ours"), ("no-op redeploy", f"{p.key} noop ours")):
            runs = bench.runs.get(name, [])
            if not runs:
                continue
            changed = int(median([run.services_changed or 0 for run in runs]))
            waiting = int(median([run.wait_api_calls or 0 for run in runs]))
            total = int(median([run.api_calls or 0 for run in runs]))
            budget = wait_budget(changed, len(p.stacks))
            rows.append(
                (
                    f"{kind} of {p.label}",
                    str(total),
                    str(waiting),
                    str(changed),
                    f"{waiting / changed:.1f}" if changed else "-",
                    f"{budget}",
                    "yes" if waiting <= budget else "NO",
                )
            )
        status = bench.figures.get(f"{p.key} status table")
        if status:
            rows.append(
                (
                    f"status table, {p.label} ({status['services']} services)",
                    str(status["api_calls"]),
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                )
            )
    return rows


def print_table(header: Sequence[str], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (tuple(header), tuple("-" * w for w in widths), *rows):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def print_report(bench: Bench, machine: dict[str, str]) -> None:
    print()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print()
    print_table(("measure", "ours", "plain docker", "ratio", "goal", "met?"), table(bench))
    print()
    print(
        "API calls of ours (median; waits: during the convergence waits; budget: "
        f"{converge.WAIT_CALLS_PER_CHANGED_SERVICE} per changed service + "
        f"{converge.WAIT_CONSTANT_CALLS} per stack waited on):"
    )
    print()
    print_table(
        ("operation", "API calls", "in waits", "changed", "per changed", "budget", "met?"),
        api_table(bench),
    )
    if bench.disturbed:
        print()
        print("WARNING: other test runs shared the machine during the measures:")
        print("\n".join(f"  {line}" for line in bench.disturbed))
    print()
    print("every run (seconds; in brackets: when the engine had the last task running):")
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
        print(f"  {name:<22} {figures}{extra}")
        if runs and runs[-1].slowest:
            print(f"  {'':<22} last running (s from the start): {runs[-1].slowest}")
        busy = [run.cores_busy for run in runs if run.cores_busy is not None and run.seconds > 1]
        if busy:
            print(
                f"  {'':<22} cores busy meanwhile, of {os.cpu_count()}: "
                + ", ".join(f"{cores:.2f}" for cores in busy)
            )
    for name in ("first deploy of dev", "first deploy of the other stacks"):
        print(f"  {name}: {bench.figures[name]:.1f} s")
    print()
    print("where ours spends its time (median seconds per phase):")
    for p in PLATFORMS:
        for name in (f"{p.key} ours", f"{p.key} noop ours"):
            spent: dict[str, list[float]] = defaultdict(list)
            for run in bench.runs.get(name, []):
                for phase, seconds in run.phases.items():
                    spent[phase].append(seconds)
            ready = fig(bench, name, "engine_ready")
            after = f", engine had every task running after {ready:.2f}" if ready > 0 else ""
            print(f"  {name} (total {fig(bench, name):.2f}{after})")
            for phase, values in spent.items():
                print(f"    {phase:<44} {median(values):6.2f}")
    print()
    print("API calls by endpoint (last run of each):")
    for name, runs in bench.runs.items():
        if runs and runs[-1].api_summary:
            print(f"  {name:<22} {runs[-1].api_summary}")
    for p in PLATFORMS:
        status = bench.figures.get(f"{p.key} status table")
        if status:
            print(
                f"  {p.key} status table   {status['seconds']:.3f} s in-process: {status['calls']}"
            )
    print()
    print(
        f"start-up: python -c pass {fig(bench, 'python ours'):.3f} s, python -c 'import invoke' "
        f"{fig(bench, 'import ours'):.3f} s, a bare tasks.py's one empty task "
        f"{fig(bench, 'bare invoke ours'):.3f} s, python -c 'import invoke, docker' "
        f"{fig(bench, 'import sdk ours'):.3f} s, invoke --list {fig(bench, 'list ours'):.3f} s"
    )
    asked = bench.figures.get("all alerts")
    if asked:
        print(
            f"Alertmanager asked in its container (what `invoke status` waits on, all five "
            f"deployed): {asked['seconds']:.3f} s in-process, {asked['api_calls']} API calls"
        )


# invoke's own floor: a tasks.py of one task that does nothing.
BARE_TASKS = "from invoke import task\n\n\n@task\ndef nothing(c):\n    pass\n"


def measure_start_up(bench: Bench, runs: int) -> None:
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "--list"]
    bare = bench.workdir / "bare"
    bare.mkdir(exist_ok=True)
    (bare / "tasks.py").write_text(BARE_TASKS)
    pairs = {
        "list": (invoke, ["docker", "--version"]),
        "python": ([sys.executable, "-c", "pass"], None),
        "import": ([sys.executable, "-c", "import invoke"], None),
        # What `invoke status` cannot do without: invoke itself, then the Docker SDK.
        "bare invoke": ([*invoke[:4], str(bare), "nothing"], None),
        "import sdk": ([sys.executable, "-c", "import invoke, docker"], None),
    }
    for name, (mine, theirs) in pairs.items():
        subprocess_seconds(mine, bench.invoke_env)  # warm the page cache once, not counted
        for _ in range(runs):
            bench.runs[f"{name} ours"].append(Run(subprocess_seconds(mine, bench.invoke_env)))
            if theirs:
                bench.runs[f"{name} plain"].append(
                    Run(subprocess_seconds(theirs, bench.docker_env))
                )


def machine_facts(bench: Bench, outer: docker.DockerClient) -> dict[str, str]:
    cli = subprocess.run(
        ["docker", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "unknown",
        "cores": str(os.cpu_count()),
        "memory": f"{memory:.0f} GiB",
        "python": host_platform.python_version(),
        "docker CLI": cli.split(",")[0].removeprefix("Docker version "),
        "outer engine": outer.version()["Version"],
        "dind engine": bench.client.version()["Version"],
        "dind API": bench.client.version()["ApiVersion"],
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
        warm_up(bench)
        for index in range(args.repeat):
            last = index == args.repeat - 1
            for platform in PLATFORMS:
                measure_platform(bench, platform, index, last, args.runs)
            log(
                f"round {index + 1}/{args.repeat}: "
                + ", ".join(
                    f"{p.label} {bench.runs[f'{p.key} ours'][-1].seconds:.2f} s" for p in PLATFORMS
                )
            )
        measure_start_up(bench, args.runs)
        watch(bench, "at the end")
        machine = machine_facts(bench, outer)
        print_report(bench, machine)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": machine,
                        "table": table(bench),
                        "api_calls": api_table(bench),
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
