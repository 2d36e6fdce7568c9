"""backup.env, backup.shared: verified backups under BACKUP_ROOT."""

from invoke import task

from infra.catalog import ENVIRONMENTS
from infra.settings import check_target
from infra.tasks.common import HELP, operator_errors, settings


@task(help={"name": HELP["name"]}, auto_shortflags=False)
@operator_errors
def env(c, name=""):
    """Back up one environment's Postgres (pg_dump) and Redis (RDB), verified, to BACKUP_ROOT."""
    from infra import backup

    check_target(name, tuple(ENVIRONMENTS))
    result = backup.backup_env(settings(), name)
    print(f"backup of {name} written and verified: {backup.describe(result)}")


@task(auto_shortflags=False)
@operator_errors
def shared(c):
    """Back up every object store bucket and Grafana's database, verified, to BACKUP_ROOT."""
    from infra import backup

    result = backup.backup_shared(settings())
    print(f"backup of shared written and verified: {backup.describe(result)}")
