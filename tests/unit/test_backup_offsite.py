"""Off-site copies without a daemon or a bucket: BACKUP_S3_* and the keys checked, s3://
addresses read, and the CLI's refusals before anything is sent or written."""

from __future__ import annotations

import os

import pytest
import yaml

from infra import secrets
from infra.backup import BackupError, offsite
from infra.errors import SecretsError
from infra.settings import REPO_ROOT, load_settings
from tests.unit.test_backup import make_backup, one_line_error, run

URL = "s3://backups/prod/20261126T151500Z"
KEYS = {"backup_s3_access_key": "OFFSITEKEYID", "backup_s3_secret_key": "offsite-secret-0001"}


def _settings(environ, **values):
    return load_settings(REPO_ROOT, {**environ, **values})


@pytest.fixture
def with_keys(settings):
    assert secrets.generate(settings)
    path = settings.secrets_file
    path.write_text(path.read_text() + yaml.safe_dump(KEYS))
    return settings


# --- the secrets schema ------------------------------------------------------------------


def test_operator_keys_are_never_generated(settings):
    generated = secrets.generate_values(settings)
    assert not set(secrets.OPERATOR_KEYS) & set(generated)
    assert not set(secrets.OPERATOR_KEYS) & set(secrets.SCHEMA_KEYS)


def test_secrets_without_the_offsite_keys_load(settings):
    assert secrets.generate(settings)
    assert not set(secrets.OPERATOR_KEYS) & set(secrets.load(settings))


def test_offsite_keys_added_by_the_operator_load(with_keys):
    values = secrets.load(with_keys)
    assert {key: values[key] for key in KEYS} == KEYS


def test_an_empty_offsite_key_is_refused(settings):
    assert secrets.generate(settings)
    path = settings.secrets_file
    path.write_text(path.read_text() + 'backup_s3_secret_key: ""\n')
    with pytest.raises(SecretsError, match="backup_s3_secret_key is empty"):
        secrets.load(settings)


def test_rotation_keeps_the_offsite_keys(with_keys):
    secrets.rewrite_keys(with_keys, {"dev_redis_password": "x" * 43})
    values = secrets.load(with_keys)
    assert {key: values[key] for key in KEYS} == KEYS


# --- BACKUP_S3_* -------------------------------------------------------------------------


def test_no_bucket_means_no_offsite_copy(settings):
    assert not offsite.configured(settings)


def test_a_bucket_turns_the_offsite_copy_on(environ):
    assert offsite.configured(_settings(environ, BACKUP_S3_BUCKET="nextcandle-backups"))


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"BACKUP_S3_BUCKET": "Backups"}, "BACKUP_S3_BUCKET='Backups' is not an S3 bucket name"),
        ({"BACKUP_S3_BUCKET": "ab"}, "is not an S3 bucket name"),
        (
            {"BACKUP_S3_BUCKET": "backups", "BACKUP_S3_ENDPOINT": "s3.example.com"},
            "BACKUP_S3_ENDPOINT='s3.example.com' is not an http(s) address",
        ),
        (
            {"BACKUP_S3_BUCKET": "backups", "BACKUP_S3_ENDPOINT": "https://s3.example.com/x"},
            "no path",
        ),
        (
            {"BACKUP_S3_BUCKET": "backups", "BACKUP_S3_REGION": "EU Central"},
            "BACKUP_S3_REGION='EU Central' is not a region name",
        ),
    ],
    ids=["upper-case-bucket", "short-bucket", "endpoint-without-scheme", "endpoint-path", "region"],
)
def test_malformed_settings_are_one_line(environ, values, words):
    with pytest.raises(BackupError, match=None) as raised:
        offsite.check_settings(_settings(environ, **values))
    assert words in str(raised.value)
    assert "\n" not in str(raised.value)


def test_good_settings_are_returned_without_a_trailing_slash(environ):
    settings = _settings(
        environ,
        BACKUP_S3_BUCKET="nextcandle.backups",
        BACKUP_S3_ENDPOINT="https://s3.example.com/",
        BACKUP_S3_REGION="eu-central-1",
    )
    assert offsite.check_settings(settings) == (
        "nextcandle.backups",
        "https://s3.example.com",
        "eu-central-1",
    )


def test_the_region_defaults_to_us_east_1(environ):
    settings = _settings(environ, BACKUP_S3_BUCKET="backups", BACKUP_S3_REGION="")
    assert offsite.check_settings(settings)[2] == "us-east-1"


