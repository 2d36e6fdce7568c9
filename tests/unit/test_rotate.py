"""secrets.rotate without a daemon: key validation, the pending record, the atomic rewrite of
secrets.yml, the plan, and that no value is ever printed or put in a command's arguments.

The running services are stood in for by `FakeServices`, which keeps the passwords the way
the real ones do (Postgres: a SCRAM verifier it checks logins against); the real exchange
with Postgres and Redis is tested in tests/acceptance/test_rotation.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import rotate, secrets
from infra.errors import EngineError, SecretsError, SettingsError
from infra.settings import REPO_ROOT
from infra.swarm import companion


@pytest.fixture
def values(settings):
    assert secrets.generate(settings)
    return secrets.load(settings)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- Which keys ------------------------------------------------------------------------------


def test_every_key_of_secrets_yml_is_either_rotatable_or_refused_with_a_reason():
    rotatable, read_only = set(rotate.ROTATABLE), set(rotate.READ_ONLY)
    assert not rotatable & read_only
    assert rotatable | read_only == set(secrets.SCHEMA_KEYS)


def test_unknown_key_is_one_line_listing_the_rotatable_keys():
    with pytest.raises(SettingsError) as error:
        rotate.check_key("dev_postgres_pasword")
    message = str(error.value)
    assert "\n" not in message
    assert "'dev_postgres_pasword'" in message
    for key in rotate.ROTATABLE:
        assert key in message


@pytest.mark.parametrize(
    "key", ["dev_postgres_user", "prod_postgres_db", "n8n_encryption_key"], ids=str
)
def test_read_only_key_is_refused_with_its_reason(key):
    with pytest.raises(SettingsError, match=f"^{key} cannot be rotated: .+"):
        rotate.check_key(key)


# --- The pending record ---------------------------------------------------------------------


def test_begin_records_a_new_value_0600_before_anything_else_changes(settings, values):
    before = settings.secrets_file.read_bytes()
    pending = rotate.begin(settings, "dev_postgres_password", report=lambda _: None)
    assert pending.new["dev_postgres_password"] != values["dev_postgres_password"]
    assert pending.old == {"dev_postgres_password": values["dev_postgres_password"]}
    path = rotate.pending_path(settings)
    assert path.parent == settings.secrets_file.parent
    assert _mode(path) == 0o600
    assert settings.secrets_file.read_bytes() == before


def test_a_rerun_resumes_with_the_recorded_value(settings, values):
    first = rotate.begin(settings, "dev_redis_password", report=lambda _: None)
    lines: list[str] = []
    second = rotate.begin(settings, "dev_redis_password", report=lines.append)
    assert second == first
    assert second.new == first.new
    assert any("resuming the interrupted rotation" in line for line in lines)


def test_another_key_waits_for_the_interrupted_rotation(settings, values):
    rotate.begin(settings, "dev_redis_password", report=lambda _: None)
    with pytest.raises(SecretsError, match="--key=dev_redis_password"):
        rotate.begin(settings, "dev_postgres_password", report=lambda _: None)


def test_derived_keys_are_made_again_from_the_new_value(settings, values):
    from passlib.apache import HtpasswdFile

    pending = rotate.begin(settings, "traefik_dashboard_password", report=lambda _: None)
    assert set(pending.new) == {"traefik_dashboard_password", "traefik_dashboard_htpasswd"}
    htpasswd = HtpasswdFile.from_string(pending.new["traefik_dashboard_htpasswd"] + "\n")
    assert htpasswd.check_password(
        values["traefik_dashboard_user"], pending.new["traefik_dashboard_password"]
    )


def test_a_pending_record_readable_by_others_is_refused(settings, values):
    rotate.begin(settings, "dev_redis_password", report=lambda _: None)
    rotate.pending_path(settings).chmod(0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        rotate.read_pending(settings)


# --- Rewriting secrets.yml ------------------------------------------------------------------


def test_rewrite_changes_one_key_atomically_and_keeps_0600(settings, values):
    path = settings.secrets_file
    header = path.read_text().splitlines()[0]
    changed = secrets.rewrite_keys(settings, {"dev_redis_password": "new-value-for-tests"})
    assert changed == ["dev_redis_password"]
    assert _mode(path) == 0o600
    assert path.read_text().splitlines()[0] == header  # the comment lines stay
    after = secrets.load(settings)
    assert after == {**values, "dev_redis_password": "new-value-for-tests"}
    assert list(yaml.safe_load(path.read_text())) == list(values)  # key order kept
    assert sorted(os.listdir(path.parent)) == ["secrets.yml"]  # no temporary file left


def test_rewrite_with_the_same_value_leaves_the_file_alone(settings, values):
    path = settings.secrets_file
    before = path.stat().st_mtime_ns, path.stat().st_ino
    assert (
        secrets.rewrite_keys(settings, {"dev_redis_password": values["dev_redis_password"]}) == []
    )
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before


def test_rewrite_refuses_a_file_readable_by_others(settings, values):
    settings.secrets_file.chmod(0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        secrets.rewrite_keys(settings, {"dev_redis_password": "x"})
    assert settings.secrets_file.read_text().count(values["dev_redis_password"]) == 1


def test_write_private_replaces_a_wider_file_with_a_0600_one(tmp_path):
    path = tmp_path / "file.yml"
    path.write_text("old\n")
    path.chmod(0o644)
    secrets.write_private(path, "new\n")
    assert path.read_text() == "new\n"
    assert _mode(path) == 0o600


# --- What a key reaches ---------------------------------------------------------------------


def test_postgres_password_reaches_only_its_environment(values):
    assert rotate.affected_secrets(values, ("dev_postgres_password",)) == {
        "dev": ["postgres_password"]
    }


def test_redis_password_reaches_its_own_environments_exporter_and_nothing_shared(settings, values):
    affected = rotate.affected_secrets(values, ("stg_redis_password",))
    assert affected == {"stg": ["redis_password", "redis_auth_conf", "redis_exporter_passwords"]}
    assert rotate.rolling_services(settings, affected) == ["stg_redis", "stg_redis-exporter"]


def test_postgres_password_rolls_its_exporter_too(settings, values):
    affected = rotate.affected_secrets(values, ("prod_postgres_password",))
    assert rotate.rolling_services(settings, affected) == [
        "prod_postgres",
        "prod_postgres-exporter",
    ]


def test_s3_keys_roll_the_object_storage(settings, values):
    affected = rotate.affected_secrets(values, ("s3_secret_key",))
    assert "s3_config" in affected["shared"]
    assert rotate.rolling_services(settings, affected) == ["shared_seaweedfs"]


def test_the_keys_own_stack_is_redeployed_first():
    order = rotate.stacks_in_order(rotate.ROTATABLE["prod_redis_password"], {"shared", "prod"})
    assert order == ["prod", "shared"]


# --- The plan -------------------------------------------------------------------------------


def test_plan_names_the_steps_and_the_services_that_roll_without_values(settings, values):
    lines = rotate.plan(settings, "dev_redis_password")
    text = "\n".join(lines)
    assert [line.split(".")[0].strip() for line in lines[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert "dev_redis, dev_redis-exporter" in text
    assert str(rotate.pending_path(settings)) in text
    assert not rotate.pending_path(settings).exists()  # a plan changes nothing
    for value in values.values():
        if len(value) > 20:
            assert value not in text


def test_plan_says_when_it_would_resume(settings, values):
    rotate.begin(settings, "dev_postgres_password", report=lambda _: None)
    assert "resume the interrupted rotation" in rotate.plan(settings, "dev_postgres_password")[1]


def test_dry_run_on_the_command_line_prints_the_plan_and_no_value(settings, values, environ):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(environ, DOCKER_HOST=f"unix://{settings.secrets_file.parent}/no-docker.sock")
    command = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT)]
    result = subprocess.run(
        [*command, "secrets.rotate", "--key=dev_postgres_password", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ALTER ROLE" in result.stdout
    assert values["dev_postgres_password"] not in result.stdout + result.stderr
    wrong = subprocess.run(
        [*command, "secrets.rotate", "--key=dev_postgres_usr"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 1
    assert wrong.stderr.count("\n") == 1
    assert "Rotatable: dev_postgres_password" in wrong.stderr


# --- Postgres's verifier --------------------------------------------------------------------


def test_scram_verifier_is_what_postgres_stores_for_the_password():
    verifier = rotate.scram_verifier("pencil", salt=b"0123456789abcdef")
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = (base64.b64decode(part) for part in keys.split(":"))
    assert (method, int(iterations), base64.b64decode(salt)) == (
        "SCRAM-SHA-256",
        4096,
        b"0123456789abcdef",
    )
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", b"0123456789abcdef", 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert stored_key == hashlib.sha256(client_key).digest()
    assert server_key == hmac.new(salted, b"Server Key", "sha256").digest()
    assert rotate.scram_verifier("pencil") != rotate.scram_verifier("pencil")  # random salt


# --- The steps, against services that keep passwords like the real ones ----------------------


class FakeServices(rotate.Services):
    """Postgres checks logins against the verifier it stores; Redis and Grafana against a
    password. Every exec is recorded: (service, command, stdin)."""

    def __init__(self, postgres_password: str):
        super().__init__(client=None)
        self.verifier = rotate.scram_verifier(postgres_password)
        self.passwords: dict[str, str] = {}
        self.execs: list[tuple[str, list[str], str]] = []
        self.remote: dict[str, str] = {}

    def _login(self, password: str) -> bool:
        _, rest = self.verifier.split("$", 1)
        iterations_salt, keys = rest.split("$")
        iterations, salt = iterations_salt.split(":")
        return rotate.scram_verifier(password, base64.b64decode(salt), int(iterations)) == (
            self.verifier
        )

    def reach(self, service):
        # A task on this node unless the test puts its service elsewhere.
        return companion.Reach(service, None, host=self.remote.get(service, ""))

    def _exec(self, service, command, stdin, reached=None):
        self.execs.append((service, command, stdin))
        if service.endswith("_postgres"):
            password, sql = stdin.split("\n", 1)
            if not self._login(password):
                return 2, "", 'psql: error: FATAL:  password authentication failed for user "x"'
            if sql.startswith("ALTER ROLE"):
                self.verifier = sql.split("PASSWORD '")[1].split("'")[0]
                return 0, "", ""
            return 0, "1\n", ""
        if service.endswith("_redis"):
            password = stdin.split("\n")[0].removeprefix("AUTH ")
            if password == self.passwords.get(service):
                return 0, "OK\nPONG\n", ""
            return (
                0,
                "WRONGPASS invalid username-password pair\nNOAUTH Authentication required.\n",
                "",
            )
        return 0, "", ""


def test_live_postgres_sends_a_verifier_and_the_password_only_on_stdin(settings, values):
    services = FakeServices(values["dev_postgres_password"])
    lines: list[str] = []
    pending = rotate.begin(settings, "dev_postgres_password", report=lines.append)
    new = pending.new["dev_postgres_password"]
    rotate.apply_live(settings, services, pending, report=lines.append)
    assert services._login(new)
    assert not services._login(values["dev_postgres_password"])
    for service, command, _ in services.execs:
        assert service == "dev_postgres"
        assert not any(new in arg or values["dev_postgres_password"] in arg for arg in command)
    alter = next(stdin for _, _, stdin in services.execs if "ALTER ROLE" in stdin)
    assert new not in alter.split("\n", 1)[1]  # the statement holds the verifier only
    assert all(new not in line for line in lines)


def test_live_postgres_is_idempotent_when_rerun(settings, values):
    services = FakeServices(values["dev_postgres_password"])
    pending = rotate.begin(settings, "dev_postgres_password", report=lambda _: None)
    rotate.apply_live(settings, services, pending, report=lambda _: None)
    verifier = services.verifier
    lines: list[str] = []
    rotate.apply_live(settings, services, pending, report=lines.append)
    assert services.verifier == verifier
    assert "already accepts the new password" in lines[0]


def test_live_postgres_that_knows_neither_password_changes_nothing(settings, values):
    services = FakeServices("a-password-nobody-recorded")
    pending = rotate.begin(settings, "dev_postgres_password", report=lambda _: None)
    with pytest.raises(EngineError, match="accepts neither"):
        rotate.apply_live(settings, services, pending, report=lambda _: None)
    assert not any("ALTER ROLE" in stdin for _, _, stdin in services.execs)


def test_grafana_password_goes_to_grafana_cli_on_stdin(settings, values):
    services = FakeServices("unused")
    pending = rotate.begin(settings, "grafana_admin_password", report=lambda _: None)
    rotate.apply_live(settings, services, pending, report=lambda _: None)
    [(service, command, stdin)] = services.execs
    assert service == "shared_grafana"
    assert "reset-admin-password --password-from-stdin" in command[-1]
    assert stdin == pending.new["grafana_admin_password"] + "\n"
    assert not any(pending.new["grafana_admin_password"] in arg for arg in command)


def test_redis_gets_no_live_change_its_restart_is_the_change(settings, values):
    services = FakeServices("unused")
    lines: list[str] = []
    pending = rotate.begin(settings, "dev_redis_password", report=lambda _: None)
    rotate.apply_live(settings, services, pending, report=lines.append)
    assert services.execs == []
    assert "restarts stop-first" in lines[0]


def test_redis_password_is_checked_through_stdin_of_redis_cli(settings, values):
    services = FakeServices("unused")
    services.passwords["dev_redis"] = "the-password"
    assert services.redis_accepts("dev", "the-password")
    assert not services.redis_accepts("dev", "another-password")
    service, command, stdin = services.execs[0]
    assert (service, command) == ("dev_redis", ["redis-cli"])
    assert stdin == "AUTH the-password\nPING\n"


def test_redis_on_another_node_is_checked_from_the_companion_at_its_dns_name(settings, values):
    services = FakeServices("unused")
    services.remote["dev_redis"] = "tasks.dev_redis"
    services.passwords["dev_redis"] = "the-password"
    assert services.redis_accepts("dev", "the-password")
    _, command, stdin = services.execs[0]
    assert command == ["redis-cli", "-h", "tasks.dev_redis"]
    assert "the-password" not in " ".join(command)


def test_postgres_on_another_node_is_reached_over_tcp_at_its_dns_name(settings, values):
    services = FakeServices(values["dev_postgres_password"])
    services.remote["dev_postgres"] = "tasks.dev_postgres"
    assert services.postgres_accepts("dev", values, values["dev_postgres_password"])
    _, command, _ = services.execs[0]
    assert command[-1] == "tasks.dev_postgres"
    assert values["dev_postgres_password"] not in " ".join(command)
    services.remote.clear()
    services.postgres_accepts("dev", values, values["dev_postgres_password"])
    assert services.execs[-1][1][-1] == "127.0.0.1"  # its own task: loopback, as before


def test_store_then_store_again_rewrites_once(settings, values):
    pending = rotate.begin(settings, "dev_redis_password", report=lambda _: None)
    lines: list[str] = []
    rotate.store(settings, pending, report=lines.append)
    rotate.store(settings, pending, report=lines.append)
    assert secrets.load(settings)["dev_redis_password"] == pending.new["dev_redis_password"]
    assert "rewritten" in lines[0]
    assert "already holds the new value" in lines[1]
    assert all(pending.new["dev_redis_password"] not in line for line in lines)


def test_n8n_password_rolls_only_n8n_with_a_new_owner_hash(settings, values):
    affected = rotate.affected_secrets(values, ("n8n_password",))
    assert affected == {"shared": ["n8n_owner_password_hash"]}
    assert rotate.rolling_services(settings, affected) == ["shared_n8n"]


def test_n8n_gets_no_live_change_its_restart_is_the_change(settings, values):
    services = FakeServices("unused")
    lines: list[str] = []
    pending = rotate.begin(settings, "n8n_password", report=lambda _: None)
    rotate.apply_live(settings, services, pending, report=lines.append)
    assert services.execs == []
    assert "shared_n8n restarts" in lines[0]


class FakeN8n(FakeServices):
    """n8n's REST login: 200 for the owner's password, 401 for any other."""

    def reach(self, service):
        # A task on this node unless the test puts its service elsewhere.
        return companion.Reach(service, None, host=self.remote.get(service, ""))

    def _exec(self, service, command, stdin, reached=None):
        self.execs.append((service, command, stdin))
        body = json.loads(stdin)
        ok = body == {"emailOrLdapLoginId": "owner@example.test", "password": "the-password"}
        return 0, ("200\n" if ok else "401\n"), ""


def test_n8n_password_is_checked_by_a_login_with_the_credentials_on_stdin():
    services = FakeN8n("unused")
    assert services.n8n_accepts("owner@example.test", "the-password")
    assert not services.n8n_accepts("owner@example.test", "another-password")
    service, command, stdin = services.execs[0]
    assert service == "shared_n8n" and command[:2] == ["node", "-e"]
    assert '"http://127.0.0.1:5678/rest/login"' in command[2]
    assert not any("the-password" in arg or "owner@" in arg for arg in command)


def test_n8n_on_another_node_is_checked_from_a_companion_through_tasks_dns():
    services = FakeN8n("unused")
    services.remote["shared_n8n"] = "tasks.shared_n8n"
    assert services.n8n_accepts("owner@example.test", "the-password")
    _, command, _ = services.execs[0]
    assert '"http://tasks.shared_n8n:5678/rest/login"' in command[2]


class RateLimitedN8n(FakeN8n):
    """n8n's login limiter: the first `limited` logins get 429."""

    def __init__(self, limited: int):
        super().__init__("unused")
        self.limited = limited
        self.slept: list[float] = []
        self.sleep = self.slept.append

    def _exec(self, service, command, stdin, reached=None):
        if self.limited:
            self.limited -= 1
            self.execs.append((service, command, stdin))
            return 0, "429\n", ""
        return super()._exec(service, command, stdin, reached)


