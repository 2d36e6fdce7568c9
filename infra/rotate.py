"""Rotate one secret of secrets.yml live, without losing data: `invoke secrets.rotate --key=K`.

ROTATABLE is the one table of keys that can be rotated and how a new value takes effect;
READ_ONLY says why the others cannot. A rotation runs six steps, each idempotent, so an
interrupted rotation is finished by running the same command again:

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
then the roll. SeaweedFS's S3 keys and the Traefik dashboard password live nowhere but in
their secret files, read at start: the roll is the change.

n8n: the roll is the change too. Its owner is managed from its environment
(N8N_INSTANCE_OWNER_MANAGED_BY_ENV): at every start n8n writes the bcrypt hash of its
n8n_owner_password_hash secret over the owner's password, so the new task started on the new
secret version knows only the new password. The check logs in through n8n's REST login
inside the container, the credentials on node's stdin.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import docker
import yaml

from infra import deploy, engine, secrets
from infra.catalog import CORE, DEPLOY_ALL, ENVIRONMENTS, SHARED
from infra.errors import EngineError, SecretsError, SettingsError
from infra.plan import stack_files
from infra.settings import Settings
from infra.swarm import companion

Report = Callable[[str], None]

LIVE_POSTGRES = "postgres"
LIVE_GRAFANA = "grafana"
RESTART = "restart"  # the roll onto the new secret version is the whole change
RESTART_N8N = "restart n8n"  # as RESTART; checked by logging in to n8n


@dataclass(frozen=True)
class Rotatable:
    """A key of secrets.yml that can be rotated, and how its new value takes effect."""

    key: str
    stack: str  # the stack whose service holds the value live
    service: str  # that service: told the new value (unless RESTART), then checked
    live: str  # LIVE_POSTGRES, LIVE_GRAFANA, RESTART or RESTART_N8N
    effect: str  # one line for the plan
    checked: bool = True  # step 5 can log in with the new value and fail with the old one
    derived: tuple[str, ...] = ()  # keys made again from the new value


def _table() -> tuple[dict[str, Rotatable], dict[str, str]]:
    rotatable: dict[str, Rotatable] = {}
    read_only: dict[str, str] = {}
    for env in ENVIRONMENTS:
        rotatable[f"{env}_postgres_password"] = Rotatable(
            f"{env}_postgres_password",
            env,
            f"{env}_postgres",
            LIVE_POSTGRES,
            f"ALTER ROLE in the running {env}_postgres (a SCRAM verifier on psql's stdin)",
        )
        rotatable[f"{env}_redis_password"] = Rotatable(
            f"{env}_redis_password",
            env,
            f"{env}_redis",
            RESTART,
            f"{env}_redis restarts stop-first with the new requirepass; its AOF keeps the data",
        )
        reason = "renaming it is a migration of the data, not a rotation"
        read_only[f"{env}_postgres_user"] = f"the role's name, not a secret; {reason}"
        read_only[f"{env}_postgres_db"] = f"the database's name, not a secret; {reason}"
    rotatable["grafana_admin_password"] = Rotatable(
        "grafana_admin_password",
        SHARED,
        "shared_grafana",
        LIVE_GRAFANA,
        "grafana cli admin reset-admin-password --password-from-stdin in shared_grafana",
    )
    for key in ("s3_access_key", "s3_secret_key"):
        rotatable[key] = Rotatable(
            key,
            SHARED,
            "shared_seaweedfs",
            RESTART,
            "shared_seaweedfs restarts with the new S3 identity; S3 clients need the new keys",
            checked=False,
        )
    rotatable["traefik_dashboard_password"] = Rotatable(
        "traefik_dashboard_password",
        CORE,
        "core_traefik",
        RESTART,
        "the htpasswd line is made again; core_traefik restarts with it",
        checked=False,
        derived=("traefik_dashboard_htpasswd",),
    )
    rotatable["n8n_password"] = Rotatable(
        "n8n_password",
        SHARED,
        "shared_n8n",
        RESTART_N8N,
        "shared_n8n restarts with the new owner password hash; n8n applies it at start",
    )
    read_only.update(
        {
            "grafana_admin_user": "a user name, not a secret",
            "traefik_dashboard_user": "a user name, not a secret",
            "n8n_user": "a user name, not a secret",
            "traefik_dashboard_htpasswd": "made from traefik_dashboard_password: rotate that",
            "n8n_encryption_key": (
                "n8n encrypts its stored credentials with it; a new key would make them unreadable"
            ),
        }
    )
    return rotatable, read_only


ROTATABLE, READ_ONLY = _table()


def check_key(key: str) -> Rotatable:
    """The table entry of `key`; one line naming the rotatable keys if there is none."""
    if key in ROTATABLE:
        return ROTATABLE[key]
    if key in READ_ONLY:
        raise SettingsError(f"{key} cannot be rotated: {READ_ONLY[key]}.")
    raise SettingsError(
        f"unknown secret {key!r}. Rotatable: {', '.join(ROTATABLE)}."
        if key
        else f"no key given. Rotatable: {', '.join(ROTATABLE)}."
    )


# --- The pending record -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    """A rotation under way: the new values (the key and what is derived from it) and the
    values they replace, kept 0600 until the rotation is done."""

    key: str
    new: Mapping[str, str] = field(repr=False)
    old: Mapping[str, str] = field(repr=False)


def pending_path(settings: Settings) -> Path:
    path = settings.secrets_file
    return path.with_name(f"{path.stem}.rotating{path.suffix or '.yml'}")


def read_pending(settings: Settings) -> Pending | None:
    path = pending_path(settings)
    if not path.exists():
        return None
    fix = f"Finish the rotation it records by hand, then remove {path}"
    if path.stat().st_mode & 0o077:
        raise SecretsError(f"{path} is readable by other users. Run: chmod 600 {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raise SecretsError(f"{path} cannot be read as a rotation record. {fix}.") from None
    if (
        not isinstance(data, dict)
        or data.get("key") not in ROTATABLE
        or not isinstance(data.get("new"), dict)
        or not isinstance(data.get("old"), dict)
        or data["key"] not in data["new"]
    ):
        raise SecretsError(f"{path} is not a rotation record. {fix}.")
    return Pending(data["key"], dict(data["new"]), dict(data["old"]))


def write_pending(settings: Settings, pending: Pending) -> None:
    text = (
        "# A secret rotation under way (invoke secrets.rotate). Removed when it is done;\n"
        f"# if it is still here, finish it: invoke secrets.rotate --key={pending.key}\n"
        + yaml.safe_dump(
            {"key": pending.key, "new": dict(pending.new), "old": dict(pending.old)},
            sort_keys=False,
            default_flow_style=False,
            width=1000,
        )
    )
    secrets.write_private(pending_path(settings), text)


def clear_pending(settings: Settings) -> bool:
    path = pending_path(settings)
    if not path.exists():
        return False
    path.unlink()
    return True


def make_new_values(settings: Settings, rotatable: Rotatable, current: Mapping[str, str]) -> dict:
    """A fresh value for the key, and the keys derived from it made again from that value."""
    by_name = {key.name: key for key in secrets.SCHEMA}
    values = dict(current)
    new: dict[str, str] = {}
    for name in (rotatable.key, *rotatable.derived):
        value = by_name[name].make(settings, values)
        while name == rotatable.key and value == current[name]:  # never "rotate" to the same
            value = by_name[name].make(settings, values)
        values[name] = new[name] = value
    return new


def pending_for(settings: Settings, key: str) -> Pending | None:
    """The pending record of an interrupted rotation of `key`, if any; an interrupted
    rotation of another key must be finished first."""
    found = read_pending(settings)
    if found is not None and found.key != key:
        raise SecretsError(
            f"a rotation of {found.key} was interrupted ({pending_path(settings)}). Finish it "
            f"first: invoke secrets.rotate --key={found.key}"
        )
    return found


def begin(settings: Settings, key: str, report: Report = print) -> Pending:
    """Step 1: the pending record, made now or found from an interrupted run of this key."""
    rotatable = check_key(key)
    current = secrets.load(settings)
    found = pending_for(settings, key)
    path = pending_path(settings)
    if found is not None:
        report(f"1/6 pending: resuming the interrupted rotation of {key} with its new value")
        return found
    new = make_new_values(settings, rotatable, current)
    pending = Pending(key, new, {name: current[name] for name in new})
    write_pending(settings, pending)
    report(f"1/6 pending: new value made, kept in {path} (0600) until the rotation is done")
    return pending


# --- Which stacks and services a key reaches ----------------------------------------------------


def affected_secrets(values: Mapping[str, str], keys: tuple[str, ...]) -> dict[str, list[str]]:
    """Per stack, the Docker secret keys whose content depends on any of `keys`: each
    renderer is run with the values as they are and with those keys changed."""
    changed = {**values, **{key: values.get(key, "") + "-changed" for key in keys}}
    found: dict[str, list[str]] = {}
    for stack, renderers in secrets.DOCKER_SECRETS.items():
        for name, render in renderers.items():
            try:
                if render(values, stack) != render(changed, stack):
                    found.setdefault(stack, []).append(name)
            except KeyError:  # a value the platform has not got (an .env token): not ours
                continue
    return found


def rolling_services(settings: Settings, affected: Mapping[str, list[str]]) -> list[str]:
    """The services whose definitions mount one of the affected secrets (left-out services,
    DISABLED_SERVICES, excluded): the services the redeploy rolls."""
    services = []
    for stack, keys in affected.items():
        for path in stack_files(stack, True, settings.stacks_dir):
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for name, spec in (document.get("services") or {}).items():
                mounted = {
                    ref["source"] if isinstance(ref, dict) else ref
                    for ref in spec.get("secrets") or []
                }
                full = f"{stack}_{name}"
                if mounted & set(keys) and full not in settings.disabled_services:
                    services.append(full)
    return sorted(set(services))


def stacks_in_order(rotatable: Rotatable, stacks) -> list[str]:
    """The key's own stack first (its service changes first), then the others."""
    order = [rotatable.stack] + [s for s in DEPLOY_ALL if s != rotatable.stack]
    return [stack for stack in order if stack in stacks]


