"""stop.core, stop.env, stop.shared, stop.runner, stop.all: remove stacks, keep data."""

from invoke import task

from infra.catalog import CORE, ENVIRONMENTS, RUNNER, SHARED, STOP_ALL, check_target
from infra.tasks.common import HELP, locked, operator_errors, settings

OPTIONS = {
    "cleanup": HELP["cleanup"],
    "dry_run": HELP["dry_run"],
    "lock_wait": HELP["lock_wait"],
    "message": HELP["message"],
}


def _stop(target, cleanup, dry_run, lock_wait="0", message=""):
    from infra import deploy as deployment

    config = settings()
    if dry_run:
        stacks = STOP_ALL if target == "all" else (target,)
        for stack in stacks:
            print(f"would run: docker stack rm {stack}, then wait until its containers are gone")
            if cleanup:
                print(f"would remove {stack}'s secrets and configs that no service uses")
        print(f"data under {config.data_root} is kept")
        return
    command = f"stop {target}" + (" --cleanup" if cleanup else "")
    with locked(config, "stop", target, command, lock_wait, message) as op:
        deployment.stop(config, target, cleanup=cleanup, client=op.client)


@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def core(c, cleanup=False, dry_run=False, lock_wait="0", message=""):
    """Stop the core stack (Traefik, tunnel)."""
    _stop(CORE, cleanup, dry_run, lock_wait, message)


@task(help={"name": HELP["name"], **OPTIONS}, auto_shortflags=False)
@operator_errors
def env(c, name="", cleanup=False, dry_run=False, lock_wait="0", message=""):
    """Stop one environment's stack; its data directories stay."""
    check_target(name, tuple(ENVIRONMENTS))
    _stop(name, cleanup, dry_run, lock_wait, message)


@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def shared(c, cleanup=False, dry_run=False, lock_wait="0", message=""):
    """Stop the shared stack; its data directories stay."""
    _stop(SHARED, cleanup, dry_run, lock_wait, message)


@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def runner(c, cleanup=False, dry_run=False, lock_wait="0", message=""):
    """Stop the GitHub Actions runners."""
    _stop(RUNNER, cleanup, dry_run, lock_wait, message)


@task(name="all", help=OPTIONS, auto_shortflags=False)
@operator_errors
def all_(c, cleanup=False, dry_run=False, lock_wait="0", message=""):
    """Stop every stack, runner included, in reverse dependency order."""
    _stop("all", cleanup, dry_run, lock_wait, message)
