"""secrets.rotate against the dind swarm: the new value works, the old one is refused, the
data is still there, only the services that mount the secret roll, and the old secret
version is pruned. An interrupted rotation is finished by running the command again.

The rotations go through the command line (`invoke secrets.rotate`), with the swarm's
settings in the environment, as an operator would run them. Every test leaves dev (and
shared, when deployed here) converged, with secrets.yml holding the live passwords.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys

import boto3
import psycopg
import pytest
import redis
from botocore.client import Config
from botocore.exceptions import ClientError

from infra import engine, rotate
from infra.catalog import CORE_PORTS
from infra.plan import LABEL_KEY, LABEL_STACK
from infra.settings import REPO_ROOT, load_settings


@pytest.fixture(scope="module")
def dev(platform):
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    platform.deploy("dev")
    if platform.images["REDIS_EXPORTER_IMAGE"].ref:  # the exporter holds every Redis password
        platform.deploy("shared")
    return platform


def _environ(platform) -> dict[str, str]:
    """The process environment that gives the command line the swarm's settings."""
    settings = platform.settings
    environ = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    environ.update(
        {
            "ENV_FILE": str(settings.env_file),
            "DATA_ROOT": str(settings.data_root),
            "SECRETS_FILE": str(settings.secrets_file),
            "DOCKER_HOST": settings.docker_host,
            "RESOLVE_IMAGE": settings.get("RESOLVE_IMAGE"),
            "DISABLED_SERVICES": settings.get("DISABLED_SERVICES"),
            **settings.images,
        }
    )
    same = load_settings(environ=environ)
    assert (same.images, same.disabled_services) == (settings.images, settings.disabled_services)
    return environ


def _rotate(platform, key: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT)]
        + ["secrets.rotate", f"--key={key}"],
        env=_environ(platform),
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
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
    assert _rolled(before, _versions(dev)) == {"dev_postgres"}, result.stdout
    remaining = {s.name for s in dev.client.secrets.list()}
    assert old_versions and not old_versions & remaining, "the old secret version is still there"
    _assert_finished(dev, result, old)


def test_redis_password_rotation_keeps_the_data_and_rolls_redis_and_its_exporter(dev):
    old = dev.secrets()["dev_redis_password"]
    _redis(dev, old).set("rotation:kept", "survives the rotation")
    old_versions = _secret_names(dev, "dev", "redis_password") | _secret_names(
        dev, "dev", "redis_auth_conf"
    )
    exporter = {
        s.name
        for s in engine.stack_services(dev.client, "shared")
        if s.name == "shared_redis-exporter"
    }
    if exporter:
        old_versions |= _secret_names(dev, "shared", "redis_exporter_passwords")
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
    assert _rolled(before, _versions(dev)) == {"dev_postgres"}, result.stdout
    _assert_finished(dev, result, old)


def _s3(platform, access_key: str, secret_key: str):
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{platform.port(CORE_PORTS['web'])}",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}
        ),
    )

    def route_by_host(request, **_):
        request.headers["Host"] = "s3.localhost"  # Traefik routes on it; SigV4 signs it

    client.meta.events.register("before-sign.s3", route_by_host)
    return client


def test_s3_secret_key_rotation_keeps_the_objects_and_rolls_only_the_store(dev):
    dev.require("SEAWEEDFS_IMAGE")
    dev.deploy("shared")
    values = dev.secrets()
    access, old = values["s3_access_key"], values["s3_secret_key"]

    def put_object():
        client = _s3(dev, access, old)
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
        lambda: _s3(dev, access, new).get_object(Bucket="rotation", Key="kept.txt")["Body"].read(),
        what="the S3 store with the new secret key",
    )
    assert body == b"survives the rotation"
    with pytest.raises(ClientError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        _s3(dev, access, old).get_object(Bucket="rotation", Key="kept.txt")
    assert users and _rolled(before, _versions(dev)) == users, result.stdout
    remaining = {s.name for s in dev.client.secrets.list()}
    assert old_versions and not old_versions & remaining, "the old secret version is still there"
    _assert_finished(dev, result, old)
