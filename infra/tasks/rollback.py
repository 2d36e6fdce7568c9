"""rollback.env, rollback.core, rollback.shared: re-apply a stack as a recorded deploy left it."""

from invoke import task

from infra.catalog import CORE, ENVIRONMENTS, SHARED, check_target
from infra.tasks.common import HELP, locked, operator_errors, settings

OPTIONS = {
    "to": HELP["rollback_to"],
    "with_secrets": HELP["with_secrets"],
    "dry_run": HELP["rollback_dry_run"],
    "lock_wait": HELP["lock_wait"],
    "message": HELP["message"],
    "timeout": HELP["timeout"],
}


def _rollback(stack, command, to, with_secrets, dry_run, lock_wait, message, timeout):
    from infra.operations import diff, rollback

    config = settings()
    if dry_run:
        plan = rollback.plan(config, stack, int(to))
        record = plan.record
        print(f"rollback {stack} to #{record.seq} ({record.command}, {record.who}); dry run:")
        print("\n".join(diff.format_diff({stack: plan.diffs})))
        return
    with locked(config, "rollback", stack, command, lock_wait, message) as op:
        done = rollback.apply(
            config,
            stack,
            to=int(to),
            with_secrets=with_secrets,
            timeout=float(timeout),
            report=lambda line: print(line, flush=True),
            client=op.client,
        )
        op.stacks = {stack: done.rendered}


@task(help={"name": HELP["name"], **OPTIONS}, auto_shortflags=False)
@operator_errors
def env(c, name="", to=0, with_secrets=False, dry_run=False, lock_wait="0", message="",
        timeout=300):  # fmt: skip
    """Re-apply an environment's stack as the previous recorded deploy (or --to=N) left it."""
    check_target(name, tuple(ENVIRONMENTS))
    command = f"rollback.env --name={name}" + (f" --to={to}" if to else "")
    _rollback(name, command, to, with_secrets, dry_run, lock_wait, message, timeout)


@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def core(c, to=0, with_secrets=False, dry_run=False, lock_wait="0", message="", timeout=300):
    """Re-apply the core stack as the previous recorded deploy (or --to=N) left it."""
    command = "rollback.core" + (f" --to={to}" if to else "")
    _rollback(CORE, command, to, with_secrets, dry_run, lock_wait, message, timeout)


@task(help=OPTIONS, auto_shortflags=False)
@operator_errors
def shared(c, to=0, with_secrets=False, dry_run=False, lock_wait="0", message="", timeout=300):
    """Re-apply the shared stack as the previous recorded deploy (or --to=N) left it."""
    command = "rollback.shared" + (f" --to={to}" if to else "")
    _rollback(SHARED, command, to, with_secrets, dry_run, lock_wait, message, timeout)
