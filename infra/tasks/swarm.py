"""swarm.*: the nodes the platform runs on: init, status, label, join-token, drain, activate."""

from pathlib import Path

from invoke import task

from infra.tasks.common import HELP, operator_errors, settings

HELP.update(
    {
        "node": "the node's hostname or id, as `invoke swarm.status` lists it",
        "data": "whose data the node holds: a comma-separated list of dev, stg, prod, shared",
        "remove": "take those data labels off the node instead of adding them",
        "role": "worker or manager",
        "token_file": "the join token's file (default secrets/swarm-join-<role>.token)",
        "manager": "a manager's ADDRESS:2377, as `invoke swarm.join-token` printed it",
        "force": "drain even though the node holds data (its stateful services stay down)",
    }
)


def _manager():
    from infra import engine

    client = engine.connect(settings().docker_host)
    engine.require_manager(client)
    return client


@task(help={"dry_run": HELP["dry_run"]})
@operator_errors
def init(c, dry_run=False):
    """Initialise a swarm on this engine if it is in none (idempotent)."""
    from infra import engine

    config = settings()
    if dry_run:
        addr = config.get("SWARM_ADVERTISE_ADDR") or "chosen by Docker"
        print(
            f"would run: docker swarm init (advertise address {addr}) if the engine is in no swarm"
        )
        return
    client = engine.connect(config.docker_host)
    if engine.ensure_swarm(client, config.get("SWARM_ADVERTISE_ADDR")):
        print("swarm: initialised; this node is the manager")
    else:
        print("swarm: already active on this manager")


@task(default=True)
@operator_errors
def status(c):
    """Show the nodes: role, availability, state, labels, the data each holds, the quorum."""
    from infra.swarm import nodes

    rows, quorum = nodes.rows(_manager())
    print(f"{'NODE':<20} {'ROLE':<8} {'MANAGER':<12} {'AVAILABILITY':<13} {'STATE':<8} DATA")
    for row in rows:
        data = ", ".join(row.data) or "-"
        print(
            f"{row.name:<20} {row.role:<8} {row.manager or '-':<12} {row.availability:<13} "
            f"{row.state:<8} {data}"
        )
        if row.stateful:
            print(f"{'':<20} holds: {', '.join(row.stateful)}")
        if row.labels:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(row.labels.items()))
            print(f"{'':<20} labels: {labels}")
    print(f"quorum: {quorum.describe()}")


@task(help={"node": HELP["node"], "data": HELP["data"], "remove": HELP["remove"]})
@operator_errors
def label(c, node="", data="", remove=False):
    """Say which node holds which data: its stateful services are placed there only."""
    from infra.swarm import placement

    targets = placement.parse_targets(data)
    client = _manager()
    found = placement.find_node(client, node)
    placement.assign(client, found, targets, remove=remove)
    verb = "no longer holds" if remove else "holds"
    print(f"swarm: node {placement.hostname(found)} {verb} {', '.join(targets)} data")


@task(name="join-token", help={"role": HELP["role"], "file": HELP["token_file"]})
@operator_errors
def join_token(c, role="worker", file=""):
    """Write the token that admits a new node to a file (mode 0600), and say how to join."""
    from infra.swarm import nodes

    config = settings()
    path = Path(file) if file else config.secrets_file.parent / f"swarm-join-{role}.token"
    address = nodes.write_join_token(_manager(), role, path.absolute())
    print(f"swarm: the {role} join token is in {path.absolute()} (mode 0600; keep it private)")
    print("On the new node, with this repository and that file copied there:")
    print(f"    invoke swarm.join --manager={address} --token-file=PATH")


@task(help={"manager": HELP["manager"], "token_file": HELP["token_file"]})
@operator_errors
def join(c, manager="", token_file=""):
    """Join this node's engine to a swarm, with a token file from `swarm.join-token`."""
    from infra import engine
    from infra.swarm import nodes

    config = settings()
    client = engine.connect(config.docker_host)
    path = Path(token_file or config.secrets_file.parent / "swarm-join-worker.token")
    print(nodes.join(client, manager, path, config.get("SWARM_ADVERTISE_ADDR")))


@task(help={"node": HELP["node"], "force": HELP["force"]})
@operator_errors
def drain(c, node="", force=False):
    """Move a node's tasks to the others (refused while it holds data, unless --force)."""
    from infra.swarm import nodes, placement

    client = _manager()
    for line in nodes.drain(client, placement.find_node(client, node), force=force):
        print(line)


@task(help={"node": HELP["node"]})
@operator_errors
def activate(c, node=""):
    """Let Swarm place tasks on a drained node again."""
    from infra.swarm import nodes, placement

    client = _manager()
    for line in nodes.activate(client, placement.find_node(client, node)):
        print(line)
