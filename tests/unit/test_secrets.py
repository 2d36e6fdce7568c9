from __future__ import annotations

import json
import re
import stat

import bcrypt
import pytest
import yaml
from passlib.apache import HtpasswdFile

from infra import secrets
from infra.catalog import ENVIRONMENTS
from infra.errors import SecretsError

PASSWORD_KEYS = [k for k in secrets.SCHEMA_KEYS if k.endswith(("_password", "_secret_key"))]


@pytest.fixture
def generated(settings):
    assert secrets.generate(settings)
    return secrets.load(settings)


def test_generate_writes_a_0600_file_with_every_key(settings, generated):
    mode = stat.S_IMODE(settings.secrets_file.stat().st_mode)
    assert mode == 0o600
    assert set(generated) == set(secrets.SCHEMA_KEYS)


@pytest.mark.parametrize("key", PASSWORD_KEYS, ids=PASSWORD_KEYS)
def test_passwords_are_long_random_tokens(settings, generated, key):
    assert len(generated[key]) >= 32
    other = secrets.generate_values(settings)
    assert other[key] != generated[key]


@pytest.mark.parametrize("env", list(ENVIRONMENTS))
def test_postgres_names_are_readable_identifiers(generated, env):
    assert generated[f"{env}_postgres_user"] == f"nextcandle_{env}"
    assert generated[f"{env}_postgres_db"] == f"nextcandle_{env}"


def test_htpasswd_line_verifies_the_generated_password(generated):
    htpasswd = HtpasswdFile.from_string(generated["traefik_dashboard_htpasswd"])
    user = generated["traefik_dashboard_user"]
    assert htpasswd.check_password(user, generated["traefik_dashboard_password"])
    assert not htpasswd.check_password(user, "wrong")


def test_generate_never_rewrites_an_existing_file(settings, generated):
    before = settings.secrets_file.read_bytes()
    assert secrets.generate(settings) is False
    assert settings.secrets_file.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("dev_postgres_db: [unclosed\n", "not valid YAML at line"),
        ("- a\n- b\n", "not a mapping"),
        ("", "not a mapping"),
    ],
    ids=["bad-yaml", "a-list", "empty"],
)
def test_malformed_secrets_file_is_one_clear_line(settings, content, expected):
    settings.secrets_file.parent.mkdir(parents=True)
    settings.secrets_file.write_text(content)
    settings.secrets_file.chmod(0o600)
    with pytest.raises(SecretsError, match=expected) as error:
        secrets.load(settings)
    assert "\n" not in str(error.value)


def test_missing_key_is_named(settings, generated):
    del generated["stg_redis_password"]
    settings.secrets_file.write_text(yaml.safe_dump(generated))
    with pytest.raises(SecretsError, match="no value for stg_redis_password"):
        secrets.load(settings)


def test_unknown_key_is_named_without_values(settings, generated):
    settings.secrets_file.write_text(yaml.safe_dump({**generated, "dev_postgress_password": "x"}))
    with pytest.raises(SecretsError, match="unknown keys: dev_postgress_password"):
        secrets.load(settings)


@pytest.mark.parametrize("env", list(ENVIRONMENTS))
def test_each_environments_redis_exporter_gets_its_own_redis_password_only(generated, env):
    content = json.loads(secrets.render_secret(env, "redis_exporter_passwords", generated))
    assert content == {f"redis://tasks.{env}_redis:6379": generated[f"{env}_redis_password"]}
    others = [generated[f"{other}_redis_password"] for other in ENVIRONMENTS if other != env]
    assert not any(password in json.dumps(content) for password in others)


def test_the_shared_stack_holds_no_environment_password(generated):
    rendered = [
        secrets.render_secret("shared", key, generated) for key in secrets.DOCKER_SECRETS["shared"]
    ]
    for env in ENVIRONMENTS:
        for key in ("postgres_password", "redis_password"):
            assert not any(generated[f"{env}_{key}"].encode() in data for data in rendered)


