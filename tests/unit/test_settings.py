from __future__ import annotations

from pathlib import Path

import pytest

from infra.catalog import ENVIRONMENTS
from infra.errors import SettingsError
from infra.settings import (
    DEFAULT_IMAGES_FILE,
    REPO_ROOT,
    check_target,
    load_settings,
    read_env_file,
)


def test_defaults_without_env_file(settings):
    assert settings.project_name == "nextcandle"
    assert settings.runner_replicas == 2
    assert settings.env_file is None


def test_env_file_values_are_read(tmp_path, environ):
    Path(environ["ENV_FILE"]).write_text("PROJECT_NAME=acme\nDOMAIN_PROD=acme.io\nSUPABASE_URL=x\n")
    settings = load_settings(REPO_ROOT, environ)
    assert (settings.project_name, settings.shared_domain) == ("acme", "acme.io")
    assert settings.get("SUPABASE_URL") == "x"


def test_process_environment_wins_over_env_file(environ):
    Path(environ["ENV_FILE"]).write_text("PROJECT_NAME=fromfile\n")
    settings = load_settings(REPO_ROOT, {**environ, "PROJECT_NAME": "fromenv"})
    assert settings.project_name == "fromenv"


def test_relative_data_root_is_resolved_against_the_repository(environ):
    settings = load_settings(REPO_ROOT, {**environ, "DATA_ROOT": "var/data"})
    assert settings.data_root == REPO_ROOT / "var" / "data"


def test_default_data_root_is_in_the_repository(environ):
    del environ["DATA_ROOT"]
    assert load_settings(REPO_ROOT, environ).data_root == REPO_ROOT / ".data"


