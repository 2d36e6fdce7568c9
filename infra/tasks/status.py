"""status: one table of stacks and services."""

import json

from invoke import task

from infra.tasks.common import HELP, operator_errors, settings


@task(help={"verbose": HELP["verbose"], "json": HELP["json"]})
@operator_errors
def status(c, verbose=False, json_=False):
    """Show every stack's services (replicas, health, update state, image, ports), the
    nodes, the alerts that fire now and the last backup of each environment."""
    from infra import backup, engine, report

    config = settings()
    client = engine.connect(config.docker_host)
    engine.require_manager(client)
    text, rows = report.status_table(client, verbose=verbose)
    alerts, alert_lines = report.alert_summary(client)
    backups, backup_lines = report.backup_summary(backup.last_records(config, backup.TARGETS))
    node_rows, node_lines = report.node_summary(client)
    if json_:
        document = {"stacks": rows, "alerts": alerts, "backups": backups, "nodes": node_rows}
        print(json.dumps(document, indent=2))
        return
    print(text)
    print("\n".join(node_lines))
    print("\n".join(alert_lines))
    print("\n".join(backup_lines))
    if verbose:
        print(f"data ({config.data_root}):")
        print("\n".join(report.disk_usage(config.data_root)))
