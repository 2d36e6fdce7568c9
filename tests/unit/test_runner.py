"""The runner stack, rendered with `docker stack config` for each way of registering: the
credential reaches the runner only as its Docker secret, never in the rendered service, and
configs/runner/entrypoint.sh hands it to the image's entrypoint with bash builtins only.

No runner image exists here (see tests/images/standins.yml), so nothing here starts one."""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml

from infra import engine, runner
from infra import plan as planning
from infra.catalog import RUNNER
from infra.errors import SecretsError, SettingsError
from infra.secrets import generate_values, with_env_tokens
from infra.settings import CONFIGS_DIR, REPO_ROOT, load_settings
from tests.unit.test_stacks import pytestmark as needs_stack_config

ACCESS_TOKEN = "ghp_access-token-value-for-tests-000000000"
REGISTRATION_TOKEN = "AAREGISTRATION-token-value-for-tests-0000"


@pytest.fixture(scope="module")
def app_key(tmp_path_factory) -> Path:
    """A file shaped like a GitHub App's private key: infra checks the PEM armour and passes
    the content on; only the image's openssl ever parses it."""
    body = base64.encodebytes(secrets.token_bytes(1190)).decode()
    path = tmp_path_factory.mktemp("app") / "app.private-key.pem"
    path.write_text(f"-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\n")
    return path


def _ways(app_key: Path) -> dict[str, dict[str, str]]:
    return {
        runner.BY_ACCESS_TOKEN: {"RUNNER_ACCESS_TOKEN": ACCESS_TOKEN},
        runner.BY_APP: {"RUNNER_APP_ID": "123456", "RUNNER_APP_PRIVATE_KEY_FILE": str(app_key)},
        runner.BY_REGISTRATION_TOKEN: {"RUNNER_TOKEN": REGISTRATION_TOKEN},
    }


def _credential(way: str, app_key: Path) -> str:
    if way == runner.BY_APP:
        return app_key.read_text()
    return ACCESS_TOKEN if way == runner.BY_ACCESS_TOKEN else REGISTRATION_TOKEN


def _render(environ, extra):
    settings = load_settings(REPO_ROOT, {**environ, **extra})
    values = with_env_tokens(generate_values(settings), settings)
    stack = planning.plan_stack(RUNNER, settings, values)
    rendered = engine.render_stack([str(p) for p in stack.files], stack.variables)
    return stack, rendered


@needs_stack_config
@pytest.mark.parametrize("way", list(runner.REGISTRATIONS))
@pytest.mark.parametrize("owner", ["acme", "acme/app"], ids=["organisation", "repository"])
def test_the_credential_is_only_in_its_secret(environ, app_key, way, owner):
    stack, rendered = _render(environ, {**_ways(app_key)[way], "GITHUB_OWNER": owner})
    credential = _credential(way, app_key)
    secret_name = runner.REGISTRATIONS[way].secret

    text = yaml.safe_dump(rendered)
    for piece in {credential, *credential.splitlines()} - {""}:
        if "PRIVATE KEY" not in piece:  # the PEM's armour lines are no secret
            assert piece not in text
            assert all(piece not in value for value in stack.variables.values())
    # Exactly the chosen way's secret, named after its content, which is the credential.
    (secret,) = stack.secrets
    assert secret.key == secret_name
    assert secret.data.decode().strip() == credential.strip()
    service = rendered["services"]["runner"]
    assert [s["source"] for s in service["secrets"]] == [secret_name]
    assert rendered["secrets"][secret_name]["name"] == secret.name
    assert not {"ACCESS_TOKEN", "RUNNER_TOKEN", "APP_PRIVATE_KEY"} & set(service["environment"])


@needs_stack_config
@pytest.mark.parametrize(
    ("owner", "scope", "org_name", "repo_url"),
    [
        ("acme", "org", "acme", ""),
        ("acme/app", "repo", "", "https://github.com/acme/app"),
    ],
    ids=["organisation", "repository"],
)
def test_the_scope_comes_from_github_owner(environ, owner, scope, org_name, repo_url):
    _, rendered = _render(environ, {"GITHUB_OWNER": owner, "RUNNER_ACCESS_TOKEN": ACCESS_TOKEN})
    environment = rendered["services"]["runner"]["environment"]
    assert environment["RUNNER_SCOPE"] == scope
    assert environment["ORG_NAME"] == org_name
    assert environment["REPO_URL"] == repo_url