def test_n8n_login_limit_is_waited_out_before_the_check_answers():
    services = RateLimitedN8n(limited=2)
    assert services.n8n_accepts("owner@example.test", "the-password")
    assert len(services.execs) == 3
    assert services.slept == list(services.n8n_limit_wait[:2])


def test_n8n_login_limit_that_outlasts_the_waits_is_one_line_saying_retry():
    services = RateLimitedN8n(limited=len(rotate.Services.n8n_limit_wait) + 1)
    with pytest.raises(EngineError, match=r"^shared_n8n refuses more logins for now .*Retry"):
        services.n8n_accepts("owner@example.test", "the-password")
    assert sum(services.slept) >= 60  # n8n's window is a minute


def _curl_config(text: str) -> dict[str, str]:
    """curl's configuration file as curl reads it: `name = "value"`, with backslash escapes
    inside the quotes."""
    parsed = {}
    for line in text.splitlines():
        name, _, value = line.partition(" = ")
        assert value.startswith('"') and value.endswith('"'), line
        parsed[name] = re.sub(r"\\(.)", r"\1", value[1:-1])
    return parsed


class FakeGrafana(FakeServices):
    """Grafana's API as curl reaches it: basic auth against the admin's password; PUT
    /api/user/password checks the old one and sets the new one."""

    def __init__(self, password: str, remote: bool):
        super().__init__("unused")
        self.grafana_password = password
        if remote:
            self.remote["shared_grafana"] = "tasks.shared_grafana"

    def _exec(self, service, command, stdin, reached=None):
        self.execs.append((service, command, stdin))
        if command[0] != "curl":  # grafana cli, in its own task's container
            self.grafana_password = stdin.removesuffix("\n")
            return 0, "", ""
        config = _curl_config(stdin)
        host = self.remote.get(service) or "127.0.0.1"
        user, _, password = config["user"].partition(":")
        if user != "admin" or password != self.grafana_password:
            return 0, "401", ""
        if config["url"] == f"http://{host}:3000/api/user":
            return 0, "200", ""
        assert config["url"] == f"http://{host}:3000/api/user/password", config
        assert config["request"] == "PUT"
        body = json.loads(config["data"])
        if body["oldPassword"] != self.grafana_password:
            return 0, "401", ""
        self.grafana_password = body["newPassword"]
        return 0, "200", ""


