"""secrets.rotate against the dind swarm: the new value works, the old one is refused, the
data is still there, only the services that mount the secret roll, and the old secret
version is pruned. An interrupted rotation is finished by running the command again.

The rotations go through the command line (`invoke secrets.rotate`), with the swarm's
settings in the environment, as an operator would run them. Every test leaves dev (and
shared, when deployed here) converged, with secrets.yml holding the live passwords.
"""

from __future__ import annotations

import contextlib
import stat
import subprocess

import psycopg
import pytest
import redis
from botocore.exceptions import ClientError

from infra import engine, rotate
from infra.plan import LABEL_KEY, LABEL_STACK


@pytest.fixture(scope="module")
def dev(platform):
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    platform.deploy("dev")
    if platform.images["REDIS_EXPORTER_IMAGE"].ref:  # the exporter holds every Redis password
        platform.deploy("shared")
    return platform


def _rotate(platform, key: str) -> subprocess.CompletedProcess[str]:
    result = platform.invoke("secrets.rotate", f"--key={key}")
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr
    return result


def _versions(platform) -> dict[str, int]:
    return {service.name: service.version for service in platform.client.services.list()}


def _rolled(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {name for name in after if after[name] != before.get(name)}


def _secret_names(platform, stack: str, key: str) -> set[str]:
    return {
        s.name
        for s in platform.client.secrets.list(filters={"label": f"{LABEL_STACK}={stack}"})
        if (s.attrs["Spec"].get("Labels") or {}).get(LABEL_KEY) == key
    }


def _postgres(platform, password: str):
    values = platform.secrets()
    return psycopg.connect(
        host="127.0.0.1",
        port=platform.port(5432),
        user=values["dev_postgres_user"],
        password=password,
        dbname=values["dev_postgres_db"],
        connect_timeout=10,
        autocommit=True,
    )


def _first_row(platform, password: str, query: str):
    with _postgres(platform, password) as conn:
        return conn.execute(query).fetchone()


def _redis(platform, password: str) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=platform.port(6379), password=password, socket_timeout=10
    )


def _assert_finished(platform, result, *old_values: str) -> None:
    settings = platform.settings
    assert not rotate.pending_path(settings).exists(), "the pending record is still there"
    assert stat.S_IMODE(settings.secrets_file.stat().st_mode) == 0o600
    output = result.stdout + result.stderr
    for value in (*old_values, *platform.secrets().values()):
        if len(value) >= 20:  # the passwords and keys; names may well be printed
            assert value not in output, "a secret value was printed"