@needs_stack_config
def test_the_wrapper_runs_first_and_the_image_command_stays(environ):
    stack, rendered = _render(environ, {"GITHUB_OWNER": "acme", "RUNNER_TOKEN": "x"})
    service = rendered["services"]["runner"]
    (mounted,) = service["configs"]
    assert service["entrypoint"] == ["bash", mounted["target"]]
    (config,) = stack.configs
    assert config.data == (CONFIGS_DIR / "runner" / "entrypoint.sh").read_bytes()
    assert rendered["configs"][mounted["source"]]["name"] == config.name
    assert service["command"] == ["./bin/Runner.Listener", "run", "--startuptype", "service"]


@needs_stack_config
def test_app_id_is_set_only_for_an_app(environ, app_key):
    _, app = _render(environ, {"GITHUB_OWNER": "acme", **_ways(app_key)[runner.BY_APP]})
    assert app["services"]["runner"]["environment"]["APP_ID"] == "123456"
    # The image refuses to start when APP_ID is set without the key (or with a token).
    _, token = _render(environ, {"GITHUB_OWNER": "acme", "RUNNER_ACCESS_TOKEN": ACCESS_TOKEN})
    assert "APP_ID" not in token["services"]["runner"]["environment"]


@needs_stack_config
@pytest.mark.parametrize(
    ("settings_", "ephemeral", "labels", "group"),
    [
        ({}, "", "", ""),
        (
            {"RUNNER_EPHEMERAL": "on", "RUNNER_LABELS": " docker, build ", "RUNNER_GROUP": "ci"},
            "true",
            "docker,build",
            "ci",
        ),
    ],
    ids=["defaults", "ephemeral-labels-group"],
)
def test_options_reach_the_image(environ, settings_, ephemeral, labels, group):
    extra = {"GITHUB_OWNER": "acme", "RUNNER_ACCESS_TOKEN": ACCESS_TOKEN, **settings_}
    _, rendered = _render(environ, extra)
    environment = rendered["services"]["runner"]["environment"]
    # The image tests EPHEMERAL for being non-empty, so off must be empty, not "false".
    assert environment["EPHEMERAL"] == ephemeral
    assert environment["LABELS"] == labels
    assert environment["RUNNER_GROUP"] == group


# --- what a deploy of the runner checks -----------------------------------------------------


def test_a_registration_token_is_accepted_with_one_warning():
    warnings = runner.check_deployable({"GITHUB_OWNER": "acme", "RUNNER_TOKEN": "x"})
    assert warnings == [runner.EXPIRY_WARNING]
    assert "\n" not in runner.EXPIRY_WARNING


@pytest.mark.parametrize("way", [runner.BY_ACCESS_TOKEN, runner.BY_APP])
def test_lasting_credentials_need_no_warning(app_key, way):
    assert runner.check_deployable({"GITHUB_OWNER": "acme", **_ways(app_key)[way]}) == []


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"GITHUB_OWNER": "acme"}, "RUNNER_ACCESS_TOKEN (or a GitHub App) not set"),
        ({"RUNNER_ACCESS_TOKEN": "x"}, "GITHUB_OWNER not set"),
        (
            {"GITHUB_OWNER": "acme", "RUNNER_TOKEN": "x", "RUNNER_EPHEMERAL": "on"},
            "RUNNER_EPHEMERAL=on registers a new runner after every job",
        ),
        (
            {"GITHUB_OWNER": "acme/app", "RUNNER_ACCESS_TOKEN": "x", "RUNNER_GROUP": "ci"},
            "runner groups belong to organisations",
        ),
    ],
    ids=["no-credential", "no-owner", "ephemeral-registration-token", "group-on-a-repository"],
)
def test_a_deploy_refuses_what_cannot_work(values, says):
    with pytest.raises(SettingsError, match=re.escape(says)):
        runner.check_deployable(values)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("GITHUB_OWNER", "https://github.com/acme", "is a URL"),
        ("GITHUB_OWNER", "github.com/acme/app", "is a URL"),
        ("GITHUB_OWNER", "acme/app/extra", "is not an organisation or owner/repository name"),
        ("GITHUB_OWNER", "-acme", "is not an organisation or owner/repository name"),
        ("RUNNER_EPHEMERAL", "yes", "Valid: on, off"),
        ("RUNNER_LABELS", "docker,with space", "which is not a label"),
        ("RUNNER_APP_ID", "my-app", "is not a number"),
        ("RUNNER_APP_LOGIN", "acme", "needs both RUNNER_APP_ID and RUNNER_APP_PRIVATE_KEY_FILE"),
    ],
    ids=lambda v: v if len(v) < 30 else v[:30],
)
def test_bad_runner_settings_are_one_line(environ, name, value, says):
    with pytest.raises(SettingsError, match=says) as caught:
        load_settings(REPO_ROOT, {**environ, name: value})
    assert "\n" not in str(caught.value)