def test_a_bucket_without_keys_is_refused_naming_them(environ):
    settings = _settings(environ, BACKUP_S3_BUCKET="backups")
    assert secrets.generate(settings)
    with pytest.raises(BackupError) as raised:
        offsite.remote(settings)
    message = str(raised.value)
    assert "backup_s3_access_key or backup_s3_secret_key" in message
    assert "secrets.example.yml" in message


def test_the_remote_never_shows_its_keys(environ, with_keys):
    settings = _settings(environ, BACKUP_S3_BUCKET="backups")
    remote = offsite.remote(settings)
    assert remote.access_key == KEYS["backup_s3_access_key"]
    for value in KEYS.values():
        assert value not in repr(remote)


# --- s3:// addresses ---------------------------------------------------------------------


def test_an_address_names_its_bucket_and_prefix():
    url = "s3://nextcandle-backups/prod/20261126T151500Z/"
    assert offsite.parse_url(url) == ("nextcandle-backups", "prod/20261126T151500Z")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://bucket/prod/x", "is not an s3:// address"),
        ("s3://bucket", "names no backup"),
        ("s3://bucket/", "names no backup"),
        ("s3:///prod/x", "names no backup"),
        ("s3://bucket/prod/../dev/x", "has '..' in it"),
    ],
    ids=["https", "bucket-only", "bucket-slash", "no-bucket", "dot-dot"],
)
def test_bad_addresses_are_refused(url, words):
    with pytest.raises(BackupError, match=None) as raised:
        offsite.parse_url(url)
    assert words in str(raised.value)


# --- the CLI -----------------------------------------------------------------------------


@pytest.fixture
def operator_env(tmp_path, environ):
    """As tests/unit/test_backup.py's: an operator's shell with no Docker engine reachable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    return {
        **env,
        **environ,
        "BACKUP_ROOT": str(tmp_path / "backups"),
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
    }


def test_cli_lists_the_offsite_tasks(operator_env):
    listing = run(["--list"], operator_env).stdout
    for name in ("backup.upload", "restore.shared"):
        assert name in listing


def test_cli_backup_with_a_bucket_but_no_keys_stops_before_it_starts(operator_env, tmp_path):
    env = {**operator_env, "BACKUP_S3_BUCKET": "backups"}
    settings = load_settings(REPO_ROOT, env)
    assert secrets.generate(settings)
    line = one_line_error(run(["backup.env", "--name=dev"], env))
    assert "has no backup_s3_access_key or backup_s3_secret_key" in line
    assert not (tmp_path / "backups").exists()
    assert not (tmp_path / "data").exists()  # no record: the run never started


def test_cli_backup_with_a_malformed_bucket_stops_before_it_starts(operator_env, tmp_path):
    env = {**operator_env, "BACKUP_S3_BUCKET": "My_Backups"}
    line = one_line_error(run(["backup.shared"], env))
    assert "BACKUP_S3_BUCKET='My_Backups'" in line
    assert not (tmp_path / "backups").exists()


def test_cli_restore_from_a_bad_address_is_one_line(operator_env):
    line = one_line_error(run(["restore.env", "--name=stg", "--from=s3://backups"], operator_env))
    assert "names no backup" in line


def test_cli_restore_from_s3_without_keys_is_one_line(operator_env, tmp_path):
    settings = load_settings(REPO_ROOT, operator_env)
    assert secrets.generate(settings)
    line = one_line_error(
        run(
            ["restore.env", "--name=stg", "--from=s3://backups/prod/20261126T151500Z"], operator_env
        )
    )
    assert "has no backup_s3_access_key" in line
    assert not (tmp_path / "backups").exists()  # nothing downloaded


def test_cli_upload_without_from_is_one_line(operator_env):
    line = one_line_error(run(["backup.upload", "--name=prod"], operator_env))
    assert "--from=PATH" in line


def test_cli_upload_of_a_damaged_backup_is_refused_before_any_upload(operator_env, tmp_path):
    directory = make_backup(tmp_path / "b")
    (directory / "redis.rdb").write_bytes(b"REDIS0012 truncated")
    env = {**operator_env, "BACKUP_S3_BUCKET": "backups"}
    line = one_line_error(run(["backup.upload", "--name=prod", f"--from={directory}"], env))
    assert "redis.rdb is corrupt" in line


def test_cli_upload_under_another_environments_name_is_refused(operator_env, tmp_path):
    directory = make_backup(tmp_path / "b")  # a backup of prod
    env = {**operator_env, "BACKUP_S3_BUCKET": "backups"}
    line = one_line_error(run(["backup.upload", "--name=stg", f"--from={directory}"], env))
    assert "is a backup of prod, not of stg" in line and "--name=prod" in line
