"""Rotate one secret of secrets.yml live, without losing data: `invoke secrets.rotate --key=K`.

ROTATABLE (keys.py) is the one table of keys that can be rotated and how a new value takes
effect; READ_ONLY says why the others cannot. pending.py keeps the record of step 1, live.py
talks to the running services (steps 2 and 5); this module runs the steps. A rotation runs
six steps, each idempotent, so an interrupted rotation is finished by running the same
command again:

1. pending   a new value is made and kept in `secrets.rotating.yml` (0600, next to
             secrets.yml) BEFORE anything live changes, with the value it replaces. A re-run
             finds the record and continues with the same new value.
2. live      the running service is told the new value, where it keeps its own copy:
             Postgres (ALTER ROLE) and Grafana (its admin password lives in its database).
             Idempotent: Postgres is asked first whether the new password already works.
3. store     secrets.yml gets the new value (`secrets.rewrite_keys`: temporary file, fsync,
             rename, 0600); a value already there is left alone.
4. redeploy  every deployed stack whose Docker secrets change is deployed again through
             `deploy.apply`: new content-hashed secret versions, only the services that
             mount them roll (a database password also rolls that environment's exporter,
             which reads the same secrets), old versions pruned after convergence.
5. check     the service accepts the new value and refuses the old one.
6. done      the pending record is removed.

Values are never printed: every step reports what it did, never with what.

Postgres. The server checks passwords against pg_authid; POSTGRES_PASSWORD_FILE is read only
by initdb on an empty data directory. So the live ALTER ROLE is the change, and the roll that
follows only puts the new value where the service's secret file is. The statement goes to
psql's standard input through the exec API's socket and carries a SCRAM-SHA-256 verifier
computed here, not the password: even a server that logs every statement never sees it.
psql authenticates with the old password (or, on a re-run, the new one), read from the same
stdin by the shell before psql starts. The health check (pg_isready) needs no password, so
the window between ALTER ROLE and the roll costs only the clients still using the old one.

Redis: no live `CONFIG SET requirepass`. Redis takes requirepass from the redis_auth_conf
secret at start, so the service has to roll onto a new secret version anyway, or the next
restart would bring the old password back. A live change first would only open a window in
which the old task's health check (it reads the old /run/secrets/redis_password) fails
against the new password, and Swarm could kill the task in the middle of the rotation. The
stop-first roll is therefore the whole change: Swarm stops the old task (SIGTERM: Redis
writes and fsyncs its append-only file, then exits), the new task starts with the new
requirepass and replays the AOF. Clients see one restart, as they would after a live change
plus the roll it needs, and no acknowledged write is lost. requirepass is the password of
Redis's `default` ACL user; the platform defines no other ACL user and no ACL file, so the
restarted server knows exactly one password, the new one.

Grafana: `grafana cli admin reset-admin-password --password-from-stdin` in the running
container (GF_SECURITY_ADMIN_PASSWORD__FILE counts only when Grafana creates its database),
then the roll. When Grafana runs on another node, the cli in a companion would write the
companion's own database, so the admin changes its password through Grafana's HTTP API
instead (PUT /api/user/password with the old and the new one, curl's configuration on
stdin), from a companion with Grafana's image that reaches tasks.shared_grafana.
SeaweedFS's S3 keys and the Traefik dashboard password live nowhere but in their secret
files, read at start: the roll is the change.

n8n: the roll is the change too. Its owner is managed from its environment
(N8N_INSTANCE_OWNER_MANAGED_BY_ENV): at every start n8n writes the bcrypt hash of its
n8n_owner_password_hash secret over the owner's password, so the new task started on the new
secret version knows only the new password. The check logs in through n8n's REST login
inside the container, the credentials on node's stdin.
"""

from __future__ import annotations

import docker

from infra import deploy, engine, secrets
from infra.catalog import CORE
from infra.rotate.keys import (
    LIVE_GRAFANA,
    LIVE_POSTGRES,
    READ_ONLY,
    RESTART,
    RESTART_N8N,
    ROTATABLE,
    Report,
    Rotatable,
    affected_secrets,
    check_key,
    rolling_services,
    stacks_in_order,
)
from infra.rotate.live import Services, apply_live, check, scram_verifier
from infra.rotate.pending import (
    Pending,
    begin,
    clear_pending,
    make_new_values,
    pending_for,
    pending_path,
    read_pending,
    write_pending,
)
from infra.settings import Settings