def test_postgres_password_rotation_keeps_the_data_and_rolls_only_postgres(dev):
    old = dev.secrets()["dev_postgres_password"]
    with _postgres(dev, old) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rotation_kept (note text)")
        conn.execute("DELETE FROM rotation_kept")
        conn.execute("INSERT INTO rotation_kept VALUES ('survives the rotation')")
    old_versions = _secret_names(dev, "dev", "postgres_password")
    before = _versions(dev)

    result = _rotate(dev, "dev_postgres_password")

    new = dev.secrets()["dev_postgres_password"]
    assert new != old
    row = dev.wait_for(
        lambda: _first_row(dev, new, "SELECT note FROM rotation_kept"),
        what="dev Postgres with the new password",
    )
    assert row == ("survives the rotation",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _postgres(dev, old)
    assert _rolled(before, _versions(dev)) == {"dev_postgres"} | _deployed(
        dev, "dev_postgres-exporter"
    ), result.stdout
    remaining = {s.name for s in dev.client.secrets.list()}
    assert old_versions and not old_versions & remaining, "the old secret version is still there"
    _assert_finished(dev, result, old)


def _deployed(platform, service: str) -> set[str]:
    """{service} when it runs in the swarm (it may be left out for want of an image)."""
    stack = service.split("_", 1)[0]
    return {s.name for s in engine.stack_services(platform.client, stack) if s.name == service}


def test_redis_password_rotation_keeps_the_data_and_rolls_redis_and_its_exporter(dev):
    old = dev.secrets()["dev_redis_password"]
    _redis(dev, old).set("rotation:kept", "survives the rotation")
    old_versions = (
        _secret_names(dev, "dev", "redis_password")
        | _secret_names(dev, "dev", "redis_auth_conf")
        | _secret_names(dev, "dev", "redis_exporter_passwords")
    )
    # dev's own exporter, the only other holder of the password; nothing of stack shared.
    exporter = _deployed(dev, "dev_redis-exporter")
    before = _versions(dev)

    result = _rotate(dev, "dev_redis_password")

    new = dev.secrets()["dev_redis_password"]
    assert new != old
    client = _redis(dev, new)
    assert dev.wait_for(client.ping, what="dev Redis with the new password")
    assert client.get("rotation:kept") == b"survives the rotation"
    with pytest.raises(redis.AuthenticationError, match="WRONGPASS|NOAUTH|invalid"):
        _redis(dev, old).ping()
    assert _rolled(before, _versions(dev)) == {"dev_redis"} | exporter, result.stdout
    remaining = {s.name for s in dev.client.secrets.list()}
    assert old_versions and not old_versions & remaining, "old secret versions are still there"
    _assert_finished(dev, result, old)


def test_an_interrupted_rotation_is_finished_by_running_it_again(dev):
    settings = dev.settings
    old = dev.secrets()["dev_postgres_password"]
    with _postgres(dev, old) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rotation_interrupted (note text)")
        conn.execute("DELETE FROM rotation_interrupted")
        conn.execute("INSERT INTO rotation_interrupted VALUES ('survives an interruption')")
    # Interrupted right after the live change: Postgres has the new password, secrets.yml
    # and the Docker secret still the old one.
    pending = rotate.begin(settings, "dev_postgres_password", report=print)
    rotate.apply_live(settings, rotate.Services(dev.client), pending, report=print)
    new = pending.new["dev_postgres_password"]
    assert dev.secrets()["dev_postgres_password"] == old
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _postgres(dev, old)
    before = _versions(dev)

    result = _rotate(dev, "dev_postgres_password")

    assert "resuming the interrupted rotation" in result.stdout
    assert "already accepts the new password" in result.stdout
    assert dev.secrets()["dev_postgres_password"] == new
    row = dev.wait_for(
        lambda: _first_row(dev, new, "SELECT note FROM rotation_interrupted"),
        what="dev Postgres with the new password",
    )
    assert row == ("survives an interruption",)
    assert _rolled(before, _versions(dev)) == {"dev_postgres"} | _deployed(
        dev, "dev_postgres-exporter"
    ), result.stdout
    _assert_finished(dev, result, old)


def test_s3_secret_key_rotation_keeps_the_objects_and_rolls_only_the_store(dev):
    dev.require("SEAWEEDFS_IMAGE")
    dev.deploy("shared")
    values = dev.secrets()
    access, old = values["s3_access_key"], values["s3_secret_key"]

    def put_object():
        client = dev.s3(access, old)
        with contextlib.suppress(ClientError):
            client.create_bucket(Bucket="rotation")
        client.put_object(Bucket="rotation", Key="kept.txt", Body=b"survives the rotation")
        return True

    dev.wait_for(put_object, what="the S3 store to take an object through Traefik")
    old_versions = _secret_names(dev, "shared", "s3_config")
    users = {
        s.name
        for s in dev.client.services.list()
        for ref in s.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or []
        if ref["SecretName"] in old_versions
    }
    before = _versions(dev)

    result = _rotate(dev, "s3_secret_key")

    new = dev.secrets()["s3_secret_key"]
    assert new != old
    body = dev.wait_for(
        lambda: dev.s3(access, new).get_object(Bucket="rotation", Key="kept.txt")["Body"].read(),
        what="the S3 store with the new secret key",
    )
    assert body == b"survives the rotation"
    with pytest.raises(ClientError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        dev.s3(access, old).get_object(Bucket="rotation", Key="kept.txt")
    assert users and _rolled(before, _versions(dev)) == users, result.stdout
    remaining = {s.name for s in dev.client.secrets.list()}
    assert old_versions and not old_versions & remaining, "the old secret version is still there"
    _assert_finished(dev, result, old)


def test_grafana_admin_password_rotation_is_live_and_refuses_the_old_one(dev):
    dev.require("GRAFANA_IMAGE")
    dev.deploy("shared")
    values = dev.secrets()
    user, old = values["grafana_admin_user"], values["grafana_admin_password"]
    dev.wait_for(
        lambda: dev.web("grafana.localhost", "/api/user", auth=(user, old)).status_code == 200,
        what="Grafana to accept the admin password",
    )

    result = _rotate(dev, "grafana_admin_password")

    new = dev.secrets()["grafana_admin_password"]
    assert new != old
    assert dev.web("grafana.localhost", "/api/user", auth=(user, new)).status_code == 200
    assert dev.web("grafana.localhost", "/api/user", auth=(user, old)).status_code == 401
    _assert_finished(dev, result, old)


def rotate_n8n_password(platform) -> subprocess.CompletedProcess[str]:
    """Once n8n accepts the owner password of secrets.yml, rotate it: the new one logs in
    through Traefik, the old one is refused, and no value was printed."""
    values = platform.secrets()
    user, old = values["n8n_user"], values["n8n_password"]
    platform.wait_for(
        lambda: platform.n8n_login(user, old).status_code == 200,
        timeout=180,
        what="n8n to accept the owner password of secrets.yml",
    )
    result = _rotate(platform, "n8n_password")
    new = platform.secrets()["n8n_password"]
    assert new != old
    assert platform.n8n_login(user, new).status_code == 200
    assert platform.n8n_login(user, old).status_code == 401
    _assert_finished(platform, result, old)
    return result


def test_n8n_password_rotation_restarts_n8n_onto_the_new_owner_password(dev):
    dev.require("TRAEFIK_IMAGE")
    dev.require("N8N_IMAGE")
    dev.deploy("core")
    dev.deploy("shared")
    before = _versions(dev)
    result = rotate_n8n_password(dev)
    assert _rolled(before, _versions(dev)) == {"shared_n8n"}, result.stdout