@pytest.mark.parametrize(
    "line",
    ["this is not an assignment", "CLOUDFLARE_TUNNEL_TOKEN", "A='unterminated"],
    ids=["words", "key-without-value", "open-quote"],
)
def test_malformed_env_line_names_the_line_and_not_its_content(tmp_path, line):
    path = tmp_path / "env"
    path.write_text(f"PROJECT_NAME=ok\n{line}\n")
    with pytest.raises(SettingsError) as error:
        read_env_file(path)
    message = str(error.value)
    assert "line 2" in message
    assert line not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PROJECT_NAME", "Bad Name"),
        ("RUNNER_REPLICAS", "two"),
        ("RUNNER_REPLICAS", "0"),
        ("DOMAIN_STG", "https://stg.example.com"),
        ("RESOLVE_IMAGE", "sometimes"),
        ("DEV_HOST_PORTS", "yes"),
        ("PROD_HOST_PORTS", ""),
        ("FIREWALL_ALLOW", "10.0.0.0/8,lan"),
    ],
    ids=[
        "project-name",
        "replicas-word",
        "replicas-zero",
        "domain-url",
        "resolve-image",
        "host-ports-yes",
        "host-ports-empty",
        "firewall-allow",
    ],
)
def test_invalid_setting_is_refused_with_its_name(environ, name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings(REPO_ROOT, {**environ, name: value})


def test_every_image_is_pinned(settings):
    assert settings.images
    for name, ref in settings.images.items():
        assert name.endswith("_IMAGE")
        assert ":" in ref.rsplit("/", 1)[-1], ref
        assert not ref.endswith(":latest"), ref


def test_image_can_be_overridden_by_name(environ):
    settings = load_settings(REPO_ROOT, {**environ, "REDIS_IMAGE": "mirror.local/redis:7.4.7"})
    assert settings.images["REDIS_IMAGE"] == "mirror.local/redis:7.4.7"


def test_images_file_can_be_replaced(tmp_path, environ):
    other = tmp_path / "images.env"
    other.write_text(DEFAULT_IMAGES_FILE.read_text().replace("traefik:", "mirror.local/traefik:"))
    settings = load_settings(REPO_ROOT, {**environ, "IMAGES_FILE": str(other)})
    assert settings.images["TRAEFIK_IMAGE"].startswith("mirror.local/traefik:")


@pytest.mark.parametrize(
    "content",
    ["TRAEFIK_IMAGE=traefik\n", "TRAEFIK_IMAGE=traefik:latest\n", "TRAEFIK=traefik:v3\n"],
    ids=["no-tag", "latest", "not-an-image-variable"],
)
def test_bad_images_file_is_refused(tmp_path, environ, content):
    other = tmp_path / "images.env"
    other.write_text(content)
    with pytest.raises(SettingsError, match="images.env"):
        load_settings(REPO_ROOT, {**environ, "IMAGES_FILE": str(other)})


@pytest.mark.parametrize("name", ["qa", "", "DEV"], ids=["qa", "empty", "upper-case"])
def test_unknown_environment_lists_the_valid_ones(name):
    with pytest.raises(SettingsError, match="Valid: dev, stg, prod"):
        check_target(name, ("dev", "stg", "prod"))


def test_host_ports_default_to_the_catalog(settings):
    assert {env: settings.host_ports(env) for env in ENVIRONMENTS} == {
        env: spec.host_ports for env, spec in ENVIRONMENTS.items()
    }
    assert settings.host_ports("dev") and not settings.host_ports("prod")


def test_host_ports_setting_is_read_from_the_env_file(environ):
    Path(environ["ENV_FILE"]).write_text("DEV_HOST_PORTS=off\nPROD_HOST_PORTS=on\n")
    settings = load_settings(REPO_ROOT, environ)
    assert not settings.host_ports("dev")
    assert settings.host_ports("prod")


def test_bad_host_ports_value_says_what_is_valid(environ):
    with pytest.raises(SettingsError) as error:
        load_settings(REPO_ROOT, {**environ, "STG_HOST_PORTS": "true"})
    assert str(error.value) == "STG_HOST_PORTS='true' is not valid. Valid: on, off (default off)."


def test_a_byte_order_mark_does_not_hide_the_first_setting(environ):
    Path(environ["ENV_FILE"]).write_bytes("\ufeffPROJECT_NAME=acme\n".encode())
    assert load_settings(REPO_ROOT, environ).project_name == "acme"


@pytest.mark.parametrize(
    "content",
    [b"PROJECT_NAME=acme\nTITLE=caf\xe9\n", b"\xff\xfeP\x00"],
    ids=["latin1", "utf16"],
)
def test_an_env_file_that_is_not_utf8_names_its_line(environ, content):
    Path(environ["ENV_FILE"]).write_bytes(content)
    with pytest.raises(SettingsError, match=r"line \d+ is not UTF-8 text") as caught:
        load_settings(REPO_ROOT, environ)
    assert "caf" not in str(caught.value)


def test_a_directory_as_env_file_is_named(tmp_path, environ):
    (tmp_path / "env-dir").mkdir()
    with pytest.raises(SettingsError, match="is a directory, not a KEY=VALUE file"):
        load_settings(REPO_ROOT, {**environ, "ENV_FILE": str(tmp_path / "env-dir")})


def test_a_directory_as_images_file_is_named(tmp_path, environ):
    with pytest.raises(SettingsError, match="is a directory. Set IMAGES_FILE to a file"):
        load_settings(REPO_ROOT, {**environ, "IMAGES_FILE": str(tmp_path)})


@pytest.mark.parametrize("value", ["n8n", "shared_", "qa_postgres"])
def test_disabled_services_need_their_stack(environ, value):
    with pytest.raises(SettingsError, match="which is not <stack>_<service>"):
        load_settings(REPO_ROOT, {**environ, "DISABLED_SERVICES": f"shared_n8n,{value}"})


@pytest.mark.parametrize("value", ["10.0.0.5", "10.0.0.5:2377", "eth0", "fe80::1", "[fe80::1]"])
def test_an_advertise_address_or_interface_is_accepted(environ, value):
    settings = load_settings(REPO_ROOT, {**environ, "SWARM_ADVERTISE_ADDR": value})
    assert settings.get("SWARM_ADVERTISE_ADDR") == value


@pytest.mark.parametrize("value", ["http://10.0.0.5", "10.0.0.5:99999", "my node", "10.0.0.5:x"])
def test_a_bad_advertise_address_is_refused_before_anything(environ, value):
    with pytest.raises(SettingsError, match="is not an address or interface"):
        load_settings(REPO_ROOT, {**environ, "SWARM_ADVERTISE_ADDR": value})
