"""swarm.init, swarm.status: the single- or few-node swarm the platform runs on."""

from invoke import task

from infra.tasks.common import HELP, operator_errors, settings


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
    """Show the swarm's nodes: role, availability, state."""
    from infra import engine

    client = engine.connect(settings().docker_host)
    engine.require_manager(client)
    print(f"{'NODE':<24} {'ROLE':<8} {'AVAILABILITY':<13} {'STATE':<8} ADDRESS")
    for node in client.nodes.list():
        attrs = node.attrs
        print(
            f"{attrs['Description']['Hostname']:<24} {attrs['Spec']['Role']:<8} "
            f"{attrs['Spec']['Availability']:<13} {attrs['Status']['State']:<8} "
            f"{attrs['Status'].get('Addr', '')}"
        )
