"""status: one table of stacks and services."""

import json

from invoke import task

from infra.tasks.common import HELP, operator_errors, settings


@task(help={"verbose": HELP["verbose"], "json": HELP["json"]})
@operator_errors
def status(c, verbose=False, json_=False):
    """Show every stack's services (replicas, health, update state, image, ports), the
    nodes, the alerts that fire now and the last backup and drill of each environment."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from infra import engine, report

    config = settings()
    client = engine.connect(config.docker_host)
    # Alertmanager is asked inside its container (an exec: the engine's slowest answer, some
    # 0.2 s), so it is asked first: meanwhile this thread checks the engine is a manager,
    # loads what the rest needs and reads the swarm (every service once, for the table and
    # the nodes) and the records. If the engine is no manager, the error below is the one
    # said; the thread's answer is never read.
    with ThreadPoolExecutor(max_workers=1) as pool:
        asked = pool.submit(report.alert_summary, client)
        engine.require_manager(client)
        from infra import backup
        from infra.backup import records
        from infra.catalog import ENVIRONMENTS

        services = client.services.list(status=True)
        text, rows = report.status_table(client, verbose=verbose, services=services)
        backups, backup_lines = report.backup_summary(backup.last_records(config, backup.TARGETS))
        node_rows, node_lines = report.node_summary(client, services)
        drills = backup.last_drills(config, tuple(ENVIRONMENTS))
        alerts, alert_lines = asked.result()
    now = time.time()
    drill_lines = ["drills (last run):"]
    drill_lines += [records.drill_status_line(env, record, now) for env, record in drills.items()]
    if json_:
        drill_rows = {env: records.drill_json(record) for env, record in drills.items()}
        document = {
            "stacks": rows, "alerts": alerts, "backups": backups, "drills": drill_rows,
            "nodes": node_rows,
        }  # fmt: skip
        print(json.dumps(document, indent=2))
        return
    print(text)
    print("\n".join(node_lines))
    print("\n".join(alert_lines))
    print("\n".join(backup_lines))
    print("\n".join(drill_lines))
    if verbose:
        print(f"data ({config.data_root}):")
        print("\n".join(report.disk_usage(config.data_root)))
