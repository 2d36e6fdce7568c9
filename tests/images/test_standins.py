"""Contract tests: each stand-in honours the part of its upstream image's contract that our
stacks rely on (tests/images/README.md, /work/shared/reference/upstream-images.md).

Run against the local Docker engine after `python -m tests.images.build`. A stand-in that is not
built skips (fails when CI=true). Ports are published on 127.0.0.1 only, on free ports."""

from __future__ import annotations

import base64
import json
import secrets
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
import yaml

from . import dind
from .conftest import (
    LABELS,
    REPO,
    exec_ok,
    host_port,
    loopback,
    process_uid,
    put_files,
    repo_file,
    unavailable,
    wait_for,
)


def http_status(url: str, method: str = "GET", timeout: float = 5) -> int:
    assert url.startswith("http://127.0.0.1:"), url
    request = urllib.request.Request(url, method=method)  # noqa: S310 (loopback http only)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def secret(value: str) -> tuple[bytes, int]:
    """A file as Swarm mounts a secret: world-readable, no trailing newline."""
    return value.encode(), 0o444


# ---------------------------------------------------------------------------------------------
# postgres (pgvector/pgvector:pg17 contract = postgres:17's)

PG_USER, PG_DB = "app", "appdb"
PG_PASSWORD = secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def postgres(standin, containers):
    """One server, initialised from *_FILE secrets and two initdb scripts, with a data volume."""
    psycopg = pytest.importorskip(
        "psycopg", reason="psycopg 3 is needed: pip install 'psycopg[binary]'"
    )
    files = {
        "/run/secrets/postgres_user": secret(PG_USER),
        "/run/secrets/postgres_db": secret(PG_DB),
        "/run/secrets/postgres_password": secret(PG_PASSWORD),
        "/docker-entrypoint-initdb.d/10-table.sql": (
            b"CREATE TABLE initdb_runs (script text, ran_at timestamptz DEFAULT now());\n"
            b"INSERT INTO initdb_runs (script) VALUES ('sql');\n",
            0o644,
        ),
        # Not executable: sourced, so it can use the entrypoint's docker_process_sql.
        "/docker-entrypoint-initdb.d/20-mark.sh": (
            b"docker_process_sql <<'EOSQL'\n"
            b"INSERT INTO initdb_runs (script) VALUES ('sh');\n"
            b"EOSQL\n",
            0o644,
        ),
    }
    container = containers.run(
        standin("postgres"),
        command=["postgres", "-c", "max_connections=42"],
        environment={
            "POSTGRES_USER_FILE": "/run/secrets/postgres_user",
            "POSTGRES_DB_FILE": "/run/secrets/postgres_db",
            "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres_password",
        },
        volumes={containers.volume("pgdata"): {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
        ports=loopback("5432/tcp"),
        files=files,
        detach=True,
    )

    def connect(password: str = PG_PASSWORD):
        return psycopg.connect(
            host="127.0.0.1",
            port=host_port(container, "5432/tcp"),
            user=PG_USER,
            password=password,
            dbname=PG_DB,
            connect_timeout=5,
            autocommit=True,
        )

    wait_for(
        lambda: connect().close() or True,
        timeout=90,
        what="postgres to accept TCP logins",
        container=container,
    )
    return container, connect


def test_postgres_accepts_scram_login_with_password_file(postgres):
    _, connect = postgres
    with connect() as connection:
        user = connection.execute("SELECT current_user, current_database()").fetchone()
        host_rule = connection.execute(
            "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' AND address = 'all'"
        ).fetchall()
        stored = connection.execute(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = current_user"
        ).fetchone()
    assert user == (PG_USER, PG_DB)
    assert host_rule == [("scram-sha-256",)]
    assert stored == (True,)


def test_postgres_refuses_wrong_password(postgres):
    import psycopg

    _, connect = postgres
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(password=PG_PASSWORD + "-wrong")


def test_postgres_runs_pgvector_nearest_neighbour(postgres):
    _, connect = postgres
    with connect() as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        connection.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
        connection.execute(
            "INSERT INTO items VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]')"
        )
        nearest = connection.execute(
            "SELECT id FROM items ORDER BY embedding <-> '[0.1,0.9,0.1]' LIMIT 1"
        ).fetchone()
    assert nearest == (2,)


def test_postgres_passes_arguments_to_the_server(postgres):
    _, connect = postgres
    with connect() as connection:
        assert connection.execute("SHOW max_connections").fetchone() == ("42",)


def test_postgres_server_runs_as_uid_999(postgres):
    container, _ = postgres
    assert process_uid(container) == 999


def test_postgres_keeps_data_and_skips_initdb_scripts_after_restart(postgres):
    container, connect = postgres
    with connect() as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS survives (value text)")
        connection.execute("INSERT INTO survives VALUES ('before restart')")
    container.restart(timeout=30)
    wait_for(
        lambda: connect().close() or True,
        timeout=60,
        what="postgres after restart",
        container=container,
    )
    with connect() as connection:
        runs = connection.execute(
            "SELECT script, count(*) FROM initdb_runs GROUP BY script ORDER BY script"
        ).fetchall()
        kept = connection.execute("SELECT value FROM survives").fetchall()
    assert runs == [("sh", 1), ("sql", 1)]
    assert kept == [("before restart",)]
    assert b"Skipping initialization" in container.logs()


def test_postgres_rejects_password_and_password_file_together(standin, containers):
    container = containers.run(
        standin("postgres"),
        environment={
            "POSTGRES_PASSWORD": "a",
            "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres_password",
        },
        files={"/run/secrets/postgres_password": secret("b")},
        detach=True,
    )
    result = container.wait(timeout=60)
    assert result["StatusCode"] == 1
    assert b"both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set" in container.logs()


def test_postgres_runs_with_our_config_files(standin, containers):
    """As stacks/env.yml runs it: config_file and hba_file from configs/postgres (scram even on
    the local socket), the pgvector initdb script, *_FILE secrets, the TCP health check."""
    psycopg = pytest.importorskip(
        "psycopg", reason="psycopg 3 is needed: pip install 'psycopg[binary]'"
    )
    conf = repo_file("configs/postgres/postgresql.conf")
    hba = repo_file("configs/postgres/pg_hba.conf")
    vector = repo_file("configs/postgres/initdb/10-vector.sql")
    container = containers.run(
        standin("postgres"),
        command=[
            "postgres",
            "-c",
            "config_file=/etc/postgresql/postgresql.conf",
            "-c",
            "hba_file=/etc/postgresql/pg_hba.conf",
        ],
        environment={
            "POSTGRES_USER_FILE": "/run/secrets/postgres_user",
            "POSTGRES_DB_FILE": "/run/secrets/postgres_db",
            "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres_password",
        },
        files={
            "/run/secrets/postgres_user": secret(PG_USER),
            "/run/secrets/postgres_db": secret(PG_DB),
            "/run/secrets/postgres_password": secret(PG_PASSWORD),
            "/etc/postgresql/postgresql.conf": (conf.read_bytes(), 0o444),
            "/etc/postgresql/pg_hba.conf": (hba.read_bytes(), 0o444),
            "/docker-entrypoint-initdb.d/10-vector.sql": (vector.read_bytes(), 0o444),
        },
        ports=loopback("5432/tcp"),
        detach=True,
    )
    healthcheck = [
        "sh",
        "-c",
        'pg_isready -q -h 127.0.0.1 -p 5432 -U "$(cat /run/secrets/postgres_user)" '
        '-d "$(cat /run/secrets/postgres_db)"',
    ]
    wait_for(
        lambda: container.exec_run(healthcheck).exit_code == 0,
        timeout=90,
        what="the stack's pg_isready health check",
        container=container,
    )
    with psycopg.connect(
        host="127.0.0.1",
        port=host_port(container, "5432/tcp"),
        user=PG_USER,
        password=PG_PASSWORD,
        dbname=PG_DB,
        connect_timeout=5,
    ) as connection:
        extensions = [row[0] for row in connection.execute("SELECT extname FROM pg_extension")]
        hba_file = connection.execute("SHOW hba_file").fetchone()[0]
    assert "vector" in extensions
    assert hba_file == "/etc/postgresql/pg_hba.conf"
    socket_login = container.exec_run(["psql", "-U", PG_USER, "-d", PG_DB, "-w", "-c", "SELECT 1"])
    assert socket_login.exit_code != 0, (
        "the local socket should require a password with our pg_hba.conf"
    )


# ---------------------------------------------------------------------------------------------
# redis (redis:7.4)

REDIS_PASSWORD = secrets.token_urlsafe(18)
REDIS_CONF = b"include /run/secrets/redis_auth_conf\nappendonly yes\nappendfsync always\n"


@pytest.fixture(scope="module")
def redis(standin, containers):
    """Redis started as our env stack does: a config file that includes the password secret."""
    container = containers.run(
        standin("redis"),
        command=["redis-server", "/usr/local/etc/redis/redis.conf"],
        files={
            "/usr/local/etc/redis/redis.conf": (REDIS_CONF, 0o444),
            "/run/secrets/redis_auth_conf": secret(f'requirepass "{REDIS_PASSWORD}"'),
        },
        volumes={containers.volume("redisdata"): {"bind": "/data", "mode": "rw"}},
        detach=True,
    )
    wait_for(
        lambda: b"Ready to accept connections" in container.logs(),
        timeout=30,
        what="redis to start",
        container=container,
    )
    return container


def redis_cli(container, *command: str, password: str | None = None) -> str:
    environment = {"REDISCLI_AUTH": password} if password else None
    return exec_ok(container, ["redis-cli", *command], environment=environment).strip()


def test_redis_refuses_commands_without_password(redis):
    assert "NOAUTH" in redis_cli(redis, "SET", "key", "value")


def test_redis_accepts_the_password_from_its_config(redis):
    assert redis_cli(redis, "PING", password=REDIS_PASSWORD) == "PONG"


def test_redis_writes_its_append_only_file_under_data(redis):
    assert redis_cli(redis, "SET", "persisted", "yes", password=REDIS_PASSWORD) == "OK"
    listing = exec_ok(redis, ["sh", "-c", "stat -c '%U %n' /data/appendonlydir/*"])
    assert ".aof" in listing
    assert all(line.startswith("redis ") for line in listing.splitlines()), listing


def test_redis_server_runs_as_uid_999(redis):
    assert process_uid(redis) == 999


def test_redis_protected_mode_is_off_without_a_config(standin, containers):
    container = containers.run(standin("redis"), detach=True)
    wait_for(
        lambda: b"Ready to accept connections" in container.logs(),
        timeout=30,
        what="redis to start",
        container=container,
    )
    assert redis_cli(container, "CONFIG", "GET", "protected-mode").split() == [
        "protected-mode",
        "no",
    ]


def test_redis_config_file_can_turn_protected_mode_on(standin, containers):
    container = containers.run(
        standin("redis"),
        command=["/usr/local/etc/redis/redis.conf"],  # a *.conf first argument gets redis-server
        files={"/usr/local/etc/redis/redis.conf": (b"protected-mode yes\n", 0o444)},
        detach=True,
    )
    wait_for(
        lambda: b"Ready to accept connections" in container.logs(),
        timeout=30,
        what="redis to start",
        container=container,
    )
    assert redis_cli(container, "CONFIG", "GET", "protected-mode").split() == [
        "protected-mode",
        "yes",
    ]


def test_redis_runs_with_our_config_file(standin, containers):
    """As stacks/env.yml runs it: configs/redis/redis.conf (protected-mode yes, AOF, the
    password included from a secret), per-environment arguments, the stack's health check."""
    conf = repo_file("configs/redis/redis.conf")
    container = containers.run(
        standin("redis"),
        command=[
            "redis-server",
            "/usr/local/etc/redis/redis.conf",
            "--maxmemory",
            "128mb",
            "--appendfsync",
            "everysec",
        ],
        files={
            "/usr/local/etc/redis/redis.conf": (conf.read_bytes(), 0o444),
            "/run/secrets/redis_auth_conf": secret(f'requirepass "{REDIS_PASSWORD}"'),
            "/run/secrets/redis_password": secret(REDIS_PASSWORD),
        },
        volumes={containers.volume("redisours"): {"bind": "/data", "mode": "rw"}},
        detach=True,
    )
    healthcheck = [
        "sh",
        "-c",
        'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli ping | grep -q PONG',
    ]
    wait_for(
        lambda: container.exec_run(healthcheck).exit_code == 0,
        timeout=30,
        what="the stack's redis health check",
        container=container,
    )
    assert "NOAUTH" in redis_cli(container, "GET", "anything")
    assert redis_cli(container, "CONFIG", "GET", "maxmemory", password=REDIS_PASSWORD).split() == [
        "maxmemory",
        "134217728",
    ]
    assert process_uid(container) == 999


# ---------------------------------------------------------------------------------------------
# prometheus (prom/prometheus)


def test_prometheus_accepts_our_config(standin, docker_client):
    config_dir = repo_file("configs/prometheus/prometheus.yml").parent
    files = {
        f"/etc/prometheus/{p.relative_to(config_dir)}": (p.read_bytes(), 0o444)
        for p in config_dir.rglob("*")
        if p.is_file()
    }
    image = standin("prometheus")
    container = docker_client.containers.create(
        image,
        entrypoint=["/bin/promtool"],
        command=["check", "config", "/etc/prometheus/prometheus.yml"],
        labels={"org.nextcandle.test": "standin-contract"},
    )
    try:
        put_files(container, files)
        container.start()
        code = container.wait(timeout=60)["StatusCode"]
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert code == 0, f"promtool check config failed:\n{output}"


def test_prometheus_answers_healthy_as_nobody(standin, containers):
    container = containers.run(standin("prometheus"), ports=loopback("9090/tcp"), detach=True)
    url = f"http://127.0.0.1:{host_port(container, '9090/tcp')}/-/healthy"
    wait_for(
        lambda: http_status(url) == 200,
        timeout=60,
        what="prometheus /-/healthy",
        container=container,
    )
    assert process_uid(container) == 65534
    # The stack's health check.
    exec_ok(container, ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/-/healthy"])


def test_prometheus_runs_our_config_with_our_flags(standin, containers):
    config = repo_file("configs/prometheus/prometheus.yml")
    container = containers.run(
        standin("prometheus"),
        command=[
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            "--storage.tsdb.retention.time=15d",
        ],
        files={"/etc/prometheus/prometheus.yml": (config.read_bytes(), 0o444)},
        ports=loopback("9090/tcp"),
        detach=True,
    )
    url = f"http://127.0.0.1:{host_port(container, '9090/tcp')}/-/ready"
    wait_for(
        lambda: http_status(url) == 200,
        timeout=60,
        what="prometheus /-/ready with our config",
        container=container,
    )


def test_node_exporter_serves_metrics_as_nobody(standin, containers):
    container = containers.run(standin("node-exporter"), ports=loopback("9100/tcp"), detach=True)
    url = f"http://127.0.0.1:{host_port(container, '9100/tcp')}/metrics"
    wait_for(
        lambda: http_status(url) == 200,
        timeout=30,
        what="node-exporter /metrics",
        container=container,
    )
    assert process_uid(container) == 65534
    exec_ok(
        container, ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9100/"]
    )  # the stack's health check


def http_text(url: str) -> str:
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback http only)
        return response.read().decode()


def test_redis_exporter_finds_passwords_in_a_json_map_file(standin, containers, redis):
    """As stacks/shared.yml runs it: no default instance (--redis.addr=), the password map in
    REDIS_PASSWORD_FILE, Redis scraped through /scrape?target=."""
    redis.reload()
    address = f"redis://{redis.attrs['NetworkSettings']['IPAddress']}:6379"
    passwords = {address: REDIS_PASSWORD, "redis://tasks.stg_redis:6379": "other"}
    container = containers.run(
        standin("redis-exporter"),
        command=["--redis.addr="],
        environment={"REDIS_PASSWORD_FILE": "/run/secrets/redis_exporter_passwords"},
        files={"/run/secrets/redis_exporter_passwords": secret(json.dumps(passwords))},
        ports=loopback("9121/tcp"),
        detach=True,
    )
    base = f"http://127.0.0.1:{host_port(container, '9121/tcp')}"
    wait_for(
        lambda: http_status(f"{base}/metrics") == 200,
        timeout=30,
        what="redis-exporter /metrics",
        container=container,
    )
    scraped = http_text(f"{base}/scrape?target={urllib.parse.quote(address, safe='')}")
    assert "\nredis_up 1\n" in scraped, scraped[-2000:]
    assert process_uid(container) == 59000


# ---------------------------------------------------------------------------------------------
# postgres-exporter (quay.io/prometheuscommunity/postgres-exporter), against the postgres stand-in

EXPORTER_PG_MAX_CONNECTIONS = "37"


def http_metrics(url: str) -> dict[str, list[str]]:
    """Prometheus text exposition -> {metric name: [sample lines]}."""
    samples: dict[str, list[str]] = {}
    for line in http_text(url).splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            samples.setdefault(name, []).append(line)
    return samples


@pytest.fixture(scope="module")
def postgres_for_exporter(standin, containers):
    """A postgres stand-in on its own network, reached by the exporter by container name."""
    network = containers.network("pgexporter")
    server = containers.run(
        standin("postgres"),
        command=["postgres", "-c", f"max_connections={EXPORTER_PG_MAX_CONNECTIONS}"],
        environment={
            "POSTGRES_USER": PG_USER,
            "POSTGRES_DB": PG_DB,
            "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres_password",
        },
        files={"/run/secrets/postgres_password": secret(PG_PASSWORD)},
        network=network,
        detach=True,
    )
    ready = ["pg_isready", "-q", "-h", "127.0.0.1", "-U", PG_USER]
    wait_for(
        lambda: server.exec_run(ready).exit_code == 0,
        timeout=90,
        what="postgres to listen on TCP",
        container=server,
    )
    return server, network


def start_postgres_exporter(standin, containers, postgres_for_exporter, password_file: bytes):
    """The exporter as the env stack runs it: URI and user in the environment, the password
    only in DATA_SOURCE_PASS_FILE."""
    server, network = postgres_for_exporter
    container = containers.run(
        standin("postgres-exporter"),
        environment={
            "DATA_SOURCE_URI": f"{server.name}:5432/{PG_DB}?sslmode=disable",
            "DATA_SOURCE_USER": PG_USER,
            "DATA_SOURCE_PASS_FILE": "/run/secrets/postgres_password",
        },
        files={"/run/secrets/postgres_password": (password_file, 0o444)},
        network=network,
        ports=loopback("9187/tcp"),
        detach=True,
    )
    url = f"http://127.0.0.1:{host_port(container, '9187/tcp')}/metrics"
    wait_for(
        lambda: http_status(url) == 200,
        timeout=30,
        what="postgres-exporter /metrics",
        container=container,
    )
    return container, url


@pytest.fixture(scope="module")
def postgres_exporter(standin, containers, postgres_for_exporter):
    # A trailing newline, as `echo pw > file` leaves it: the exporter trims the file.
    return start_postgres_exporter(
        standin, containers, postgres_for_exporter, (PG_PASSWORD + "\n").encode()
    )


def test_postgres_exporter_logs_in_with_the_password_file(postgres_exporter):
    _, url = postgres_exporter
    assert http_metrics(url)["pg_up"] == ["pg_up 1"]


def test_postgres_exporter_reports_pg_up_0_with_a_wrong_password(
    standin, containers, postgres_for_exporter
):
    _, url = start_postgres_exporter(
        standin, containers, postgres_for_exporter, (PG_PASSWORD + "-wrong").encode()
    )
    assert http_metrics(url)["pg_up"] == ["pg_up 0"]


def test_postgres_exporter_reads_settings_of_the_server_it_scrapes(postgres_exporter):
    _, url = postgres_exporter
    samples = http_metrics(url)["pg_settings_max_connections"]
    assert [sample.rsplit(" ", 1)[1] for sample in samples] == [EXPORTER_PG_MAX_CONNECTIONS]


# What the Postgres dashboard and alert rules read, all served by default in v0.17.1: pg_up and
# pg_stat_activity_* (the exporter's built-in queries), pg_settings_*, and the database, locks
# and stat_database collectors (enabled by default; postmaster and stat_checkpointer are not).
DEFAULT_POSTGRES_METRICS = [
    "pg_up",
    "pg_stat_activity_count",
    "pg_stat_activity_max_tx_duration",
    "pg_settings_max_connections",
    "pg_settings_superuser_reserved_connections",
    "pg_stat_database_numbackends",
    "pg_stat_database_xact_commit",
    "pg_stat_database_xact_rollback",
    "pg_stat_database_blks_hit",
    "pg_stat_database_blks_read",
    "pg_stat_database_deadlocks",
    "pg_database_size_bytes",
    "pg_locks_count",
]


@pytest.mark.parametrize("metric", DEFAULT_POSTGRES_METRICS, ids=str)
def test_postgres_exporter_serves_by_default(postgres_exporter, metric):
    _, url = postgres_exporter
    assert metric in http_metrics(url)


def test_postgres_exporter_runs_as_nobody_with_a_wget_health_check(postgres_exporter):
    container, _ = postgres_exporter
    assert process_uid(container) == 65534
    # The landing page answers without querying Postgres.
    exec_ok(container, ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9187/"])


# ---------------------------------------------------------------------------------------------
# alertmanager (prom/alertmanager)


def http_json(url: str, payload=None, timeout: float = 5):
    """GET (or POST `payload` as JSON) and decode the JSON answer."""
    assert url.startswith("http://127.0.0.1:"), url
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(  # noqa: S310 (loopback http only)
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body = response.read()
    return json.loads(body) if body else None


def start_alertmanager(standin, containers, *, command=None, files=None):
    container = containers.run(
        standin("alertmanager"),
        command=command,
        files=files,
        ports=loopback("9093/tcp"),
        detach=True,
    )
    base = f"http://127.0.0.1:{host_port(container, '9093/tcp')}"
    wait_for(
        lambda: http_status(f"{base}/-/ready") == 200,
        timeout=60,
        what="alertmanager /-/ready",
        container=container,
    )
    return container, base


@pytest.fixture(scope="module")
def alertmanager(standin, containers):
    """Alertmanager as the image starts it: its CMD and the config the image ships."""
    return start_alertmanager(standin, containers)


def post_alert(base: str, **labels: str) -> dict[str, str]:
    labels = {"alertname": "StandinContract", "severity": "warning", **labels}
    http_json(
        f"{base}/api/v2/alerts",
        [{"labels": labels, "annotations": {"summary": "contract test of the stand-in"}}],
    )
    return labels


def test_alertmanager_keeps_a_posted_alert_and_lists_it(alertmanager):
    _, base = alertmanager
    marker = uuid.uuid4().hex
    post_alert(base, test_id=marker)
    query = urllib.parse.quote(f'test_id="{marker}"')
    alerts = http_json(f"{base}/api/v2/alerts?filter={query}")
    assert [(a["labels"]["alertname"], a["status"]["state"]) for a in alerts] == [
        ("StandinContract", "active")
    ]


def test_alertmanager_runs_the_config_the_image_ships_as_nobody(alertmanager):
    container, base = alertmanager
    status = http_json(f"{base}/api/v2/status")
    assert "name: web.hook" in status["config"]["original"]
    assert process_uid(container) == 65534
    # The stack's health check.
    exec_ok(container, ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9093/-/healthy"])


def test_alertmanager_keeps_data_in_its_volume_with_upstream_defaults(standin, containers):
    """A stack `command:` replaces the CMD; without --storage.path upstream's binary writes to
    data/ under its working directory /alertmanager (the volume), and so must the stand-in."""
    container, _ = start_alertmanager(
        standin,
        containers,
        command=["--config.file=/etc/alertmanager/alertmanager.yml", "--cluster.listen-address="],
    )
    container.stop(timeout=30)  # Alertmanager writes its snapshots on shutdown
    container.start()
    listing = exec_ok(container, ["ls", "/alertmanager/data"]).split()
    assert {"nflog", "silences"} <= set(listing)


# The receivers' *_file options the platform uses (Docker secrets), each as a receiver of its own.
SECRET = "/run/secrets/alertmanager_credential"
RECEIVERS_WITH_FILES = {
    "webhook_configs-url_file": {"webhook_configs": [{"url_file": SECRET}]},
    "slack_configs-api_url_file": {
        "slack_configs": [{"api_url_file": SECRET, "channel": "#alerts"}]
    },
    "telegram_configs-bot_token_file": {
        "telegram_configs": [{"bot_token_file": SECRET, "chat_id": 42}]
    },
    "email_configs-auth_password_file": {
        "email_configs": [
            {
                "to": "ops@example.org",
                "from": "alertmanager@example.org",
                "smarthost": "smtp.example.org:587",
                "auth_username": "alertmanager",
                "auth_password_file": SECRET,
            }
        ]
    },
}
GLOBALS_WITH_FILES = {
    "global-slack_api_url_file": (
        {"slack_api_url_file": SECRET},
        {"slack_configs": [{"channel": "#alerts"}]},
    ),
    "global-smtp_auth_password_file": (
        {
            "smtp_smarthost": "smtp.example.org:587",
            "smtp_from": "alertmanager@example.org",
            "smtp_auth_username": "alertmanager",
            "smtp_auth_password_file": SECRET,
        },
        {"email_configs": [{"to": "ops@example.org"}]},
    ),
}


def alertmanager_config(receiver: dict, global_: dict | None = None, **route) -> bytes:
    config = {
        "route": {"receiver": "team", **route},
        "receivers": [{"name": "team", **receiver}],
    }
    if global_:
        config["global"] = global_
    return yaml.safe_dump(config, sort_keys=False).encode()


def amtool_check_config(container, config: bytes):
    put_files(
        container,
        {"/tmp/check.yml": (config, 0o444), SECRET: secret("credential-from-a-secret")},
    )
    return container.exec_run(["amtool", "check-config", "/tmp/check.yml"])


@pytest.mark.parametrize(
    "receiver", list(RECEIVERS_WITH_FILES.values()), ids=list(RECEIVERS_WITH_FILES)
)
def test_alertmanager_amtool_accepts_a_receiver_credential_file(alertmanager, receiver):
    container, _ = alertmanager
    code, output = amtool_check_config(container, alertmanager_config(receiver))
    assert code == 0, output.decode(errors="replace")


@pytest.mark.parametrize(
    ("global_", "receiver"), list(GLOBALS_WITH_FILES.values()), ids=list(GLOBALS_WITH_FILES)
)
def test_alertmanager_amtool_accepts_a_global_credential_file(alertmanager, global_, receiver):
    container, _ = alertmanager
    code, output = amtool_check_config(container, alertmanager_config(receiver, global_))
    assert code == 0, output.decode(errors="replace")


@pytest.mark.parametrize(
    ("receiver", "complaint"),
    [
        # The JSON name of bot_token_file; YAML knows only bot_token_file.
        ({"telegram_configs": [{"token_file": SECRET, "chat_id": 42}]}, b"token_file"),
        (
            {"webhook_configs": [{"url": "http://127.0.0.1:5001/", "url_file": SECRET}]},
            b"at most one of url & url_file",
        ),
    ],
    ids=["unknown-option", "url-and-url_file"],
)
def test_alertmanager_amtool_refuses_a_wrong_credential_option(alertmanager, receiver, complaint):
    container, _ = alertmanager
    code, output = amtool_check_config(container, alertmanager_config(receiver))
    assert code != 0 and complaint in output, output.decode(errors="replace")


# A minimal SMTP server for busybox `nc -e`: it logs what the client says and accepts it all.
SMTP_SERVER = b"""#!/bin/sh
cr=$(printf '\\r')
printf '220 standin ESMTP\\r\\n'
while IFS= read -r line; do
    line=${line%"$cr"}
    echo "$line" >> /tmp/received
    case $line in
        EHLO* | HELO*) printf '250-standin\\r\\n250 AUTH PLAIN\\r\\n' ;;
        AUTH*) printf '235 2.7.0 accepted\\r\\n' ;;
        DATA)
            printf '354 go on\\r\\n'
            while IFS= read -r body; do [ "${body%"$cr"}" = . ] && break; done
            printf '250 queued\\r\\n' ;;
        QUIT) printf '221 bye\\r\\n'; exit 0 ;;
        *) printf '250 ok\\r\\n' ;;
    esac
done
"""
LISTENER = "127.0.0.1:5001"
DELIVERIES = {
    # receiver, the secret file (with the newline `echo` leaves), what the listener must see
    "webhook-url_file": (
        {"webhook_configs": [{"url_file": SECRET}]},
        f"http://{LISTENER}/hook-from-the-file\n",
        "POST /hook-from-the-file HTTP/1.1",
    ),
    "slack-api_url_file": (
        {"slack_configs": [{"api_url_file": SECRET, "channel": "#alerts"}]},
        f"http://{LISTENER}/services/from-the-file\n",
        "POST /services/from-the-file HTTP/1.1",
    ),
    "telegram-bot_token_file": (
        {
            "telegram_configs": [
                {"api_url": f"http://{LISTENER}", "bot_token_file": SECRET, "chat_id": 42}
            ]
        },
        "123456:token-from-the-file\n",
        "POST /bot123456:token-from-the-file/sendMessage HTTP/1.1",
    ),
    "email-auth_password_file": (
        {
            "email_configs": [
                {
                    "to": "ops@example.org",
                    "from": "alertmanager@example.org",
                    "smarthost": LISTENER,
                    "require_tls": False,
                    "auth_username": "alertmanager",
                    "auth_password_file": SECRET,
                }
            ]
        },
        "password-from-the-file\n",
        "AUTH PLAIN " + base64.b64encode(b"\0alertmanager\0password-from-the-file").decode(),
    ),
}


@pytest.mark.parametrize(
    ("receiver", "credential", "expected"), list(DELIVERIES.values()), ids=list(DELIVERIES)
)
def test_alertmanager_delivers_with_the_credential_file(
    standin, containers, receiver, credential, expected
):
    """The file is read when a notification is sent, and trimmed of its trailing newline."""
    container, base = start_alertmanager(
        standin,
        containers,
        command=[
            "--config.file=/etc/alertmanager/alertmanager.yml",
            "--storage.path=/alertmanager",
            "--cluster.listen-address=",
        ],
        files={
            "/etc/alertmanager/alertmanager.yml": (
                alertmanager_config(receiver, group_wait="0s", group_interval="1s"),
                0o444,
            ),
            SECRET: (credential.encode(), 0o444),
            "/tmp/smtp-server": (SMTP_SERVER, 0o755),
        },
    )
    port = LISTENER.rsplit(":", 1)[1]
    if "email_configs" in receiver:
        listen = f"busybox nc -ll -p {port} -e /tmp/smtp-server"
    else:  # one HTTP request, written down as it arrives (nc hangs up when its stdin ends)
        listen = f"sleep 300 | busybox nc -l -p {port} > /tmp/received"
    container.exec_run(["sh", "-c", listen], detach=True)
    # Listening (state 0A) on the port, seen without connecting: `nc -l` takes one connection.
    listening = ["sh", "-c", f"grep -qi ':{int(port):04X} [0-9A-F:]* 0A ' /proc/net/tcp*"]
    wait_for(
        lambda: container.exec_run(listening).exit_code == 0,
        timeout=10,
        what="the listener in the container",
        container=container,
    )
    post_alert(base, test_id=uuid.uuid4().hex)

    def received() -> str:
        code, output = container.exec_run(["cat", "/tmp/received"])
        return output.decode(errors="replace") if code == 0 else ""

    wait_for(
        lambda: expected in received(),
        timeout=30,
        what=f"the notification to reach the listener ({expected!r})",
        container=container,
    )


# ---------------------------------------------------------------------------------------------
# traefik (traefik:v3.6)


def test_traefik_healthcheck_passes_with_our_config(standin, containers):
    config = repo_file("configs/traefik/traefik.yml")
    files = {
        "/etc/traefik/traefik.yml": (config.read_bytes(), 0o444),
        "/run/secrets/traefik_dashboard_users": secret(
            "admin:$apr1$standin$0000000000000000000000"
        ),
    }
    dynamic = REPO / "configs/traefik/dynamic.yml"
    if dynamic.is_file():
        files["/etc/traefik/dynamic/dynamic.yml"] = (dynamic.read_bytes(), 0o444)
    container = containers.run(standin("traefik"), files=files, detach=True)

    def healthy() -> bool:
        return container.exec_run(["traefik", "healthcheck"]).exit_code == 0

    wait_for(healthy, timeout=60, what="`traefik healthcheck` to pass", container=container)


def test_traefik_entrypoint_runs_subcommands_through_traefik(standin, docker_client):
    output = docker_client.containers.run(
        standin("traefik"),
        ["version"],
        remove=True,
        labels={"org.nextcandle.test": "standin-contract"},
    )
    assert b"3.6.15" in output


# ---------------------------------------------------------------------------------------------
# seaweedfs (chrislusf/seaweedfs), S3 with the identities our platform generates

S3_ACCESS_KEY = "standin" + secrets.token_hex(6)
S3_SECRET_KEY = secrets.token_urlsafe(24)


def seaweedfs_command() -> list[str]:
    """The command stacks/shared.yml runs SeaweedFS with."""
    stack = yaml.safe_load(repo_file("stacks/shared.yml").read_text())
    return stack["services"]["seaweedfs"]["command"]


@pytest.fixture(scope="module")
def seaweedfs(standin, containers):
    s3_config = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    container = containers.run(
        standin("seaweedfs"),
        command=seaweedfs_command(),
        files={"/run/secrets/s3_config": secret(json.dumps(s3_config))},
        volumes={containers.volume("seaweed"): {"bind": "/data", "mode": "rw"}},
        ports=loopback("8333/tcp"),
        detach=True,
    )
    endpoint = f"http://127.0.0.1:{host_port(container, '8333/tcp')}"
    # Anonymous listing is refused with 403 once the gateway is up.
    wait_for(
        lambda: http_status(endpoint + "/") == 403,
        timeout=90,
        what="the S3 gateway",
        container=container,
    )
    return container, endpoint


def test_seaweedfs_healthcheck_of_our_stack_passes(seaweedfs):
    container, _ = seaweedfs
    exec_ok(container, ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8333/healthz"])


def test_seaweedfs_runs_as_seaweed_uid_1000(seaweedfs):
    container, _ = seaweedfs
    assert process_uid(container) == 1000


def test_seaweedfs_started_as_root_hands_data_to_seaweed(standin, containers):
    container = containers.run(
        standin("seaweedfs"),
        user="root",
        command=["master", "-ip.bind=0.0.0.0"],
        tmpfs={"/data": "mode=0755"},  # a fresh root-owned /data
        detach=True,
    )
    wait_for(
        lambda: process_uid(container) == 1000,
        timeout=30,
        what="weed master to drop to seaweed",
        container=container,
    )
    assert exec_ok(container, ["stat", "-c", "%u:%g", "/data"]).strip() == "1000:1000"


def s3_client(endpoint: str, access_key: str = S3_ACCESS_KEY, secret_key: str = S3_SECRET_KEY):
    boto3 = pytest.importorskip("boto3", reason="boto3 is needed: pip install boto3")
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 1}, signature_version="s3v4"
        ),
    )


def test_seaweedfs_serves_s3_with_the_configured_keys(seaweedfs):
    container, endpoint = seaweedfs
    client = s3_client(endpoint)
    bucket = f"contract-{uuid.uuid4().hex[:8]}"

    def create_bucket() -> bool:  # the filer behind the gateway may still be starting
        client.create_bucket(Bucket=bucket)
        return True

    wait_for(create_bucket, timeout=60, what="S3 CreateBucket", container=container)
    client.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello stand-in")
    assert client.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == b"hello stand-in"
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_seaweedfs_refuses_anonymous_and_wrong_keys(seaweedfs):
    from botocore.exceptions import ClientError

    _, endpoint = seaweedfs
    bucket = f"anon-{uuid.uuid4().hex[:8]}"
    assert http_status(f"{endpoint}/{bucket}", method="PUT") == 403
    assert http_status(f"{endpoint}/") == 403
    with pytest.raises(ClientError) as refused:
        s3_client(endpoint, secret_key=S3_SECRET_KEY + "x").list_buckets()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# ---------------------------------------------------------------------------------------------
# docker-proxy (tecnativa/docker-socket-proxy)


def _docker_proxy(standin, containers, **environment):
    """The proxy in front of this machine's Docker socket. Only requests the proxy refuses,
    reads and a POST to /_ping (which the engine does not serve) are sent: nothing changes."""
    container = containers.run(
        standin("docker-proxy"),
        environment={"DISABLE_IPV6": "1", **environment},
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        ports=loopback("2375/tcp"),
        detach=True,
    )
    base = f"http://127.0.0.1:{host_port(container, '2375/tcp')}"
    wait_for(
        lambda: http_status(f"{base}/_ping") == 200,
        timeout=30,
        what="the proxy to answer /_ping",
        container=container,
    )
    return container, base


def test_docker_proxy_opens_only_the_sections_its_variables_name(standin, containers):
    container, base = _docker_proxy(standin, containers, NETWORKS="1", VERSION="1")
    assert http_status(f"{base}/version") == 200
    assert http_status(f"{base}/v1.41/version") == 200
    assert http_status(f"{base}/v1.41/networks") == 200
    assert http_status(f"{base}/_ping", method="HEAD") == 200
    # Closed by default (upstream's ENV): containers, images, info, secrets, services...
    for path in ("/containers/json", "/images/json", "/info", "/secrets", "/services"):
        assert http_status(f"{base}/v1.41{path}") == 403, path
    assert exec_ok(container, ["wget", "-q", "-O", "-", "http://127.0.0.1:2375/_ping"]) == "OK"


def test_docker_proxy_refuses_every_write_unless_post_is_on(standin, containers):
    _, base = _docker_proxy(standin, containers, NETWORKS="1", SERVICES="1")
    for method, path in (
        ("POST", "/v1.41/services/create"),
        ("DELETE", "/v1.41/networks/bridge"),
        ("PUT", "/v1.41/networks/bridge"),
        ("POST", "/_ping"),
    ):
        assert http_status(f"{base}{path}", method=method) == 403, (method, path)
    _, opened = _docker_proxy(standin, containers, POST="1")
    # The engine itself answers (no route for POST /_ping): the proxy let it through.
    assert http_status(f"{opened}/_ping", method="POST") == 404
    assert http_status(f"{opened}/v1.41/containers/create", method="POST") == 403


# ---------------------------------------------------------------------------------------------
# n8n (n8nio/n8n)


def test_n8n_answers_healthz_as_node(standin, containers):
    encryption_key = secrets.token_hex(16)
    container = containers.run(
        standin("n8n"),
        environment={
            "N8N_ENCRYPTION_KEY_FILE": "/run/secrets/n8n_encryption_key",
            "N8N_DIAGNOSTICS_ENABLED": "false",
        },
        files={"/run/secrets/n8n_encryption_key": secret(encryption_key)},
        ports=loopback("5678/tcp"),
        detach=True,
    )
    url = f"http://127.0.0.1:{host_port(container, '5678/tcp')}/healthz"
    wait_for(
        lambda: http_status(url) == 200,
        timeout=240,
        what="n8n /healthz",
        container=container,
        interval=2,
    )
    assert process_uid(container) == 1000
    assert exec_ok(container, ["sh", "-c", "id -u; echo $HOME"]).split() == ["1000", "/home/node"]
    exec_ok(
        container,
        [
            "node",
            "-e",
            "fetch('http://127.0.0.1:5678/healthz')"  # the stack's health check
            ".then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))",
        ],
    )
    settings = json.loads(exec_ok(container, ["cat", "/home/node/.n8n/config"]))
    assert settings.get("encryptionKey") == encryption_key


def _post_json(url: str, body: dict) -> tuple[int, dict]:
    assert url.startswith("http://127.0.0.1:"), url
    request = urllib.request.Request(  # noqa: S310 (loopback http only)
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {}


def test_n8n_creates_its_owner_from_the_instance_owner_files(standin, containers):
    """N8N_INSTANCE_OWNER_MANAGED_BY_ENV with the e-mail and the bcrypt hash as *_FILE
    secrets (n8n >= 2.17), as the shared stack gives them: the owner exists before anyone
    can call the owner setup, which stays refused."""
    from infra.secrets import n8n_password_hash

    email, password, key = "owner@example.test", secrets.token_urlsafe(24), secrets.token_hex(16)
    container = containers.run(
        standin("n8n"),
        environment={
            "N8N_ENCRYPTION_KEY_FILE": "/run/secrets/n8n_encryption_key",
            "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_INSTANCE_OWNER_MANAGED_BY_ENV": "true",
            "N8N_INSTANCE_OWNER_EMAIL_FILE": "/run/secrets/n8n_owner_email",
            "N8N_INSTANCE_OWNER_PASSWORD_HASH_FILE": "/run/secrets/n8n_owner_password_hash",
        },
        files={
            "/run/secrets/n8n_encryption_key": secret(key),
            "/run/secrets/n8n_owner_email": secret(email),
            "/run/secrets/n8n_owner_password_hash": secret(n8n_password_hash(password, key)),
        },
        ports=loopback("5678/tcp"),
        detach=True,
    )
    base = f"http://127.0.0.1:{host_port(container, '5678/tcp')}"

    def settings() -> dict | None:
        # /healthz answers early; the REST API only once n8n has started (503 before).
        with urllib.request.urlopen(f"{base}/rest/settings", timeout=10) as response:  # noqa: S310
            return json.loads(response.read())["data"]

    found = wait_for(
        settings, timeout=240, what="n8n /rest/settings", container=container, interval=2
    )
    assert found["userManagement"]["showSetupOnFirstLoad"] is False
    intruder = {
        "email": "x@example.test",
        "firstName": "X",
        "lastName": "Y",
        "password": "Xx1xxxxxx",
    }
    status, _ = _post_json(f"{base}/rest/owner/setup", intruder)
    assert status in (400, 401, 403), status
    status, login = _post_json(
        f"{base}/rest/login", {"emailOrLdapLoginId": email, "password": password}
    )
    assert status == 200 and login["data"]["role"] == "global:owner", (status, login)
    status, _ = _post_json(
        f"{base}/rest/login", {"emailOrLdapLoginId": email, "password": password + "x"}
    )
    assert status == 401
    major, minor = exec_ok(container, ["node", "-p", "process.versions.node"]).split(".")[:2]
    assert (int(major), int(minor)) >= (22, 16)  # n8n 2.20's engines


# ---------------------------------------------------------------------------------------------
# dind (docker:dind) runs a swarm


def test_dind_runs_a_swarm_service_from_a_loaded_standin(standin, containers, docker_client):
    probe = standin("redis-exporter")
    node = containers.adopt(
        dind.create(
            docker_client,
            standin("dind"),
            containers.volume("dind"),
            ports=loopback("9121/tcp"),
            name=f"standin-test-dind-{uuid.uuid4().hex[:8]}",
            labels=dict(LABELS),
        )
    )
    node.start()
    wait_for(
        lambda: node.exec_run(["docker", "info"]).exit_code == 0,
        timeout=60,
        what="the inner dockerd",
        container=node,
    )
    exec_ok(node, ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"])

    with tempfile.TemporaryFile() as image_tar:
        for chunk in docker_client.images.get(probe).save(named=True):
            image_tar.write(chunk)
        image_tar.seek(0)
        put_files(node, {"/var/tmp/probe.tar": (image_tar.read(), 0o644)})
    exec_ok(node, ["docker", "load", "-i", "/var/tmp/probe.tar"])
    exec_ok(
        node,
        [
            "docker",
            "service",
            "create",
            "--detach",
            "--name",
            "probe",
            "--no-resolve-image",
            "--publish",
            "mode=host,target=9121,published=9121",
            probe,
        ],
    )

    def service_running() -> bool:
        states = exec_ok(
            node, ["docker", "service", "ps", "probe", "--format", "{{.CurrentState}}"]
        )
        return any(line.startswith("Running") for line in states.splitlines())

    wait_for(service_running, timeout=90, what="the probe service task to run", container=node)
    url = f"http://127.0.0.1:{host_port(node, '9121/tcp')}/metrics"
    wait_for(
        lambda: http_status(url) == 200,
        timeout=30,
        what="the probe service through the host-mode port",
        container=node,
    )


def test_every_buildable_standin_is_built(standin, standin_tags):
    """In CI every stand-in must exist; locally this reports which ones are missing."""
    missing = []
    for name in standin_tags:
        try:
            standin(name)
        except pytest.skip.Exception:
            missing.append(name)
    if missing:
        unavailable(f"stand-ins not built: {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# example-app (examples/app: the same app.py as its Dockerfile's image; its contract is the
# one `invoke app.deploy` gives it: connection details as files under /run/secrets)


def test_example_app_answers_with_the_row_and_key_it_reads_through_its_secret_files(
    standin, containers, postgres, redis
):
    pg_container, connect = postgres
    network = containers.network("example-app")
    bridge = containers.client.networks.get(network)
    bridge.connect(pg_container, aliases=["db"])
    bridge.connect(redis, aliases=["cache"])
    row, key = f"row-{uuid.uuid4().hex[:8]}", f"key-{uuid.uuid4().hex[:8]}"
    with connect() as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS example_message (id serial PRIMARY KEY, message text)"
        )
        connection.execute("INSERT INTO example_message (message) VALUES (%s)", (row,))
    redis_cli(redis, "SET", "example:message", key, password=REDIS_PASSWORD)
    details = {
        "postgres_host": "db",
        "postgres_port": "5432",
        "postgres_db": PG_DB,
        "postgres_user": PG_USER,
        "postgres_password": PG_PASSWORD,
        "redis_host": "cache",
        "redis_port": "6379",
        "redis_password": REDIS_PASSWORD,
    }
    app = containers.run(
        standin("example-app"),
        network=network,
        environment={"APP_ENVIRONMENT": "stg"},
        ports=loopback("8000/tcp"),
        files={f"/run/secrets/{name}": secret(value) for name, value in details.items()},
        detach=True,
    )
    url = f"http://127.0.0.1:{host_port(app, '8000/tcp')}/"

    def answer():
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
            return json.loads(response.read())

    body = wait_for(answer, timeout=30, what="the example app to answer", container=app)
    assert body == {"environment": "stg", "row": row, "key": key}
    assert process_uid(app) == 10001
    # The health check of examples/app/compose.yml passes in the image.
    check = yaml.safe_load((REPO / "examples" / "app" / "compose.yml").read_text())
    exec_ok(app, check["services"]["web"]["healthcheck"]["test"][1:])
    for value in (PG_PASSWORD, REDIS_PASSWORD):
        assert value not in app.logs().decode(errors="replace")


def test_example_app_says_503_without_naming_a_detail_when_a_database_is_down(standin, containers):
    details = {
        # Refused at once inside the container: no lookup or packet leaves it.
        "postgres_host": "127.0.0.1",
        "postgres_port": "1",
        "postgres_db": "db",
        "postgres_user": "user",
        "postgres_password": "a-password-never-shown",
        "redis_host": "127.0.0.1",
        "redis_port": "1",
        "redis_password": "another-password",
    }
    app = containers.run(
        standin("example-app"),
        ports=loopback("8000/tcp"),
        files={f"/run/secrets/{name}": secret(value) for name, value in details.items()},
        detach=True,
    )
    url = f"http://127.0.0.1:{host_port(app, '8000/tcp')}"
    wait_for(lambda: http_status(f"{url}/health") == 200, timeout=30, what="the app", container=app)
    try:
        urllib.request.urlopen(f"{url}/", timeout=15)  # noqa: S310 (loopback)
        raise AssertionError("the app answered 200 without its databases")
    except urllib.error.HTTPError as error:
        assert error.code == 503
        text = error.read().decode()
    assert "password" not in text and "127.0.0.1" not in text, text
