"""deploy.core, deploy.env, deploy.shared, deploy.runner, deploy.all."""

from invoke import task

from infra.catalog import CORE, ENVIRONMENTS, RUNNER, SHARED
from infra.settings import check_target
from infra.tasks.common import HELP, number, operator_errors, settings

OPTIONS = {
    "dry_run": HELP["dry_run"],
    "no_tunnel": HELP["no_tunnel"],
    "no_wait": HELP["no_wait"],
    "timeout": HELP["timeout"],
}


def _deploy(target, dry_run, no_tunnel, no_wait, timeout):
    from infra import deploy as deployment
    from infra import report, secrets
    from infra.plan import deploy_order

    seconds = number(timeout, "timeout", "600")
    config = settings()
    tunnel = not no_tunnel
    if dry_run:
        plan = deployment.prepare(config, target, tunnel)
        for line in plan.warnings:
            print(f"warning: {line}")
        print(f"plan for {target} (dry run: nothing is changed)")
        print(report.format_plan(plan, config))
        return
    deployment.apply(config, target, tunnel=tunnel, wait=not no_wait, timeout=seconds)
    values = secrets.load(config)
    print(report.access_info(config, deploy_order(target), values))


@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def core(c, dry_run=False, no_tunnel=False, no_wait=False, timeout="300"):
    """Deploy the core stack: Traefik and the Cloudflare tunnel."""
    _deploy(CORE, dry_run, no_tunnel, no_wait, timeout)


@task(help={"name": HELP["name"], **OPTIONS}, auto_shortflags=False)
@operator_errors
def env(c, name="", dry_run=False, no_tunnel=False, no_wait=False, timeout="300"):
    """Deploy one environment (dev, stg, prod): core first, then its Postgres and Redis."""
    check_target(name, tuple(ENVIRONMENTS))
    _deploy(name, dry_run, no_tunnel, no_wait, timeout)


@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def shared(c, dry_run=False, no_tunnel=False, no_wait=False, timeout="300"):
    """Deploy the shared stack: object storage, Grafana, Prometheus, Loki, collectors, n8n."""
    _deploy(SHARED, dry_run, no_tunnel, no_wait, timeout)


@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def runner(c, dry_run=False, no_tunnel=False, no_wait=False, timeout="300"):
    """Deploy the self-hosted GitHub Actions runners (GITHUB_OWNER and a credential in .env)."""
    _deploy(RUNNER, dry_run, no_tunnel, no_wait, timeout)


@task(name="all", help=OPTIONS, auto_shortflags=False)
@operator_errors
def all_(c, dry_run=False, no_tunnel=False, no_wait=False, timeout="300"):
    """Deploy core, shared, dev, stg and prod, in that order (the runner only on its own)."""
    _deploy("all", dry_run, no_tunnel, no_wait, timeout)
