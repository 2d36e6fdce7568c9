"""The command line as an operator meets it: `invoke ...` in a subprocess, no Docker daemon.

Each bad input must end with exactly one line on stderr, exit code 1, and no change on disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.settings import REPO_ROOT

INVOKE = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT)]


@pytest.fixture
def operator_env(tmp_path, environ):
    """An environment with no reachable daemon: a dry run must not need one."""
    Path(environ["ENV_FILE"]).write_text("CLOUDFLARE_TUNNEL_TOKEN=tunnel-token-for-tests\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    return {**env, **environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}


def run(args, env, cwd=None):
    return subprocess.run(
        [*INVOKE, *args], env=env, cwd=cwd or REPO_ROOT, capture_output=True, text=True, check=False
    )


def nothing_changed(env):
    return not Path(env["SECRETS_FILE"]).exists() and not Path(env["DATA_ROOT"]).exists()


def test_list_shows_every_namespace(operator_env):
    result = run(["--list"], operator_env)
    assert result.returncode == 0, result.stderr
    for name in [
        "swarm.init",
        "swarm.status",
        "secrets.generate",
        "secrets.sync",
        "secrets.list",
        "deploy.core",
        "deploy.env",
        "deploy.shared",
        "deploy.runner",
        "deploy.all",
        "stop.core",
        "stop.env",
        "stop.shared",
        "stop.runner",
        "stop.all",
        "status",
        "logs",
        "firewall.plan",
        "firewall.apply",
        "firewall.remove",
    ]:
        assert name in result.stdout, name


def test_dry_run_prints_the_plan_without_a_daemon(operator_env, tmp_path):
    run(["secrets.generate"], operator_env)
    result = run(["deploy.env", "--name=stg", "--dry-run"], operator_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "traefik-public" in out and "monitoring" in out
    assert "stg_postgres_password-" in out and "<new>" not in out
    assert "stg_postgres_conf-" in out and "configs/postgres/postgresql.conf" in out
    assert f"{operator_env['DATA_ROOT']}/stg/postgres  owner 999:999" in out
    # stg's host ports are off by default: no port overlay, no port, and the plan says so
    assert "docker stack config -c stacks/env.yml | " in out
    assert "port        none (STG_HOST_PORTS=off" in out
    assert out.rstrip().endswith("docker stack deploy --resolve-image=changed -c - stg")
    assert not Path(operator_env["DATA_ROOT"]).exists()
    values = yaml.safe_load(Path(operator_env["SECRETS_FILE"]).read_text())
    for key, value in values.items():
        if key.endswith(("password", "secret_key", "encryption_key", "htpasswd")):
            assert value not in out + result.stderr, key


@pytest.mark.parametrize(
    ("env", "setting", "ports"),
    [
        ("dev", None, ["5432 (postgres", "6379 (redis"]),
        ("dev", "off", []),
        ("prod", None, []),
        ("prod", "on", ["5434 (postgres", "6381 (redis"]),
    ],
    ids=["dev-default", "dev-off", "prod-default", "prod-on"],
)
def test_dry_run_shows_the_ports_the_host_ports_setting_publishes(
    operator_env, env, setting, ports
):
    if setting:
        operator_env[f"{env.upper()}_HOST_PORTS"] = setting
    result = run(["deploy.env", f"--name={env}", "--dry-run"], operator_env)
    assert result.returncode == 0, result.stderr
    stack = result.stdout.split(f"stack {env}\n", 1)[1]
    published = [line.split(None, 1)[1] for line in stack.splitlines() if "  port  " in line]
    if ports:
        assert [p for p in ports if not any(line.startswith(p) for line in published)] == []
        assert "-c stacks/env.postgres-port.yml" in stack
    else:
        assert published == [
            f"none ({env.upper()}_HOST_PORTS=off: reachable inside the swarm only)"
        ]
        assert "-port.yml" not in stack


def test_bad_host_ports_value_is_one_line(operator_env):
    operator_env["PROD_HOST_PORTS"] = "maybe"
    line = one_line_failure(run(["deploy.env", "--name=prod", "--dry-run"], operator_env))
    assert "PROD_HOST_PORTS='maybe'" in line and "Valid: on, off" in line
    assert nothing_changed(operator_env)


def test_firewall_plan_needs_no_daemon_and_lists_the_published_ports(operator_env):
    operator_env["FIREWALL_ALLOW"] = "192.0.2.0/24"
    operator_env["STG_HOST_PORTS"] = "on"
    result = run(["firewall.plan"], operator_env)
    assert result.returncode == 0, result.stderr
    drops = [line for line in result.stdout.splitlines() if line.endswith("-j DROP")]
    published = [line for line in drops if " -A NEXTCANDLE " in line]
    ports = sorted(int(line.split("--ctorigdstport ")[1].split()[0]) for line in published)
    assert ports == [80, 443, 5432, 5433, 6379, 8080]
    assert "iptables -w -A NEXTCANDLE -s 192.0.2.0/24 -j RETURN" in result.stdout
    host_network = [line for line in drops if " -A NEXTCANDLE-INPUT " in line]
    # ip6tables' too, unless the plan was read from a machine without IPv6.
    assert host_network[0] == "iptables -w -A NEXTCANDLE-INPUT -p tcp -m tcp --dport 9100 -j DROP"
    assert host_network[1:] in (
        [],
        ["ip6tables -w -A NEXTCANDLE-INPUT -p tcp -m tcp --dport 9100 -j DROP"],
    )
    assert "iptables -w -A NEXTCANDLE-INPUT -s 192.0.2.0/24 -j RETURN" in result.stdout


def test_bad_firewall_network_is_one_line(operator_env):
    operator_env["FIREWALL_ALLOW"] = "10.0.0.1/8"
    line = one_line_failure(run(["firewall.plan"], operator_env))
    assert "'10.0.0.1/8'" in line and "Did you mean 10.0.0.0/8?" in line


def test_dry_run_before_secrets_exist_says_they_will_be_generated(operator_env):
    result = run(["deploy.env", "--name=dev", "--dry-run"], operator_env)
    assert result.returncode == 0, result.stderr
    assert "will be generated" in result.stdout
    assert nothing_changed(operator_env)


def one_line_failure(result) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_unknown_environment(operator_env):
    line = one_line_failure(run(["deploy.env", "--name=qa"], operator_env))
    assert "'qa'" in line and "Valid: dev, stg, prod" in line
    assert nothing_changed(operator_env)


def test_core_without_tunnel_token(operator_env):
    Path(operator_env["ENV_FILE"]).write_text("PROJECT_NAME=nextcandle\n")
    line = one_line_failure(run(["deploy.core"], operator_env))
    assert "CLOUDFLARE_TUNNEL_TOKEN" in line and "--no-tunnel" in line
    assert nothing_changed(operator_env)


def test_core_with_no_tunnel_needs_no_token(operator_env):
    Path(operator_env["ENV_FILE"]).write_text("PROJECT_NAME=nextcandle\n")
    result = run(["deploy.core", "--no-tunnel", "--dry-run"], operator_env)
    assert result.returncode == 0, result.stderr
    assert "core.tunnel.yml" not in result.stdout


def test_malformed_env_line(operator_env):
    Path(operator_env["ENV_FILE"]).write_text(
        "PROJECT_NAME=ok\nCLOUDFLARE_TUNNEL_TOKEN eyJsecret\n"
    )
    line = one_line_failure(run(["deploy.env", "--name=dev"], operator_env))
    assert "line 2" in line and "eyJsecret" not in line
    assert nothing_changed(operator_env)


def test_malformed_secrets_file(operator_env):
    secrets_file = Path(operator_env["SECRETS_FILE"])
    secrets_file.parent.mkdir(parents=True)
    secrets_file.write_text("dev_postgres_password: [oops\n")
    secrets_file.chmod(0o600)
    line = one_line_failure(run(["deploy.env", "--name=dev"], operator_env))
    assert "not valid YAML" in line
    assert secrets_file.read_text() == "dev_postgres_password: [oops\n"
    assert not Path(operator_env["DATA_ROOT"]).exists()


def test_secrets_file_missing_a_key(operator_env):
    assert run(["secrets.generate"], operator_env).returncode == 0
    secrets_file = Path(operator_env["SECRETS_FILE"])
    values = yaml.safe_load(secrets_file.read_text())
    del values["prod_redis_password"]
    secrets_file.write_text(yaml.safe_dump(values))
    line = one_line_failure(run(["deploy.env", "--name=prod"], operator_env))
    assert "prod_redis_password" in line
    assert not Path(operator_env["DATA_ROOT"]).exists()


def test_data_root_that_cannot_be_written(operator_env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**operator_env, "DATA_ROOT": str(blocker / "data")}
    line = one_line_failure(run(["deploy.env", "--name=dev"], env))
    assert "DATA_ROOT" in line
    assert not Path(env["SECRETS_FILE"]).exists()


def test_deploy_without_daemon_is_one_line(operator_env):
    line = one_line_failure(run(["deploy.env", "--name=dev"], operator_env))
    assert "Docker is not reachable" in line
    assert nothing_changed(operator_env)


def test_secrets_generate_twice_keeps_the_file(operator_env):
    assert run(["secrets.generate"], operator_env).returncode == 0
    secrets_file = Path(operator_env["SECRETS_FILE"])
    before = secrets_file.read_bytes()
    result = run(["secrets.generate"], operator_env)
    assert result.returncode == 0 and "left unchanged" in result.stdout
    assert secrets_file.read_bytes() == before
    assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("script", "args"),
    [("start.sh", ["qa"]), ("stop.sh", ["qa"]), ("status.sh", ["--bogus"])],
    ids=["start", "stop", "status"],
)
def test_scripts_refuse_unknown_arguments(operator_env, tmp_path, script, args):
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / script), *args],
        env=operator_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("script", "args"),
    [("start.sh", ["qa"]), ("stop.sh", ["qa"]), ("status.sh", ["--bogus"])],
    ids=["start", "stop", "status"],
)
def test_scripts_refuse_before_they_set_up_the_virtualenv(operator_env, tmp_path, script, args):
    # A fresh clone: the scripts, and no .venv yet.
    clone = tmp_path / "clone"
    shutil.copytree(REPO_ROOT / "scripts", clone / "scripts")
    result = subprocess.run(
        [str(clone / "scripts" / script), *args],
        env=operator_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "unknown" in result.stderr
    assert not (clone / ".venv").exists()


NUMERIC_OPTIONS = {
    "deploy.core": ["deploy.core", "--no-tunnel", "--timeout={}"],
    "deploy.env": ["deploy.env", "--name=dev", "--timeout={}"],
    "deploy.shared": ["deploy.shared", "--timeout={}"],
    "deploy.runner": ["deploy.runner", "--timeout={}"],
    "deploy.all": ["deploy.all", "--timeout={}"],
    "secrets.rotate": ["secrets.rotate", "--key=dev_postgres_password", "--timeout={}"],
    "alerts.test": ["alerts.test", "--timeout={}"],
    "logs": ["logs", "--service=dev_postgres", "--tail={}"],
}


@pytest.mark.parametrize(
    "value", ["soon", "-5", "nan", ""], ids=["word", "negative", "nan", "empty"]
)
@pytest.mark.parametrize("task", list(NUMERIC_OPTIONS))
def test_a_numeric_option_that_is_no_number_is_one_line(operator_env, task, value):
    args = [arg.format(value) for arg in NUMERIC_OPTIONS[task]]
    line = one_line_failure(run(args, operator_env))
    option = args[-1].split("=")[0]
    least, example = {"logs": ("0 or more", "100"), "alerts.test": ("0 or more", "120")}.get(
        task, ("above 0", "600")
    )
    assert line == (
        f"error: {option}={value!r} is not a number {least}. Give one like {option}={example}."
    )
    assert nothing_changed(operator_env)


def test_a_timeout_of_zero_is_refused_where_it_means_nothing(operator_env):
    line = one_line_failure(run(["deploy.env", "--name=dev", "--timeout=0"], operator_env))
    assert line.startswith("error: --timeout='0' is not a number above 0.")


def test_start_script_runs_the_deploy_task_from_any_directory(operator_env, tmp_path):
    if not (REPO_ROOT / ".venv" / "bin" / "invoke").exists():
        pytest.skip("scripts/ use <repo>/.venv, which this checkout has not created")
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "start.sh"), "stg", "--dry-run"],
        env=operator_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "plan for stg" in result.stdout


def test_listing_the_tasks_loads_neither_the_docker_sdk_nor_passlib_nor_the_settings():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tasks; "
            "print(sorted({'docker', 'passlib', 'infra.settings', 'dotenv'} & set(sys.modules)))",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("environ", "writes"),
    [({}, "False"), ({"PYTHONDONTWRITEBYTECODE": "1"}, "True")],
    ids=["python-writes-bytecode", "PYTHONDONTWRITEBYTECODE-set"],
)
def test_the_task_package_gives_bytecode_writing_back_to_pythons_own_setting(environ, writes):
    """invoke turns writing bytecode off before it loads tasks.py; infra.tasks turns it back
    to what Python was told (so each `invoke` does not compile infra again)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.dont_write_bytecode = True; import infra.tasks; "
            "print(sys.dont_write_bytecode)",
        ],
        cwd=REPO_ROOT,
        env={**env, **environ},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == writes
