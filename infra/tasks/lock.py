"""lock.status, lock.release: the deploy lock every mutating task takes (kept in the swarm)."""

from invoke import task
from invoke.exceptions import Exit

from infra.tasks.common import HELP, operator_errors, settings


def _client():
    from infra import engine

    client = engine.connect(settings().docker_host)
    engine.require_manager(client)
    return client


@task(default=True)
@operator_errors
def status(c):
    """Who holds the deploy lock (user@host or CI job, command, message, since, expiry)."""
    from infra.operations import lock

    holder = lock.read(_client())
    print(f"deploy lock: held by {holder.describe()}" if holder else "deploy lock: free")


@task(help={"yes": HELP["lock_yes"]})
@operator_errors
def release(c, yes=False):
    """Remove the deploy lock, e.g. after its holder was killed (it also expires by itself)."""
    from infra.operations import lock

    client = _client()
    holder = lock.read(client)
    if holder is None:
        print("deploy lock: free; nothing to release")
        return
    if not yes:
        raise Exit(
            f"error: the deploy lock is held by {holder.describe()}. If that operation is no "
            "longer running, release it: invoke lock.release --yes",
            code=1,
        )
    lock.force_release(client)
    print(f"deploy lock: released (was held by {holder.describe()})")
