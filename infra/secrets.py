"""The secrets schema: what secrets.yml holds, how each value is made, and what each stack's
Docker secrets contain.

secrets.yml is a flat mapping `<key>: <value>`, written once with mode 0600 and never rewritten
(DESIGN decision 7) except by an explicit rotation (`rewrite_keys`, used by infra/rotate).
Docker secrets are derived from it (and from two `.env` tokens) by the renderers in
DOCKER_SECRETS; their names carry a hash of their content (DESIGN decision 2).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import re
import secrets as random_tokens
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import bcrypt
import yaml
from passlib.apache import HtpasswdFile

from infra import runner
from infra.alerts import receivers
from infra.catalog import CORE, ENVIRONMENTS, RUNNER, SHARED
from infra.errors import SecretsError
from infra.settings import Settings

Values = Mapping[str, str]


def _password() -> str:
    return random_tokens.token_urlsafe(32)  # 43 characters of [A-Za-z0-9_-]


def _identifier(settings: Settings, suffix: str) -> str:
    """A readable Postgres name: the project name made a valid identifier, plus a suffix."""
    return re.sub(r"[^a-z0-9_]", "_", settings.project_name) + "_" + suffix


def _htpasswd_line(user: str, password: str) -> str:
    htpasswd = HtpasswdFile(default_scheme="apr_md5_crypt")
    htpasswd.set_password(user, password)
    return htpasswd.to_string().decode().strip()


_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BCRYPT_BASE64 = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


# bcrypt is slow by design (some 70 ms here) and a deploy plans twice: one hash per input.
@functools.lru_cache(maxsize=16)
def n8n_password_hash(password: str, installation_key: str) -> str:
    """The bcrypt hash n8n takes as N8N_INSTANCE_OWNER_PASSWORD_HASH(_FILE).

    The salt is not drawn at random: it is an HMAC of the password under a secret of this
    installation (n8n_encryption_key, never rotated). The same password always gives the
    same hash, so a redeploy renders the same Docker secret and restarts nothing (DESIGN
    decisions 2 and 3), while another installation or another password gets another salt."""
    digest = hmac.new(
        installation_key.encode(), b"n8n owner password\0" + password.encode(), hashlib.sha256
    ).digest()
    salt = base64.b64encode(digest[:16]).translate(bytes.maketrans(_BASE64, _BCRYPT_BASE64))
    return bcrypt.hashpw(password.encode(), b"$2b$10$" + salt.rstrip(b"=")).decode()


@dataclass(frozen=True)
class SecretKey:
    """One entry of secrets.yml and how a new value for it is made."""

    name: str
    make: Callable[[Settings, dict[str, str]], str]
    description: str


def _schema() -> tuple[SecretKey, ...]:
    keys: list[SecretKey] = []
    for env in ENVIRONMENTS:
        keys += [
            SecretKey(
                f"{env}_postgres_db", lambda s, v, e=env: _identifier(s, e), f"{env} database"
            ),
            SecretKey(f"{env}_postgres_user", lambda s, v, e=env: _identifier(s, e), f"{env} role"),
            SecretKey(f"{env}_postgres_password", lambda s, v: _password(), f"{env} role password"),
            SecretKey(f"{env}_redis_password", lambda s, v: _password(), f"{env} Redis password"),
        ]
    keys += [
        SecretKey("s3_access_key", lambda s, v: random_tokens.token_hex(10).upper(), "S3 key id"),
        SecretKey("s3_secret_key", lambda s, v: random_tokens.token_urlsafe(30), "S3 secret key"),
        SecretKey("grafana_admin_user", lambda s, v: "admin", "Grafana admin user"),
        SecretKey("grafana_admin_password", lambda s, v: _password(), "Grafana admin password"),
        SecretKey("n8n_user", lambda s, v: f"admin@{s.shared_domain}", "n8n owner e-mail"),
        SecretKey("n8n_password", lambda s, v: _password(), "n8n owner password"),
        SecretKey("n8n_encryption_key", lambda s, v: random_tokens.token_hex(32), "n8n key"),
        SecretKey("traefik_dashboard_user", lambda s, v: "admin", "Traefik dashboard user"),
        SecretKey("traefik_dashboard_password", lambda s, v: _password(), "dashboard password"),
        SecretKey(
            "traefik_dashboard_htpasswd",
            lambda s, v: _htpasswd_line(
                v["traefik_dashboard_user"], v["traefik_dashboard_password"]
            ),
            "dashboard htpasswd line (derived from the two above)",
        ),
    ]
    return tuple(keys)


SCHEMA: tuple[SecretKey, ...] = _schema()
SCHEMA_KEYS = tuple(key.name for key in SCHEMA)

# Keys the operator adds to secrets.yml by hand when a feature needs them: never generated,
# never rotated, absent unless given. Each is a credential someone else issued (a bucket's
# access key at an S3 provider), which no random value can replace.
OPERATOR_KEYS: dict[str, str] = {
    "backup_s3_access_key": "access key id of the off-site backup bucket (BACKUP_S3_BUCKET)",
    "backup_s3_secret_key": "secret key of the off-site backup bucket (BACKUP_S3_BUCKET)",
}


def generate_values(settings: Settings) -> dict[str, str]:
    values: dict[str, str] = {}
    for key in SCHEMA:  # in order: a derived value reads the ones made before it
        values[key.name] = key.make(settings, values)
    return values


def generate(settings: Settings) -> bool:
    """Write secrets.yml when it is missing. Returns False (and writes nothing) if it exists."""
    path = settings.secrets_file
    if path.exists():
        _require_file(path)
        return False
    values = generate_values(settings)
    header = (
        f"# Generated by `invoke secrets.generate` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n"
        "# Never commit this file. Keep a copy in your password manager.\n"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never overwrite a file created meanwhile; 0600 from the first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise SecretsError(
            f"{path} cannot be created ({exc.strerror}). Check the directory."
        ) from exc
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(header)
        yaml.safe_dump(values, handle, sort_keys=False, default_flow_style=False, width=1000)
    return True


def load(settings: Settings) -> dict[str, str]:
    """Read and validate secrets.yml: a mapping with every schema key, each a non-empty string,
    and any of the operator's keys (OPERATOR_KEYS) that are given."""
    path = settings.secrets_file
    fix = "Restore it from your backup, or move it away and run: invoke secrets.generate"
    if not path.exists():
        raise SecretsError(f"{path} does not exist. Create it with: invoke secrets.generate")
    _require_file(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretsError(
            f"{path} is readable by other users (mode {mode:o}). Run: chmod 600 {path}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SecretsError(f"{path} is not valid YAML{where}. {fix}") from None
    except OSError as exc:
        raise SecretsError(f"{path} cannot be read ({exc.strerror}). Fix its permissions.") from exc
    except UnicodeDecodeError:
        raise SecretsError(f"{path} is not UTF-8 text. {fix}") from None
    if not isinstance(data, dict):
        raise SecretsError(f"{path} is not a mapping of key: value lines. {fix}")
    missing = [key for key in SCHEMA_KEYS if not isinstance(data.get(key), str) or not data[key]]
    if missing:
        raise SecretsError(
            f"{path} has no value for {', '.join(missing)}. Add "
            f"{'it' if len(missing) == 1 else 'them'} (see secrets/secrets.example.yml)."
        )
    unknown = sorted(map(str, set(data) - set(SCHEMA_KEYS) - set(OPERATOR_KEYS)))
    if unknown:
        raise SecretsError(
            f"{path} has unknown keys: {', '.join(unknown)}. Remove them or fix the names."
        )
    empty = [key for key in OPERATOR_KEYS if key in data and not _is_value(data[key])]
    if empty:
        raise SecretsError(
            f"{path}: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty or not a "
            "string. Give the value your provider issued, in quotes, or remove the line."
        )
    given = {key: data[key] for key in OPERATOR_KEYS if key in data}
    return {**{key: data[key] for key in SCHEMA_KEYS}, **given}


def _is_value(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _require_file(path: Path) -> None:
    if path.is_dir():
        raise SecretsError(
            f"SECRETS_FILE {path} is a directory, not a file. Set SECRETS_FILE to the "
            "secrets.yml file itself (default secrets/secrets.yml)."
        )


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, mode 0600 from the first byte.

    A temporary file in the same directory (mkstemp: 0600), fsync, rename over `path`, fsync
    of the directory: a crash leaves the old file or the new one, never a mix, and the
    content is never readable by others. The owner of an existing file is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        if path.exists() and os.geteuid() == 0:
            owner = path.stat()
            os.chown(temporary, owner.st_uid, owner.st_gid)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def rewrite_keys(settings: Settings, updates: Values) -> list[str]:
    """Give `updates`' keys their new values in secrets.yml, atomically (`write_private`).

    The one way secrets.yml is ever rewritten: an explicit rotation (DESIGN decision 7).
    The file is validated first; its leading comment lines and key order are kept. Returns
    the keys whose value changed (none: the file is left untouched)."""
    current = load(settings)
    unknown = sorted(set(updates) - set(SCHEMA_KEYS))
    if unknown:
        raise SecretsError(f"secrets.yml has no key {', '.join(unknown)}; nothing rewritten.")
    changed = [key for key, value in updates.items() if current[key] != value]
    if not changed:
        return []
    path = settings.secrets_file
    text = path.read_text(encoding="utf-8")
    header = "".join(line for line in text.splitlines(keepends=True)[: _comment_lines(text)])
    data = yaml.safe_load(text)
    data.update({key: updates[key] for key in changed})
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)
    write_private(path, header + body)
    return changed


def _comment_lines(text: str) -> int:
    count = 0
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        count += 1
    return count


# --- Docker secrets --------------------------------------------------------------------------
# Each stack's secret keys (as its stack file declares them) and how their content is made.
# `values` holds secrets.yml plus the .env tokens under `cloudflare_tunnel_token`, the
# runner's credential (ENV_FILE_TOKENS, APP_KEY_FILE) and the alert receivers' secret names;
# `env` is the environment name for dev/stg/prod.

Renderer = Callable[[Values, str], str]


def _env_value(key: str) -> Renderer:
    return lambda values, env: values[f"{env}_{key}"]


def _redis_exporter_passwords(values: Values, env: str) -> str:
    # redis_exporter reads REDIS_PASSWORD_FILE as a JSON map of target URI -> password; each
    # environment's exporter gets its own Redis only (DESIGN decision 9).
    return json.dumps({f"redis://tasks.{env}_redis:6379": values[f"{env}_redis_password"]})


def _seaweedfs_s3_config(values: Values, env: str) -> str:
    # One identity with every action; no anonymous identity, so unsigned requests are refused.
    return json.dumps(
        {
            "identities": [
                {
                    "name": "platform",
                    "credentials": [
                        {"accessKey": values["s3_access_key"], "secretKey": values["s3_secret_key"]}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        },
        indent=2,
    )


_ENVIRONMENT_SECRETS: dict[str, Renderer] = {
    "postgres_user": _env_value("postgres_user"),
    "postgres_db": _env_value("postgres_db"),
    "postgres_password": _env_value("postgres_password"),
    "redis_password": _env_value("redis_password"),
    "redis_auth_conf": lambda v, env: f'requirepass "{v[f"{env}_redis_password"]}"\n',
    "redis_exporter_passwords": _redis_exporter_passwords,
}

DOCKER_SECRETS: dict[str, dict[str, Renderer]] = {
    CORE: {
        "traefik_dashboard_users": lambda v, env: v["traefik_dashboard_htpasswd"] + "\n",
        "cloudflare_tunnel_token": lambda v, env: v["cloudflare_tunnel_token"],
    },
    **{name: _ENVIRONMENT_SECRETS for name in ENVIRONMENTS},
    SHARED: {
        "s3_config": _seaweedfs_s3_config,
        "s3_access_key": lambda v, env: v["s3_access_key"],
        "s3_secret_key": lambda v, env: v["s3_secret_key"],
        "grafana_admin_user": lambda v, env: v["grafana_admin_user"],
        "grafana_admin_password": lambda v, env: v["grafana_admin_password"],
        "n8n_encryption_key": lambda v, env: v["n8n_encryption_key"],  # no newline: n8n reads raw
        # The owner n8n creates (and re-applies) at every start: N8N_INSTANCE_OWNER_*_FILE.
        "n8n_owner_email": lambda v, env: v["n8n_user"],
        "n8n_owner_password_hash": lambda v, env: n8n_password_hash(
            v["n8n_password"], v["n8n_encryption_key"]
        ),
        # Alert receivers' credentials from .env, or a marker while a receiver is unset.
        **{
            r.secret: (lambda v, env, key=r.secret: v.get(key) or receivers.UNSET)
            for r in receivers.RECEIVERS
        },
    },
    # One of these, by the way .env registers the runners (infra/runner.py, the overlays
    # stacks/runner.<way>.yml); configs/runner/entrypoint.sh reads it.
    RUNNER: {
        "runner_access_token": lambda v, env: v["runner_access_token"],
        # Read only when the runner stack is planned: a bad key file fails that deploy alone.
        "runner_app_private_key": lambda v, env: (
            runner.read_private_key(v[APP_KEY_FILE]) if v[APP_KEY_FILE] else ""
        ),
        "runner_token": lambda v, env: v["runner_token"],
    },
}

# .env tokens handed to services as Docker secrets, by the key they take in `values`.
ENV_FILE_TOKENS = {
    "cloudflare_tunnel_token": "CLOUDFLARE_TUNNEL_TOKEN",
    "runner_access_token": "RUNNER_ACCESS_TOKEN",
    "runner_token": "RUNNER_TOKEN",
}
# The App's private key is a file: .env names it (its path, made absolute, under this key
# in `values`), and the runner_app_private_key secret is its content.
APP_KEY_FILE = "runner_app_private_key_file"


def app_key_file(settings: Settings) -> str:
    """RUNNER_APP_PRIVATE_KEY_FILE made absolute (relative to the repository), or ''."""
    key_file = settings.get("RUNNER_APP_PRIVATE_KEY_FILE")
    return str(settings.root / Path(key_file).expanduser()) if key_file else ""


def with_env_tokens(values: Values, settings: Settings) -> dict[str, str]:
    merged = dict(values)
    for key, variable in ENV_FILE_TOKENS.items():
        merged[key] = settings.get(variable)
    merged[APP_KEY_FILE] = app_key_file(settings)
    for receiver in receivers.RECEIVERS:
        merged[receiver.secret] = settings.get(receiver.credential)
    return merged


def render_secret(stack: str, key: str, values: Values) -> bytes:
    try:
        renderer = DOCKER_SECRETS[stack][key]
    except KeyError:
        raise SecretsError(
            f"stack {stack} asks for secret {key!r}, which infra/secrets.py does not define."
        ) from None
    content = renderer(values, stack)
    if not content:
        raise SecretsError(
            f"secret {key} of stack {stack} is empty. "
            f"Set {ENV_FILE_TOKENS.get(key, key)} in .env and retry."
        )
    return content.encode()


# What an application deployed into an environment (`invoke app.deploy`) is given: the
# connection details of that environment's Postgres and Redis, each a Docker secret file
# /run/secrets/<key>. Hosts and ports are no secrets, but reach the app the same way, so it
# reads one place and none of it is a plain variable of its service.
APP_SECRETS: dict[str, Renderer] = {
    "postgres_host": lambda values, env: f"tasks.{env}_postgres",
    "postgres_port": lambda values, env: "5432",
    "postgres_db": _env_value("postgres_db"),
    "postgres_user": _env_value("postgres_user"),
    "postgres_password": _env_value("postgres_password"),
    "redis_host": lambda values, env: f"tasks.{env}_redis",
    "redis_port": lambda values, env: "6379",
    "redis_password": _env_value("redis_password"),
}


def render_app_secret(env: str, key: str, values: Values) -> bytes:
    """The content of an application's secret `key` in environment `env`."""
    return APP_SECRETS[key](values, env).encode()
