"""Talking to the running services: step 2 tells a service the new value where it keeps a
copy of its own (Postgres, Grafana), step 5 checks it accepts the new value and refuses the
old one. Every value goes on a process's stdin through the exec API, never in its argv."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import docker

from infra import engine, secrets
from infra.errors import EngineError
from infra.rotate.keys import LIVE_GRAFANA, LIVE_POSTGRES, RESTART_N8N, ROTATABLE, Report
from infra.rotate.pending import Pending, pending_path
from infra.settings import Settings
from infra.swarm import companion


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
    # n8n allows 5 logins a minute per account (its /rest/login limiter): a check that meets
    # the limit waits for the window to pass, in these steps, rather than fail the rotation.
    n8n_limit_wait: tuple[float, ...] = (15.0, 15.0, 15.0, 20.0)
    sleep: Callable[[float], None] = time.sleep
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
        self, service: str, command: list[str], stdin: str, reached: companion.Reach
    ) -> tuple[int, str, str]:
        # The command runs where `reached` says; `service` is the service it talks to.
        return engine.exec_with_stdin(self.client, reached.id, command, stdin.encode())

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

    def grafana_reset(self, user: str, new: str, old: str) -> str:
        """Set Grafana's admin password to `new`; says how. In its own task's container,
        `grafana cli` writes the database next to it. From a companion (Grafana runs on
        another node) the cli would write the companion's own, empty database, so the change
        goes through Grafana's HTTP API instead (PUT /api/user/password as the admin, with
        the old password), which needs the old password to be the one Grafana knows."""
        reached = self.reach("shared_grafana")
        if not reached.remote:
            command = [
                "sh", "-c",
                'exec grafana cli --homepath "${GF_PATHS_HOME:-/usr/share/grafana}" '
                '--config "${GF_PATHS_CONFIG:-/etc/grafana/grafana.ini}" '
                "admin reset-admin-password --password-from-stdin",
            ]  # fmt: skip
            code, out, err = self._exec("shared_grafana", command, f"{new}\n", reached)
            if code != 0:
                raise EngineError(
                    "grafana cli admin reset-admin-password failed: "
                    f"{_first_line(err or out, code)}"
                )
            return "admin password reset in Grafana's database"
        body = json.dumps({"oldPassword": old, "newPassword": new})
        status = self._grafana_api(
            reached, "/api/user/password", user, old, f"request = \"PUT\"\n"
            'header = "Content-Type: application/json"\n'
            f"data = {_curl_value(body)}\n",
        )  # fmt: skip
        if status == "200":
            return "admin password changed through its HTTP API, from a helper container here"
        if status == "401" and self.grafana_accepts(user, new):
            return "Grafana already accepts the new admin password"
        if status == "401":
            raise EngineError(
                "shared_grafana accepts neither the admin password in secrets.yml nor the new "
                "one being rotated to. Set one of them by hand (`grafana cli admin "
                "reset-admin-password` on Grafana's node), then retry."
            )
        raise EngineError(
            f"shared_grafana refused the password change (HTTP {status}). Check `invoke logs "
            "--service=shared_grafana`, then retry."
        )

    def grafana_accepts(self, user: str, password: str) -> bool:
        status = self._grafana_api(self.reach("shared_grafana"), "/api/user", user, password)
        if status == "200":
            return True
        if status == "401":
            return False
        raise EngineError(
            f"shared_grafana answered HTTP {status} to the admin's login. Check `invoke logs "
            "--service=shared_grafana`, then retry."
        )

    def _grafana_api(self, reached, path: str, user: str, password: str, extra: str = "") -> str:
        """The HTTP status of one request to Grafana's API as `user`, from where `reached`
        execs (its own loopback, or tasks.shared_grafana from a companion). curl reads its
        configuration, credentials and body included, from stdin (-K -)."""
        host = reached.host or "127.0.0.1"
        config = (
            f"url = {_curl_value(f'http://{host}:3000{path}')}\n"
            f"user = {_curl_value(f'{user}:{password}')}\n{extra}"
        )
        command = ["curl", "-s", "-m", "30", "-o", "/dev/null", "-w", "%{http_code}", "-K", "-"]
        code, out, err = self._exec("shared_grafana", command, config, reached)
        status = out.strip()
        if status.isdigit() and status != "000":
            return status
        raise EngineError(f"shared_grafana did not answer: {_first_line(err or out, code)}")

    def n8n_accepts(self, email: str, password: str) -> bool:
        # node reads the credentials from stdin and posts them to n8n's REST login: on its own
        # task's loopback, or from a companion to tasks.shared_n8n when n8n runs elsewhere.
        reached = self.reach("shared_n8n")
        url = f"http://{reached.host or '127.0.0.1'}:5678/rest/login"
        script = (
            "let body = '';"
            "process.stdin.on('data', c => body += c).on('end', () =>"
            f" fetch({json.dumps(url)}, {{method: 'POST',"
            " headers: {'content-type': 'application/json'}, body})"
            ".then(r => console.log(r.status),"
            " e => { console.error(String(e)); process.exit(1); }))"
        )
        body = json.dumps({"emailOrLdapLoginId": email, "password": password})
        for wait in (*self.n8n_limit_wait, None):
            code, out, err = self._exec("shared_n8n", ["node", "-e", script], body, reached)
            if out.strip() != "429" or wait is None:
                break
            self.sleep(wait)
        if out.strip() == "200":
            return True
        if out.strip() == "401":
            return False
        if out.strip() == "429":
            raise EngineError(
                "shared_n8n refuses more logins for now (HTTP 429: it allows 5 a minute per "
                "account). Retry the rotation in a minute."
            )
        raise EngineError(f"shared_n8n did not answer its login: {_first_line(err or out, code)}")


def _curl_value(text: str) -> str:
    """A value of curl's configuration file, quoted: inside double quotes curl reads a
    backslash escape, so a quote or backslash in a password stays part of it."""
    if "\n" in text or "\r" in text:
        raise EngineError("a value with a line break cannot be given to curl's configuration.")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _first_line(text: str, code: int) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else f"exit code {code}"


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
        done = services.grafana_reset(values["grafana_admin_user"], new, old)
        report(f"2/6 live: shared_grafana: {done}")
    else:
        report(f"2/6 live: nothing to do before the restart ({rotatable.effect})")


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
