"""infra/apps: an app's compose file checked, filled in and planned (no Docker daemon: the
files are rendered by `docker stack config`, client-side)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from infra import deploy, engine, report, secrets
from infra.apps import compose, plan_app, stack_name
from infra.apps import deploy as apps
from infra.errors import SettingsError
from infra.settings import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "app" / "compose.yml"
HOST = "stg.localhost"


def write(tmp_path: Path, text: str, name: str = "compose.yml") -> Path:
    path = tmp_path / "myapp" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(path: Path, env: str = "stg", image: str = "", data_root: Path = Path("/srv/data")):
    return compose.load(path, env, f"{env}.localhost", data_root, image)


WEB = """\
services:
  web:
    image: example-app:1.0.0
    x-nextcandle: {port: 8000}
"""


@pytest.fixture
def values(settings):
    return secrets.generate_values(settings)


# --- what is accepted ------------------------------------------------------------------------


def test_the_example_app_is_accepted_and_routed_on_the_environments_host():
    app = load(EXAMPLE, image="example-app:1.0.0")
    assert app.app == "example"
    assert app.routes == {"web": compose.Route(8000, f"Host(`{HOST}`)")}
    assert app.rendered["services"]["web"]["environment"]["APP_ENVIRONMENT"] == "stg"


def test_the_app_name_defaults_to_the_files_directory(tmp_path):
    assert load(write(tmp_path, WEB)).app == "myapp"


@pytest.mark.parametrize(
    "image",
    ["example-app:1.0.0", "registry.local:5000/team/app:2", "app@sha256:" + "a" * 64],
    ids=["tag", "registry-port-and-tag", "digest"],
)
def test_pinned_images_are_accepted(tmp_path, image):
    load(write(tmp_path, f"services:\n  web:\n    image: {image}\n"))


def test_a_rule_naming_the_environments_host_is_kept(tmp_path):
    path = write(
        tmp_path,
        f"""\
        services:
          web:
            image: app:1
            deploy:
              labels:
                traefik.http.routers.web.rule: Host(`{HOST}`) && PathPrefix(`/api`)
                traefik.http.services.web.loadbalancer.server.port: "8080"
        """,
    )
    assert load(path).routes["web"] == compose.Route(8080, f"Host(`{HOST}`) && PathPrefix(`/api`)")


@pytest.mark.parametrize(
    "networks",
    [
        "networks:\n  backend: {}\n",
        "networks:\n  mine: {external: true, name: stg_backend}\n",
        "networks:\n  mine: {external: true, name: '${ENV_NAME}_backend'}\n",
    ],
    ids=["plain-backend", "external-by-name", "external-by-env-name"],
)
def test_the_environments_backend_may_be_named(tmp_path, networks):
    key = yaml.safe_load(networks)["networks"]
    text = f"services:\n  web:\n    image: app:1\n    networks: [{next(iter(key))}]\n{networks}"
    load(write(tmp_path, text))


# --- the refusals (README, When something is wrong) ------------------------------------------

REFUSALS = {
    "ports-short": (
        "services:\n  web:\n    image: app:1\n    ports: ['8080:80']\n",
        "service web publishes host port 8080. An app is reached through Traefik on "
        "stg.localhost: remove ports: and give x-nextcandle: {port: 80}.",
    ),
    "ports-long": (
        "services:\n  web:\n    image: app:1\n    ports:\n"
        "      - {target: 80, published: 9000, mode: host}\n",
        "service web publishes host port 9000.",
    ),
    "docker-socket": (
        "services:\n  web:\n    image: app:1\n"
        "    volumes: ['/var/run/docker.sock:/var/run/docker.sock']\n",
        "service web mounts the Docker socket (/var/run/docker.sock). An app gets no access to "
        "the Docker API: remove that volume.",
    ),
    "docker-socket-run": (
        "services:\n  web:\n    image: app:1\n    volumes:\n"
        "      - {type: bind, source: /run/docker.sock, target: /sock}\n",
        "service web mounts the Docker socket (/run/docker.sock).",
    ),
    "docker-socket-directory": (
        "services:\n  web:\n    image: app:1\n    volumes: ['/var/run:/host-run:ro']\n",
        "service web mounts /var/run, which holds the Docker socket.",
    ),
    "data-root": (
        "services:\n  web:\n    image: app:1\n    volumes: ['/srv/data/prod/postgres:/pg:ro']\n",
        "service web mounts /srv/data/prod/postgres, which holds the platform's data",
    ),
    "other-environment": (
        "services:\n  web:\n    image: app:1\n    networks: [prod]\n"
        "networks:\n  prod: {external: true, name: prod_backend}\n",
        "service web joins network prod_backend. An app of stg joins only stg_backend (and "
        "traefik-public, when routed): remove it.",
    ),
    "monitoring": (
        "services:\n  web:\n    image: app:1\n    networks: [monitoring]\n"
        "networks:\n  monitoring: {external: true}\n",
        "service web joins network monitoring.",
    ),
    "own-network": (
        "services:\n  web:\n    image: app:1\n    networks: [internal]\n"
        "networks:\n  internal: {driver: overlay}\n",
        "service web joins network internal (a new network of the app's own).",
    ),
    "declared-unused": (
        "services:\n  web:\n    image: app:1\n"
        "networks:\n  x: {external: true, name: dev_backend}\n",
        "networks: x joins network dev_backend.",
    ),
    "no-tag": (
        "services:\n  web:\n    image: example-app\n",
        "service web uses image example-app, which is not pinned. Give a version tag or a "
        "digest (example-app:1.4.2), or --image=REF.",
    ),
    "latest": (
        "services:\n  web:\n    image: example-app:latest\n",
        "service web uses image example-app:latest, which is not pinned.",
    ),
    "registry-port-no-tag": (
        "services:\n  web:\n    image: registry.local:5000/app\n",
        "uses image registry.local:5000/app, which is not pinned.",
    ),
    "no-image": ("services:\n  web:\n    command: [sleep, '1']\n", "service web has no image."),
    "other-host": (
        "services:\n  web:\n    image: app:1\n    x-nextcandle: {port: 80}\n    deploy:\n"
        "      labels: ['traefik.http.routers.web.rule=Host(`www.example.com`)']\n",
        "service web routes Host(`www.example.com`); an app of stg is routed on stg.localhost "
        "only. Remove the rule (infra fills it in) or name stg.localhost.",
    ),
    "no-host": (
        "services:\n  web:\n    image: app:1\n    x-nextcandle: {port: 80}\n    deploy:\n"
        "      labels: ['traefik.http.routers.web.rule=PathPrefix(`/`)']\n",
        "has a router rule without Host(`stg.localhost`)",
    ),
    "host-pattern": (
        "services:\n  web:\n    image: app:1\n    x-nextcandle: {port: 80}\n    deploy:\n"
        "      labels: ['traefik.http.routers.web.rule=HostRegexp(`.+`)']\n",
        "routes on a pattern",
    ),
    "traefik-label": (
        "services:\n  web:\n    image: app:1\n    x-nextcandle: {port: 80}\n    deploy:\n"
        "      labels: ['traefik.http.routers.web.entrypoints=websecure']\n",
        "sets the label traefik.http.routers.web.entrypoints: Traefik labels are filled in",
    ),
    "external-secret": (
        "services:\n  web:\n    image: app:1\n    secrets: [pw]\n"
        "secrets:\n  pw: {external: true, name: prod_postgres_password-0123456789ab}\n",
        "secret pw is external.",
    ),
    "platform-secret-name": (
        "services:\n  web:\n    image: app:1\n    secrets: [postgres_password]\n"
        "secrets:\n  postgres_password: {file: ./pw}\n",
        "secret postgres_password is one infra gives every app",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS), ids=str)
def test_refusal(tmp_path, case):
    text, message = REFUSALS[case]
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as raised:
        load(path)
    line = str(raised.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: "), line
    assert message in line, line


@pytest.mark.parametrize(
    "text",
    ["- web\n- db\n", "just words\n", "services: {}\n", "version: '3'\n", ""],
    ids=["list", "scalar", "no-services", "services-missing", "empty"],
)
def test_a_file_that_is_not_a_compose_mapping_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError, match="is not a compose file"):
        load(path)


def test_image_option_needs_the_app_image_variable(tmp_path):
    with pytest.raises(SettingsError, match=r"does not use \$\{APP_IMAGE\}"):
        load(write(tmp_path, WEB), image="example-app:2.0.0")


def test_an_unpinned_image_option_is_refused():
    with pytest.raises(SettingsError, match="uses image example-app:latest, which is not pinned"):
        load(EXAMPLE, image="example-app:latest")


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(SettingsError, match="does not exist. Give the app's file"):
        load(tmp_path / "nope.yml")


def test_an_unknown_environment_is_refused_before_the_file_is_read(settings, tmp_path):
    with pytest.raises(SettingsError, match="unknown environment 'qa'"):
        apps.check_file(settings, "qa", tmp_path / "nope.yml")


# --- filled in and planned -------------------------------------------------------------------


@pytest.fixture
def example_plan(settings, values):
    app = compose.load(EXAMPLE, "stg", HOST, settings.data_root, "example-app:1.0.0")
    return plan_app(app, settings, values)


def test_the_stack_is_named_after_the_environment_and_the_app(example_plan):
    assert example_plan.stack == stack_name("stg", "example") == "stg-app-example"


def test_services_join_the_backend_and_routed_ones_traefik(settings, values, tmp_path):
    path = write(tmp_path, WEB + "  worker:\n    image: example-app:1.0.0\n")
    planned = plan_app(load(path), settings, values)
    services = planned.document["services"]
    assert set(services["web"]["networks"]) == {"backend", "traefik"}
    assert set(services["worker"]["networks"]) == {"backend"}
    assert planned.document["networks"] == {
        "backend": {"external": True, "name": "stg_backend"},
        "traefik": {"external": True, "name": "traefik-public"},
    }
    assert not any(k.startswith("traefik.") for k in services["worker"]["deploy"]["labels"])


def test_the_route_is_filled_in_with_names_of_the_stack(example_plan):
    labels = example_plan.document["services"]["web"]["deploy"]["labels"]
    router = "traefik.http.routers.stg-app-example-web"
    assert labels[f"{router}.rule"] == f"Host(`{HOST}`)"
    assert labels[f"{router}.entrypoints"] == "web"
    assert labels["traefik.http.services.stg-app-example-web.loadbalancer.server.port"] == "8000"
    assert labels["traefik.swarm.network"] == "traefik-public"
    assert labels["org.nextcandle.app"] == "example"
    assert labels["org.nextcandle.environment"] == "stg"


def test_the_deploy_policy_rolls_back_a_failed_update_and_uses_no_virtual_ip(example_plan):
    deploy_spec = example_plan.document["services"]["web"]["deploy"]
    assert deploy_spec["update_config"]["failure_action"] == "rollback"
    assert deploy_spec["endpoint_mode"] == "dnsrr"
    assert deploy_spec["restart_policy"]["max_attempts"] == 0


def test_connection_details_are_hashed_secret_files_of_the_environment(example_plan, values):
    by_key = {obj.key: obj for obj in example_plan.secrets}
    assert set(by_key) == set(secrets.APP_SECRETS)
    assert by_key["postgres_host"].data == b"tasks.stg_postgres"
    assert by_key["postgres_password"].data == values["stg_postgres_password"].encode()
    assert by_key["redis_password"].data == values["stg_redis_password"].encode()
    assert by_key["redis_host"].data == b"tasks.stg_redis"
    for obj in by_key.values():
        assert obj.name.startswith(f"stg-app-example_{obj.key}-")
        assert obj.labels["org.nextcandle.stack"] == "stg-app-example"
    service = example_plan.document["services"]["web"]
    assert {ref["source"] for ref in service["secrets"]} == set(by_key)
    text = yaml.safe_dump(example_plan.document)
    for key in ("stg_postgres_password", "stg_redis_password"):
        assert values[key] not in text
    assert values["stg_postgres_password"] not in str(service.get("environment"))


def test_a_changed_password_renames_only_its_secret(settings, values):
    app = compose.load(EXAMPLE, "stg", HOST, settings.data_root, "example-app:1.0.0")
    before = {o.key: o.name for o in plan_app(app, settings, values).secrets}
    changed = {**values, "stg_redis_password": "rotated"}
    after = {o.key: o.name for o in plan_app(app, settings, changed).secrets}
    assert {k for k in before if before[k] != after[k]} == {"redis_password"}


def test_prod_gets_prods_details_and_host(settings, values):
    app = compose.load(EXAMPLE, "prod", "www.example.test", settings.data_root, "example-app:1")
    planned = plan_app(app, settings, values)
    by_key = {obj.key: obj.data for obj in planned.secrets}
    assert by_key["postgres_host"] == b"tasks.prod_postgres"
    assert planned.app.routes["web"].rule == "Host(`www.example.test`)"
    assert planned.networks == ("prod_backend", "traefik-public")


def test_the_files_own_config_gets_a_content_hashed_name(settings, values, tmp_path):
    path = write(
        tmp_path,
        WEB + "    configs: [{source: conf, target: /etc/app.conf}]\n"
        "configs:\n  conf: {file: ./app.conf}\n",
    )
    (path.parent / "app.conf").write_text("a = 1\n")
    first = plan_app(load(path), settings, values)
    (path.parent / "app.conf").write_text("a = 2\n")
    second = plan_app(load(path), settings, values)
    name = first.document["configs"]["conf"]["name"]
    assert name.startswith("stg-app-myapp_conf-")
    assert second.document["configs"]["conf"]["name"] != name


def _rendered_services(plan, tmp_path):
    path = tmp_path / "filled.yml"
    path.write_text(yaml.safe_dump(deploy._escape_dollars(plan.document)))
    rendered = engine.render_stack([str(path)], {})
    return {name: deploy.spec_hash(s, rendered) for name, s in rendered["services"].items()}


def test_the_filled_in_stack_renders_and_hashes_the_same_twice(settings, values, tmp_path):
    """What makes a second deploy change nothing: the same file, the same service hashes."""
    app = compose.load(EXAMPLE, "stg", HOST, settings.data_root, "example-app:1.0.0")
    first = _rendered_services(plan_app(app, settings, values), tmp_path)
    again = compose.load(EXAMPLE, "stg", HOST, settings.data_root, "example-app:1.0.0")
    assert _rendered_services(plan_app(again, settings, values), tmp_path) == first
    other = compose.load(EXAMPLE, "stg", HOST, settings.data_root, "example-app:1.0.1")
    assert _rendered_services(plan_app(other, settings, values), tmp_path) != first


def test_a_dollar_in_the_file_survives_the_second_rendering(settings, values, tmp_path):
    path = write(tmp_path, WEB + "    command: [sh, -c, 'echo $$HOME']\n")
    planned = plan_app(load(path), settings, values)
    out = tmp_path / "filled.yml"
    out.write_text(yaml.safe_dump(deploy._escape_dollars(planned.document)))
    rendered = engine.render_stack([str(out)], {})
    assert rendered["services"]["web"]["command"] == ["sh", "-c", "echo $HOME"]


def test_the_stack_plan_is_the_platforms_own(example_plan, tmp_path):
    stack = example_plan.stack_plan(tmp_path / "filled.yml")
    assert stack.name == "stg-app-example"
    assert stack.files == (tmp_path / "filled.yml",)
    assert stack.ports == {} and stack.data_dirs == ()


def test_the_dry_run_plan_shows_names_and_never_values(example_plan, values):
    text = report.format_app_plan(example_plan)
    assert "stg-app-example_web" in text
    assert "stg_backend  traefik-public" in text
    assert "(/run/secrets/postgres_password)" in text
    for value in values.values():
        assert value not in text


def test_status_lists_apps_under_their_environment():
    apps_ = {"stg-app-web": ("stg", "web"), "prod-app-web": ("prod", "web")}
    order = report._stack_order({"core", "stg", "stg-app-web", "prod-app-web", "other"}, apps_)
    assert order.index("stg-app-web") == order.index("stg") + 1
    assert order.index("prod-app-web") == order.index("prod") + 1
    assert order[-1] == "other"


# --- the command line ------------------------------------------------------------------------


def _invoke(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def operator_env(tmp_path, environ):
    import os

    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    return {**env, **environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}


def test_dry_run_needs_no_daemon_and_changes_nothing(operator_env, tmp_path):
    result = _invoke(
        ["app.deploy", "--name=stg", f"--file={EXAMPLE}", "--image=example-app:1.0.0", "--dry-run"],
        operator_env,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "stack stg-app-example" in result.stdout
    assert "routed: Host(`stg.localhost`) -> port 8000" in result.stdout
    assert not Path(operator_env["SECRETS_FILE"]).exists()


def test_app_stop_without_an_app_is_one_line(operator_env, tmp_path):
    result = _invoke(["app.stop", "--name=stg"], operator_env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no app given. Name it: --app=NAME (see `invoke status`)"


def test_app_stop_dry_run_needs_no_daemon(operator_env, tmp_path):
    result = _invoke(
        ["app.stop", "--name=stg", "--app=example", "--dry-run"], operator_env, tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "would run: docker stack rm stg-app-example" in result.stdout


def test_app_stop_of_an_unknown_environment_is_one_line(operator_env, tmp_path):
    result = _invoke(["app.stop", "--name=qa", "--app=example"], operator_env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: unknown environment 'qa'. Valid: dev, stg, prod."
