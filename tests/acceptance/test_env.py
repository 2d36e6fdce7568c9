"""dev, stg, prod: Postgres with pgvector over scram-sha-256, Redis with auth and AOF."""

from __future__ import annotations

import psycopg
import pytest
import redis

from infra.catalog import ENVIRONMENTS

ENVS = list(ENVIRONMENTS)
MEMORY = {"128mb": 128 * 1024 * 1024, "256mb": 256 * 1024 * 1024}


@pytest.fixture(scope="module", params=ENVS)
def env(request, platform):
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    platform.deploy(request.param)
    return platform, ENVIRONMENTS[request.param]


def _connect(platform, environment, password=None):
    values = platform.secrets()
    name = environment.name
    return psycopg.connect(
        host="127.0.0.1",
        port=platform.port(environment.postgres_port),
        user=values[f"{name}_postgres_user"],
        password=password or values[f"{name}_postgres_password"],
        dbname=values[f"{name}_postgres_db"],
        connect_timeout=10,
    )


def test_postgres_accepts_the_generated_password_over_scram(env):
    platform, environment = env
    with _connect(platform, environment) as conn:
        method = conn.execute("SHOW password_encryption").fetchone()[0]
        assert method == "scram-sha-256"
        user = conn.execute("SELECT current_user").fetchone()[0]
        stored = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,)
        ).fetchone()[0]
        assert stored.startswith("SCRAM-SHA-256$")


def test_postgres_refuses_a_wrong_password(env):
    platform, environment = env
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(platform, environment, password="not-the-password-at-all")


def test_pgvector_nearest_neighbour(env):
    platform, environment = env
    with _connect(platform, environment) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("DROP TABLE IF EXISTS acceptance_items")
        conn.execute("CREATE TABLE acceptance_items (id int PRIMARY KEY, embedding vector(3))")
        conn.execute(
            "INSERT INTO acceptance_items VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]')"
        )
        nearest = conn.execute(
            "SELECT id FROM acceptance_items ORDER BY embedding <-> '[0.1,0.9,0]' LIMIT 1"
        ).fetchone()[0]
        assert nearest == 2
        conn.execute("DROP TABLE acceptance_items")


def test_postgres_runs_its_environment_config(env):
    platform, environment = env
    with _connect(platform, environment) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in (
                "shared_buffers",
                "max_parallel_workers_per_gather",
                "max_parallel_workers",
            )
        }
        config_file = conn.execute("SHOW config_file").fetchone()[0]
    assert config_file == "/etc/postgresql/postgresql.conf"
    if environment.name == "prod":
        assert settings == {
            "shared_buffers": "256MB",
            "max_parallel_workers_per_gather": "2",
            "max_parallel_workers": "4",
        }
    else:
        assert settings["shared_buffers"] != "256MB"


def _redis(platform, environment, password=None):
    return redis.Redis(
        host="127.0.0.1",
        port=platform.port(environment.redis_port),
        password=password,
        socket_timeout=10,
    )


def test_redis_refuses_unauthenticated_commands(env):
    platform, environment = env
    if environment.redis_port is None:
        pytest.skip(f"{environment.name} Redis publishes no port (checked by its own test)")
    with pytest.raises(redis.AuthenticationError):
        _redis(platform, environment).ping()


def test_redis_settings_match_the_environment_table(env):
    platform, environment = env
    if environment.redis_port is None:
        pytest.skip(f"{environment.name} Redis publishes no port (checked through the node)")
    password = platform.secrets()[f"{environment.name}_redis_password"]
    client = _redis(platform, environment, password)
    assert client.ping()
    config = client.config_get("*")
    assert int(config["maxmemory"]) == MEMORY[environment.redis_maxmemory]
    assert config["maxmemory-policy"] == "noeviction"
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == environment.redis_appendfsync


def test_stg_redis_publishes_no_port_but_answers_inside_the_swarm(platform):
    platform.require("REDIS_IMAGE")
    platform.deploy("stg")
    service = platform.client.services.get("stg_redis")
    assert not service.attrs["Spec"].get("EndpointSpec", {}).get("Ports")
    password = platform.secrets()["stg_redis_password"]
    task = next(t for t in service.tasks() if t["Status"]["State"] == "running")
    container = platform.client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    # REDISCLI_AUTH in the exec environment: the password is never an argument.
    exit_code, output = container.exec_run(
        ["redis-cli", "CONFIG", "GET", "maxmemory"], environment={"REDISCLI_AUTH": password}
    )
    assert exit_code == 0 and str(MEMORY["128mb"]) in output.decode()
