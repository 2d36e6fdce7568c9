"""history: what every deploy, stop, rotation, restore and rollback did (kept in the swarm)."""

import json

from invoke import task

from infra.catalog import STACKS, check_target
from infra.tasks.common import HELP, operator_errors, settings


@task(
    help={
        "name": HELP["history_name"],
        "json": HELP["history_json"],
        "limit": HELP["history_limit"],
    },
    auto_shortflags=False,
)
@operator_errors
def history(c, name="", json_=False, limit=20):
    """The newest operations: when, who, what, on which stack, the result and every service
    changed with its old and new image and config and secret versions."""
    from infra import engine
    from infra.operations import history as records
    from infra.operations import report

    if name:
        check_target(name, STACKS)
    client = engine.connect(settings().docker_host)
    engine.require_manager(client)
    found = [r for r in records.read(client) if not name or r.touches(name)]
    if int(limit) > 0:
        found = found[-int(limit) :]
    if json_:
        print(json.dumps([r.to_json(with_stacks=False) for r in found], indent=2))
        return
    print("\n".join(report.history_lines(found)) or "history: no records")