def test_s3_config_has_one_identity_and_no_anonymous_access(generated):
    config = json.loads(secrets.render_secret("shared", "s3_config", generated))
    (identity,) = config["identities"]
    assert identity["credentials"] == [
        {"accessKey": generated["s3_access_key"], "secretKey": generated["s3_secret_key"]}
    ]
    assert identity["name"] != "anonymous"


def test_n8n_key_has_no_trailing_newline(generated):
    # n8n reads *_FILE variables without trimming.
    assert secrets.render_secret("shared", "n8n_encryption_key", generated) == (
        generated["n8n_encryption_key"].encode()
    )


# n8n's own check of N8N_INSTANCE_OWNER_PASSWORD_HASH (owner.instance-settings-loader.ts).
N8N_BCRYPT = re.compile(r"^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$")


def test_n8n_owner_secrets_are_the_user_and_a_bcrypt_hash_of_the_password(generated):
    email = secrets.render_secret("shared", "n8n_owner_email", generated)
    assert email == generated["n8n_user"].encode()  # no newline: n8n reads *_FILE raw
    digest = secrets.render_secret("shared", "n8n_owner_password_hash", generated)
    assert N8N_BCRYPT.match(digest.decode())
    assert bcrypt.checkpw(generated["n8n_password"].encode(), digest)
    assert not bcrypt.checkpw(b"another password", digest)
    assert generated["n8n_password"].encode() not in digest


def test_n8n_owner_hash_is_the_same_for_the_same_password_and_key():
    """A redeploy renders the same secret (nothing restarts); another password or another
    installation's key gives another salt."""
    first = secrets.n8n_password_hash("pw-1", "key-1")
    secrets.n8n_password_hash.cache_clear()  # computed again, not the process's memo
    assert secrets.n8n_password_hash("pw-1", "key-1") == first
    salts = {
        secrets.n8n_password_hash(password, key)[:29]
        for password, key in (("pw-1", "key-1"), ("pw-2", "key-1"), ("pw-1", "key-2"))
    }
    assert len(salts) == 3


@pytest.mark.parametrize("env", list(ENVIRONMENTS))
def test_redis_auth_conf_is_a_requirepass_line(generated, env):
    content = secrets.render_secret(env, "redis_auth_conf", generated).decode()
    assert content == f'requirepass "{generated[f"{env}_redis_password"]}"\n'


def test_empty_env_token_names_the_variable(generated):
    values = {**generated, "cloudflare_tunnel_token": ""}
    with pytest.raises(SecretsError, match="Set CLOUDFLARE_TUNNEL_TOKEN in .env"):
        secrets.render_secret("core", "cloudflare_tunnel_token", values)


def test_secrets_file_readable_by_others_is_refused(settings, generated):
    settings.secrets_file.chmod(0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        secrets.load(settings)


def test_a_directory_as_secrets_file_is_named_not_chmodded(tmp_path, environ):
    from infra.settings import REPO_ROOT, load_settings

    (tmp_path / "secrets-dir").mkdir()
    settings = load_settings(REPO_ROOT, {**environ, "SECRETS_FILE": str(tmp_path / "secrets-dir")})
    for action in (secrets.load, secrets.generate):
        with pytest.raises(SecretsError, match="is a directory, not a file") as caught:
            action(settings)
        assert "chmod" not in str(caught.value)


def test_a_secrets_file_that_is_not_utf8_is_one_line(settings):
    settings.secrets_file.parent.mkdir(parents=True)
    settings.secrets_file.write_bytes(b"grafana_admin_user: caf\xe9\n")
    settings.secrets_file.chmod(0o600)
    with pytest.raises(SecretsError, match="is not UTF-8 text"):
        secrets.load(settings)


def test_unknown_keys_of_any_type_are_named(settings, generated):
    data = yaml.safe_load(settings.secrets_file.read_text())
    settings.secrets_file.write_text(yaml.safe_dump({**data, 1: "x", "extra": "y"}))
    with pytest.raises(SecretsError, match="has unknown keys: 1, extra"):
        secrets.load(settings)