# --- Talking to the running services -------------------------------------------------------------


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for `password` (RFC 5802, RFC 7677): given
    to ALTER ROLE, it sets the password without the password reaching the server."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# The shell reads the password from the first line of stdin into psql's environment; the rest
# of stdin is the SQL. Over TCP, as the health check: the server listens there once it is ready
# ($3: 127.0.0.1 in its own task, tasks.<service> from a companion).
_PSQL = (
    "IFS= read -r PGPASSWORD && export PGPASSWORD && "
    'exec psql -X -q -At -v ON_ERROR_STOP=1 -h "$3" -p 5432 -U "$1" -d "$2"'
)


@dataclass
class Services:
    """The running services a rotation talks to, through `docker exec` with stdin: in their
    own task's container when it runs on this engine's node, else in a companion here that
    reaches them over the overlay network (swarm/companion.py), one per service, kept until
    close()."""

    client: docker.DockerClient
    _reached: dict = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def reach(self, service: str) -> companion.Reach:
        found = self._reached.get(service)
        if found is not None:
            return found
        container_id, _ = engine.running_task(self.client, service)
        if container_id:
            # Looked up each time: a redeploy replaces the task.
            return companion.Reach(service, self.client.containers.get(container_id))
        found = self._stack.enter_context(companion.reach(self.client, service))
        self._reached[service] = found
        return found

    def close(self) -> None:
        self._reached.clear()
        self._stack.close()

    def _exec(
        self, service: str, command: list[str], stdin: str, reached=None
    ) -> tuple[int, str, str]:
        # Grafana's and n8n's checks read their own files and loopback ports: their task
        # must be on this engine's node (engine.running_container refuses otherwise).
        container = reached.id if reached else engine.running_container(self.client, service)
        return engine.exec_with_stdin(self.client, container, command, stdin.encode())

    def postgres(self, env: str, values: Mapping[str, str], password: str, sql: str):
        user, db = values[f"{env}_postgres_user"], values[f"{env}_postgres_db"]
        reached = self.reach(f"{env}_postgres")
        host = reached.host or "127.0.0.1"
        return self._exec(
            f"{env}_postgres",
            ["sh", "-c", _PSQL, "rotate", user, db, host],
            f"{password}\n{sql}\n",
            reached,
        )

    def postgres_accepts(self, env: str, values: Mapping[str, str], password: str) -> bool:
        code, out, err = self.postgres(env, values, password, "SELECT 1;")
        if code == 0 and out.strip() == "1":
            return True
        if "password authentication failed" in err:
            return False
        raise EngineError(f"{env}_postgres did not answer psql: {_first_line(err, code)}")

    def redis_accepts(self, env: str, password: str) -> bool:
        # redis-cli reads commands from stdin when it is not a terminal (and keeps no history).
        reached = self.reach(f"{env}_redis")
        code, out, err = self._exec(
            f"{env}_redis",
            ["redis-cli", *reached.redis_args()],
            f"AUTH {password}\nPING\n",
            reached,
        )
        if "PONG" in out:
            return True
        if "WRONGPASS" in out + err or "NOAUTH" in out + err:
            return False
        raise EngineError(f"{env}_redis did not answer redis-cli: {_first_line(out + err, code)}")

    def grafana_reset(self, password: str) -> None:
        command = [
            "sh", "-c",
            'exec grafana cli --homepath "${GF_PATHS_HOME:-/usr/share/grafana}" '
            '--config "${GF_PATHS_CONFIG:-/etc/grafana/grafana.ini}" '
            "admin reset-admin-password --password-from-stdin",
        ]  # fmt: skip
        code, out, err = self._exec("shared_grafana", command, f"{password}\n")
        if code != 0:
            raise EngineError(
                f"grafana cli admin reset-admin-password failed: {_first_line(err or out, code)}"
            )

    def grafana_accepts(self, user: str, password: str) -> bool:
        # curl reads its configuration, credentials included, from stdin (-K -).
        config = f'url = "http://127.0.0.1:3000/api/user"\nuser = "{user}:{password}"\n'
        command = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-K", "-"]
        code, out, err = self._exec("shared_grafana", command, config)
        if out.strip() == "200":
            return True
        if out.strip() == "401":
            return False
        raise EngineError(f"shared_grafana did not answer: {_first_line(err or out, code)}")

    def n8n_accepts(self, email: str, password: str) -> bool:
        # node reads the credentials from stdin and posts them to n8n's REST login.
        script = (
            "let body = '';"
            "process.stdin.on('data', c => body += c).on('end', () =>"
            " fetch('http://127.0.0.1:5678/rest/login', {method: 'POST',"
            " headers: {'content-type': 'application/json'}, body})"
            ".then(r => console.log(r.status),"
            " e => { console.error(String(e)); process.exit(1); }))"
        )
        body = json.dumps({"emailOrLdapLoginId": email, "password": password})
        code, out, err = self._exec("shared_n8n", ["node", "-e", script], body)
        if out.strip() == "200":
            return True
        if out.strip() == "401":
            return False
        raise EngineError(f"shared_n8n did not answer its login: {_first_line(err or out, code)}")


