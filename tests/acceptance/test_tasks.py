"""The invoke tasks against a real engine: swarm and secrets are idempotent."""

from __future__ import annotations


def test_swarm_init_is_idempotent(platform):
    result = platform.invoke("swarm.init")
    assert result.returncode == 0, result.stderr
    assert "already active" in result.stdout


def test_second_secrets_sync_creates_nothing(platform):
    first = platform.invoke("secrets.generate", "secrets.sync")
    assert first.returncode == 0, first.stderr
    before = {s.name for s in platform.client.secrets.list()}
    second = platform.invoke("secrets.generate", "secrets.sync")
    assert second.returncode == 0, second.stderr
    assert "0 created" in second.stdout
    assert {s.name for s in platform.client.secrets.list()} == before
    values = platform.secrets()
    for key, value in values.items():
        if key.endswith(("password", "secret_key", "encryption_key")):
            assert value not in first.stdout + first.stderr + second.stdout, key


def test_secrets_list_names_users_and_no_values(platform):
    platform.require("TRAEFIK_IMAGE")
    platform.deploy("core")
    result = platform.invoke("secrets.list")
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "traefik_dashboard_users" in x)
    assert "core_traefik" in line
    assert platform.secrets()["traefik_dashboard_htpasswd"] not in result.stdout


def test_status_reports_deployed_services(platform):
    platform.require("TRAEFIK_IMAGE")
    platform.deploy("core")
    result = platform.invoke("status", "--json")
    assert result.returncode == 0, result.stderr
    assert '"core_traefik"' in result.stdout