@pytest.fixture
def grafana_values(settings, values):
    assert values["grafana_admin_user"] == "admin"
    return values


def test_grafana_on_another_node_changes_its_password_through_its_api(settings, grafana_values):
    old = grafana_values["grafana_admin_password"]
    services = FakeGrafana(old, remote=True)
    lines: list[str] = []
    pending = rotate.begin(settings, "grafana_admin_password", report=lambda _: None)
    rotate.apply_live(settings, services, pending, report=lines.append)
    new = pending.new["grafana_admin_password"]
    assert services.grafana_password == new
    assert "through its HTTP API" in lines[0]
    assert services.grafana_accepts("admin", new)
    assert not services.grafana_accepts("admin", old)
    for _, command, _ in services.execs:
        assert not any(new in arg or old in arg for arg in command)
    assert all(new not in line and old not in line for line in lines)


def test_grafana_on_another_node_rerun_finds_the_new_password_set(settings, grafana_values):
    services = FakeGrafana(grafana_values["grafana_admin_password"], remote=True)
    pending = rotate.begin(settings, "grafana_admin_password", report=lambda _: None)
    rotate.apply_live(settings, services, pending, report=lambda _: None)
    lines: list[str] = []
    rotate.apply_live(settings, services, pending, report=lines.append)
    assert "already accepts the new admin password" in lines[0]