def _first_line(text: str, code: int) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else f"exit code {code}"


# --- The steps -----------------------------------------------------------------------------------


def apply_live(
    settings: Settings, services: Services, pending: Pending, report: Report = print
) -> None:
    """Step 2: tell the running service the new value, where it keeps a copy of its own."""
    rotatable = ROTATABLE[pending.key]
    values = secrets.load(settings)
    new, old = pending.new[pending.key], pending.old[pending.key]
    if rotatable.live == LIVE_POSTGRES:
        env = rotatable.stack
        if services.postgres_accepts(env, values, new):
            report(f"2/6 live: {env}_postgres already accepts the new password")
            return
        if not services.postgres_accepts(env, values, old):
            raise EngineError(
                f"{env}_postgres accepts neither the password in secrets.yml nor the new one "
                f"in {pending_path(settings)}. Set one of them by hand, then retry."
            )
        user = values[f"{env}_postgres_user"]
        sql = f"ALTER ROLE {_quote_identifier(user)} PASSWORD '{scram_verifier(new)}';"
        code, out, err = services.postgres(env, values, old, sql)
        if code != 0:
            raise EngineError(f"ALTER ROLE in {env}_postgres failed: {_first_line(err, code)}")
        report(f"2/6 live: {env}_postgres: ALTER ROLE {user} done (new password active)")
    elif rotatable.live == LIVE_GRAFANA:
        services.grafana_reset(new)
        report("2/6 live: shared_grafana: admin password reset in Grafana's database")
    else:
        report(f"2/6 live: nothing to do before the restart ({rotatable.effect})")


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