def test_two_ways_at_once_are_refused(environ):
    both = {"RUNNER_ACCESS_TOKEN": "a", "RUNNER_TOKEN": "b"}
    with pytest.raises(SettingsError, match="RUNNER_ACCESS_TOKEN and RUNNER_TOKEN are both set"):
        load_settings(REPO_ROOT, {**environ, **both})


@pytest.mark.parametrize("kind", ["missing", "directory", "not-a-key"])
def test_a_bad_app_key_file_is_one_line(tmp_path, kind):
    path = tmp_path / "app.pem"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-a-key":
        path.write_text("ghp_this-is-a-token-not-a-key\n")
    with pytest.raises(SecretsError, match="RUNNER_APP_PRIVATE_KEY_FILE") as caught:
        runner.read_private_key(str(path))
    assert "ghp_" not in str(caught.value)


# --- the entrypoint wrapper, run with bash --------------------------------------------------


def _wrapper(tmp_path: Path, secrets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run configs/runner/entrypoint.sh with its two paths moved into tmp_path: the secrets
    directory and the image's entrypoint (a script that prints its arguments and the
    credential variables it received)."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name, value in secrets.items():
        (secrets_dir / name).write_text(value)
    image_entrypoint = tmp_path / "image-entrypoint.sh"
    image_entrypoint.write_text(
        "#!/bin/bash\n"
        'printf "arg=%s\\n" "$@"\n'
        "for name in ACCESS_TOKEN APP_PRIVATE_KEY RUNNER_TOKEN; do\n"
        '  [[ -v $name ]] && printf "%s=%s\\n" "$name" "${!name}"\n'
        "done\n"
        "exit 0\n"
    )
    image_entrypoint.chmod(0o755)
    script = (CONFIGS_DIR / "runner" / "entrypoint.sh").read_text()
    for line in ("secrets_dir=/run/secrets", "image_entrypoint=/entrypoint.sh"):
        assert line in script  # the paths the image and Swarm use
    script = script.replace("secrets_dir=/run/secrets", f"secrets_dir={secrets_dir}")
    script = script.replace(
        "image_entrypoint=/entrypoint.sh", f"image_entrypoint={image_entrypoint}"
    )
    wrapper = tmp_path / "runner-entrypoint.sh"
    wrapper.write_text(script)
    # An empty PATH until the exec: the wrapper itself may use bash builtins only, so the
    # credential is never an argument of another process. The fake entrypoint gets one back.
    empty = tmp_path / "no-commands"
    empty.mkdir()
    bash = "/bin/bash"
    return subprocess.run(
        [
            bash,
            "-c",
            f'PATH={empty}; source {wrapper} "$@"',
            "bash",
            "./bin/Runner.Listener",
            "run",
        ],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("secret", "variable"),
    [
        ("runner_access_token", "ACCESS_TOKEN"),
        ("runner_app_private_key", "APP_PRIVATE_KEY"),
        ("runner_token", "RUNNER_TOKEN"),
    ],
)
def test_the_wrapper_exports_the_mounted_secret_and_execs_the_image_entrypoint(
    tmp_path, secret, variable
):
    result = _wrapper(tmp_path, {secret: "value-for-tests\n"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "arg=./bin/Runner.Listener",
        "arg=run",
        f"{variable}=value-for-tests",
    ]


def test_the_wrapper_exports_nothing_without_a_secret(tmp_path):
    result = _wrapper(tmp_path, {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["arg=./bin/Runner.Listener", "arg=run"]
