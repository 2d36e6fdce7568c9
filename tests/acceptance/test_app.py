"""An application deployed into stg with `invoke app.deploy` (issue 18): routed by Traefik on
stg's host name, reading stg's Postgres and Redis through the secret files infra gives it,
isolated from prod, calm on a second deploy, rolled back from a broken image."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from infra import engine, report
from infra.apps import deploy as apps
from infra.settings import REPO_ROOT
from tests.acceptance.test_isolation import _probe_script, _run_probe, _task_addresses

EXAMPLE = REPO_ROOT / "examples" / "app" / "compose.yml"
STACK = "stg-app-example"
SERVICE = f"{STACK}_web"


def _versions(platform) -> dict[str, int]:
    return {s.name: s.version for s in engine.stack_services(platform.client, STACK)}


def _write_row_and_key(platform) -> tuple[str, str]:
    """A fresh row in stg's Postgres and a fresh value of the key in stg's Redis."""
    values = platform.secrets()
    row, key = f"row-{uuid.uuid4().hex[:12]}", f"key-{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host="127.0.0.1",
        port=platform.port(5433),  # stg's host port (the suite turns STG_HOST_PORTS on)
        user=values["stg_postgres_user"],
        password=values["stg_postgres_password"],
        dbname=values["stg_postgres_db"],
        connect_timeout=10,
    ) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS example_message (id serial PRIMARY KEY, message text)"
        )
        connection.execute("INSERT INTO example_message (message) VALUES (%s)", (row,))
    # stg's Redis publishes no port: set the key inside its container, whose password file
    # redis-cli reads there (REDISCLI_AUTH keeps it out of the arguments).
    container = platform.client.containers.get(
        engine.running_container(platform.client, "stg_redis")
    )
    code, output = container.exec_run(
        [
            "sh",
            "-c",
            'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli SET example:message "$0"',
            key,
        ]
    )
    assert code == 0 and b"OK" in output, output
    return row, key


@pytest.fixture(scope="module")
def app(platform):
    """The example app deployed into stg once, with a row and a key written for it first."""
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    image = platform.require("EXAMPLE_APP_IMAGE")
    platform.deploy("stg")
    row, key = _write_row_and_key(platform)
    lines: list[str] = []
    apps.apply(
        platform.settings,
        "stg",
        EXAMPLE,
        image=image,
        timeout=300,
        report=lines.append,
        client=platform.client,
    )
    yield platform, image, row, key, lines
    if STACK in engine.deployed_stacks(platform.client):
        apps.stop(
            platform.settings,
            "stg",
            "example",
            cleanup=True,
            report=lambda _: None,
            client=platform.client,
        )


def _answer(platform):
    response = platform.web(platform.settings.domain("stg"), "/")
    return response.json() if response.status_code == 200 else None


def test_the_app_answers_on_stgs_host_name_with_stgs_row_and_key(app):
    platform, _, row, key, lines = app
    assert f"stack {STACK}: converged, 1 services changed" in lines, lines
    body = platform.wait_for(lambda: _answer(platform), what="the example app through Traefik")
    assert body == {"environment": "stg", "row": row, "key": key}


def test_the_app_gets_its_connection_details_as_secret_files_only(app):
    platform = app[0]
    spec = platform.client.services.get(SERVICE).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    mounted = {ref["File"]["Name"] for ref in spec.get("Secrets") or []}
    assert {"postgres_host", "postgres_password", "redis_password"} <= mounted
    values = platform.secrets()
    environment = " ".join(spec.get("Env") or [])
    for name in ("stg_postgres_password", "stg_redis_password", "stg_postgres_user"):
        assert values[name] not in environment


def test_status_lists_the_app_under_stg(app):
    platform = app[0]
    text, rows = report.status_table(platform.client)
    stacks = [row["stack"] for row in rows]
    assert stacks.index(STACK) == stacks.index("stg") + 1, stacks
    row = rows[stacks.index(STACK)]
    assert (row["environment"], row["app"]) == ("stg", "example")
    assert f"{STACK}: app example of stg" in text


def test_a_probe_on_the_apps_networks_cannot_reach_prods_databases(app):
    """The probe of test_isolation, run on each network the app's service joins: on
    stg_backend it reaches stg's databases (the control) and not prod's; on traefik-public
    it reaches no database at all."""
    platform = app[0]
    image = platform.require("POSTGRES_IMAGE")  # has pg_isready, getent, bash and timeout
    platform.deploy("prod")
    service = platform.client.services.get(SERVICE)
    networks = sorted(
        platform.client.networks.get(attachment["Target"]).name
        for attachment in service.attrs["Spec"]["TaskTemplate"]["Networks"]
    )
    assert networks == ["stg_backend", "traefik-public"]
    addresses = {kind: _task_addresses(platform, f"prod_{kind}") for kind in ("postgres", "redis")}
    assert addresses["postgres"] and addresses["redis"], addresses
    blocked = addresses["postgres"] + addresses["redis"]
    script = _probe_script("stg", "prod", addresses)
    for network in networks:
        results = _run_probe(platform, image, script, network, blocked)
        if network == "stg_backend":
            assert results["own-postgres-answers"] == 0, results
            assert results["own-redis-answers"] == 0, results
        else:
            assert results["own-postgres-resolves"] != 0, results
            assert results["own-postgres-answers"] != 0, results
        assert results["other-postgres-resolves"] != 0, (network, results)
        assert results["other-redis-resolves"] != 0, (network, results)
        reached = [name for name, code in results.items() if "-at-" in name and code == 0]
        assert not reached, (network, results)


def test_a_second_deploy_changes_nothing(app):
    platform, image, *_ = app
    before = _versions(platform)
    lines: list[str] = []
    apps.apply(
        platform.settings, "stg", EXAMPLE, image=image, report=lines.append, client=platform.client
    )
    assert _versions(platform) == before
    assert f"{STACK}: up to date, 0 services changed" in lines, lines


def test_a_broken_image_is_rolled_back_and_the_deploy_exits_1_naming_the_service(app):
    platform, image, row, key, _ = app
    spec = platform.client.services.get(SERVICE).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    broken = image.rsplit(":", 1)[0] + ":no-such-tag"
    result = platform.invoke("app.deploy", "--name=stg", f"--file={EXAMPLE}", f"--image={broken}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{SERVICE} was rolled back" in result.stderr, result.stderr
    after = platform.client.services.get(SERVICE).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert after["Image"] == spec["Image"]
    body = platform.wait_for(lambda: _answer(platform), what="the app after the rollback")
    assert (body["row"], body["key"]) == (row, key)
    lines: list[str] = []
    apps.apply(
        platform.settings, "stg", EXAMPLE, image=image, report=lines.append, client=platform.client
    )
    assert f"{STACK}: up to date, 0 services changed" in lines, lines


def test_app_stop_removes_the_app_and_its_secrets(app):
    platform = app[0]
    apps.stop(
        platform.settings,
        "stg",
        "example",
        cleanup=True,
        report=lambda _: None,
        client=platform.client,
    )
    assert STACK not in engine.deployed_stacks(platform.client)
    assert not [s.name for s in platform.client.secrets.list() if s.name.startswith(f"{STACK}_")]
    assert "stg" in engine.deployed_stacks(platform.client)  # the environment stays