def _accepts(services: Services, pending: Pending, values: Mapping[str, str], password: str):
    rotatable = ROTATABLE[pending.key]
    if rotatable.live == LIVE_POSTGRES:
        return services.postgres_accepts(rotatable.stack, values, password)
    if rotatable.live == LIVE_GRAFANA:
        return services.grafana_accepts(values["grafana_admin_user"], password)
    if rotatable.live == RESTART_N8N:
        return services.n8n_accepts(values["n8n_user"], password)
    return services.redis_accepts(rotatable.stack, password)


def check(settings: Settings, services: Services, pending: Pending, report: Report = print) -> None:
    """Step 5: the service accepts the new value and refuses the old one."""
    rotatable = ROTATABLE[pending.key]
    service = rotatable.service
    if rotatable.stack not in engine.deployed_stacks(services.client):
        report(f"5/6 check: {rotatable.stack} is not deployed; nothing to check")
        return
    if not rotatable.checked:
        report(f"5/6 check: {service} converged with the new secret version")
        return
    values = secrets.load(settings)
    if not _accepts(services, pending, values, pending.new[pending.key]):
        raise EngineError(
            f"{service} refuses the new value after the redeploy. Check `invoke logs "
            f"--service={service}`, then run the rotation again to finish it."
        )
    if _accepts(services, pending, values, pending.old[pending.key]):
        raise EngineError(
            f"{service} still accepts the old value. Run the rotation again to finish it."
        )
    report(f"5/6 check: {service} accepts the new value and refuses the old one")


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
    # Its service must answer before the record is made (a restart needs nothing of it);
    # Postgres on any node (reached through a companion), Grafana on this one.
    if rotatable.live == LIVE_POSTGRES:
        engine.running_task(client, rotatable.service)
    elif rotatable.live == LIVE_GRAFANA:
        engine.running_container(client, rotatable.service)
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
