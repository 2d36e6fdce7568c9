"""deploy.core, deploy.env, deploy.shared, deploy.runner, deploy.all."""

from invoke import task
from invoke.exceptions import Exit

from infra.catalog import CORE, ENVIRONMENTS, RUNNER, SHARED, check_target
from infra.tasks.common import HELP, locked, number, operator_errors, settings

OPTIONS = {
    "dry_run": HELP["dry_run"],
    "no_tunnel": HELP["no_tunnel"],
    "no_wait": HELP["no_wait"],
    "timeout": HELP["timeout"],
    "diff": HELP["diff"],
    "exit_code": HELP["exit_code"],
    "lock_wait": HELP["lock_wait"],
    "message": HELP["message"],
}


def _deploy(target, dry_run, no_tunnel, no_wait, timeout, command, diff, exit_code, lock_wait,
            message):  # fmt: skip
    from infra import deploy as deployment
    from infra import report, secrets
    from infra.operations import live
    from infra.plan import deploy_order

    seconds = number(timeout, "timeout", "600")
    config = settings()
    tunnel = not no_tunnel
    plan = deployment.prepare(config, target, tunnel)  # bad input: one line, before the lock
    if dry_run or diff or exit_code:
        if dry_run:
            for line in plan.warnings:
                print(f"warning: {line}")
            print(f"plan for {target} (dry run: nothing is changed)")
            print(report.format_plan(plan, config))
        if live.show(config, target, tunnel, required=diff or exit_code) and exit_code:
            raise Exit(code=2)
        return
    deployment.require_docker_cli()
    with locked(config, "deploy", target, command, lock_wait, message) as op:
        result = deployment.apply(
            config, target, tunnel=tunnel, wait=not no_wait, timeout=seconds,
            client=op.client,
        )  # fmt: skip
        op.stacks = result.rendered
    values = secrets.load(config)
    print(report.access_info(config, deploy_order(target), values))


# Each task repeats the options: invoke reads a task's flags from its own signature.
@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def core(c, dry_run=False, no_tunnel=False, no_wait=False, timeout="300", diff=False,
         exit_code=False, lock_wait="0", message=""):  # fmt: skip
    """Deploy the core stack: Traefik and the Cloudflare tunnel."""
    _deploy(CORE, dry_run, no_tunnel, no_wait, timeout, "deploy.core", diff, exit_code,
            lock_wait, message)  # fmt: skip


@task(help={"name": HELP["name"], **OPTIONS}, auto_shortflags=False)
@operator_errors
def env(c, name="", dry_run=False, no_tunnel=False, no_wait=False, timeout="300", diff=False,
        exit_code=False, lock_wait="0", message=""):  # fmt: skip
    """Deploy one environment (dev, stg, prod): core first, then its Postgres and Redis."""
    check_target(name, tuple(ENVIRONMENTS))
    _deploy(name, dry_run, no_tunnel, no_wait, timeout, f"deploy.env --name={name}", diff,
            exit_code, lock_wait, message)  # fmt: skip


@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def shared(c, dry_run=False, no_tunnel=False, no_wait=False, timeout="300", diff=False,
           exit_code=False, lock_wait="0", message=""):  # fmt: skip
    """Deploy the shared stack: object storage, Grafana, Prometheus, Loki, collectors, n8n."""
    _deploy(SHARED, dry_run, no_tunnel, no_wait, timeout, "deploy.shared", diff, exit_code,
            lock_wait, message)  # fmt: skip


@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def runner(c, dry_run=False, no_tunnel=False, no_wait=False, timeout="300", diff=False,
           exit_code=False, lock_wait="0", message=""):  # fmt: skip
    """Deploy the self-hosted GitHub Actions runners (GITHUB_OWNER and a credential in .env)."""
    _deploy(RUNNER, dry_run, no_tunnel, no_wait, timeout, "deploy.runner", diff, exit_code,
            lock_wait, message)  # fmt: skip


@task(name="all", help=OPTIONS, auto_shortflags=False)
@operator_errors
def all_(c, dry_run=False, no_tunnel=False, no_wait=False, timeout="300", diff=False,
         exit_code=False, lock_wait="0", message=""):  # fmt: skip
    """Deploy core, shared, dev, stg and prod, in that order (the runner only on its own)."""
    _deploy("all", dry_run, no_tunnel, no_wait, timeout, "deploy.all", diff, exit_code,
            lock_wait, message)  # fmt: skip