__all__ = [
    "LIVE_GRAFANA", "LIVE_POSTGRES", "READ_ONLY", "RESTART", "RESTART_N8N", "ROTATABLE",
    "Pending", "Rotatable", "Services",
    "affected_secrets", "apply_live", "begin", "check", "check_key", "clear_pending",
    "make_new_values", "pending_for", "pending_path", "plan", "read_pending", "redeploy",
    "rolling_services", "rotate", "scram_verifier", "stacks_in_order", "store", "write_pending",
]  # fmt: skip


def store(settings: Settings, pending: Pending, report: Report = print) -> None:
    """Step 3: secrets.yml gets the new values."""
    changed = secrets.rewrite_keys(settings, pending.new)
    path = settings.secrets_file
    if changed:
        report(f"3/6 store: {', '.join(changed)} rewritten in {path} (atomic, 0600)")
    else:
        report(f"3/6 store: {path} already holds the new value")


def redeploy(
    settings: Settings,
    client: docker.DockerClient,
    pending: Pending,
    timeout: float = 300,
    report: Report = print,
) -> list[str]:
    """Step 4: deploy again every deployed stack whose Docker secrets change; only the
    services mounting them roll, and old secret versions are pruned once it converged."""
    rotatable = ROTATABLE[pending.key]
    affected = affected_secrets(secrets.load(settings), tuple(pending.new))
    deployed = engine.deployed_stacks(client)
    tunnel = any(s.name == "core_cloudflared" for s in engine.stack_services(client, CORE))
    done = []
    for stack in stacks_in_order(rotatable, affected):
        if stack not in deployed:
            report(f"4/6 redeploy: {stack} is not deployed; its next deploy uses the new value")
            continue
        report(f"4/6 redeploy: {stack} (new versions of {', '.join(affected[stack])})")
        deploy.apply(settings, stack, tunnel=tunnel, timeout=timeout, report=report, client=client)
        done.append(stack)
    return done


def rotate(
    settings: Settings,
    key: str,
    timeout: float = 300,
    report: Report = print,
    client: docker.DockerClient | None = None,
) -> None:
    """All six steps; a re-run after an interruption continues where the record says."""
    check_key(key)
    secrets.load(settings)  # a broken secrets.yml is reported before anything changes
    client = client or engine.connect(settings.docker_host)
    engine.require_manager(client)
    services = Services(client)
    rotatable = ROTATABLE[key]
    # Its service must answer before the record is made (a restart needs nothing of it), on
    # any node: one elsewhere is reached through a companion.
    if rotatable.live in (LIVE_POSTGRES, LIVE_GRAFANA):
        engine.running_task(client, rotatable.service)
    try:
        pending = begin(settings, key, report)
        apply_live(settings, services, pending, report)
        # A companion mounts the secret versions the redeploy replaces: gone first, so they
        # can be pruned; the check makes a new one.
        services.close()
        store(settings, pending, report)
        redeploy(settings, client, pending, timeout, report)
        check(settings, services, pending, report)
    finally:
        services.close()
    clear_pending(settings)
    report(f"6/6 done: {key} rotated; the pending record is removed")


def plan(settings: Settings, key: str) -> list[str]:
    """What `rotate` would do, for --dry-run: no daemon, nothing changed, no value shown."""
    rotatable = check_key(key)
    values = secrets.with_env_tokens(secrets.load(settings), settings)
    found = pending_for(settings, key)
    path = pending_path(settings)
    affected = affected_secrets(values, (key, *rotatable.derived))
    stacks = stacks_in_order(rotatable, affected)
    first = (
        f"resume the interrupted rotation recorded in {path}, with its new value"
        if found
        else f"make a new value; keep it in {path} (0600) until the rotation is done"
    )
    made_again = f" and {', '.join(rotatable.derived)}" if rotatable.derived else ""
    return [
        f"rotate {key}{made_again}:",
        f"  1. pending: {first}",
        f"  2. live: {rotatable.effect}",
        f"  3. store: rewrite {settings.secrets_file} with the new value (atomic, 0600)",
        "  4. redeploy, for each deployed stack of: "
        + "; ".join(f"{stack} (new {', '.join(affected[stack])})" for stack in stacks)
        + f"; rolls {', '.join(rolling_services(settings, affected)) or 'nothing'};"
        " old versions pruned",
        f"  5. check: {rotatable.service} accepts the new value and refuses the old one"
        if rotatable.checked
        else f"  5. check: {rotatable.service} converged with the new secret version",
        f"  6. done: remove {path}",
    ]