def test_grafana_on_another_node_that_knows_neither_password_is_refused(settings, grafana_values):
    services = FakeGrafana("a-password-nobody-recorded", remote=True)
    pending = rotate.begin(settings, "grafana_admin_password", report=lambda _: None)
    with pytest.raises(EngineError, match="accepts neither"):
        rotate.apply_live(settings, services, pending, report=lambda _: None)
    assert services.grafana_password == "a-password-nobody-recorded"


def test_grafana_here_is_checked_on_its_own_loopback(settings, grafana_values):
    services = FakeGrafana("pass", remote=False)
    assert services.grafana_accepts("admin", "pass")
    assert "http://127.0.0.1:3000/api/user" in services.execs[0][2]


@pytest.mark.parametrize(
    "value",
    ["plain", 'with "quotes"', "back\\slash\\", 'both \\" at once'],
    ids=["plain", "quotes", "backslashes", "escaped-quote"],
)
def test_a_value_in_curls_configuration_reads_back_as_it_was(value):
    from infra.rotate.live import _curl_value

    assert _curl_config(f"user = {_curl_value(value)}") == {"user": value}


def test_a_line_break_cannot_reach_curls_configuration():
    from infra.rotate.live import _curl_value

    with pytest.raises(EngineError, match="line break"):
        _curl_value("two\nlines")
