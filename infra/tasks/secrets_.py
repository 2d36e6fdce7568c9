"""secrets.generate, sync, list, rotate: secrets.yml and the Docker secrets made from it."""

from invoke import task

from infra.tasks.common import HELP, number, operator_errors, settings


@task(help={"dry_run": HELP["dry_run"]})
@operator_errors
def generate(c, dry_run=False):
    """Write secrets/secrets.yml (mode 0600) if it is missing; never rewrite it."""
    from infra import secrets

    config = settings()
    path = config.secrets_file
    if path.exists():
        secrets.load(config)  # say so now if the existing file is broken
        print(f"secrets: {path} exists; left unchanged")
        return
    if dry_run:
        print(
            f"would write {path} (0600) with {len(secrets.SCHEMA_KEYS)} keys: "
            + ", ".join(secrets.SCHEMA_KEYS)
        )
        return
    secrets.generate(config)
    print(f"secrets: wrote {path} (mode 0600, {len(secrets.SCHEMA_KEYS)} keys)")


@task(help={"dry_run": HELP["dry_run"]})
@operator_errors
def sync(c, dry_run=False):
    """Create the content-hashed Docker secrets from secrets.yml and .env tokens."""
    from infra import deploy, engine, secrets

    config = settings()
    targets = deploy.syncable_targets(config)
    if dry_run:
        from infra.plan import plan_deploy

        values = secrets.with_env_tokens(secrets.load(config), config)
        plan = plan_deploy(targets, config, values, tunnel=bool(config.tunnel_token))
        for stack in plan.stacks:
            for obj in stack.secrets:
                print(f"secret {obj.name}")
        return
    client = engine.connect(config.docker_host)
    engine.require_manager(client)
    created = deploy.sync_secrets(config, client, targets)
    for name in created:
        print(f"secret: created {name}")
    print(f"secrets: {len(created)} created, the rest already present")


@task(name="list", default=True)
@operator_errors
def list_(c):
    """List the platform's Docker secrets: name, stack, key, hash and which services use them."""
    from infra import engine
    from infra.plan import LABEL_HASH, LABEL_KEY, LABEL_STACK

    client = engine.connect(settings().docker_host)
    engine.require_manager(client)
    users: dict[str, list[str]] = {}
    for service in client.services.list():
        spec = service.attrs["Spec"]["TaskTemplate"].get("ContainerSpec", {})
        for ref in spec.get("Secrets") or []:
            users.setdefault(ref["SecretName"], []).append(service.name)
    print(f"{'NAME':<48} {'STACK':<8} {'KEY':<26} {'HASH':<13} USED BY")
    for item in sorted(client.secrets.list(), key=lambda s: s.name):
        labels = item.attrs["Spec"].get("Labels") or {}
        print(
            f"{item.name:<48} {labels.get(LABEL_STACK, '-'):<8} {labels.get(LABEL_KEY, '-'):<26} "
            f"{labels.get(LABEL_HASH, '-'):<13} {', '.join(users.get(item.name, [])) or '-'}"
        )


@task(help={"key": HELP["key"], "dry_run": HELP["dry_run"], "timeout": HELP["timeout"]})
@operator_errors
def rotate(c, key="", dry_run=False, timeout="300"):
    """Give one secret a new value live, without data loss; re-run to finish if interrupted."""
    from infra import rotate as rotation

    seconds = number(timeout, "timeout", "600")
    config = settings()
    if dry_run:
        for line in rotation.plan(config, key):
            print(line)
        return
    rotation.rotate(config, key, timeout=seconds, report=lambda line: print(line, flush=True))
