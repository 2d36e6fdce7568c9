"""The acceptance suite's image plumbing: what a machine that can pull must pull, and whether
a missing image skips or fails (ACCEPTANCE_REQUIRE_IMAGES)."""

import re
import subprocess
import sys

import pytest

from infra.settings import REPO_ROOT, load_settings
from tests.acceptance import images
from tests.acceptance.conftest import Platform
from tests.acceptance.images import ImageChoice, missing_image_outcome, suite_image_variables

ACCEPTANCE_DIR = REPO_ROOT / "tests" / "acceptance"


@pytest.mark.parametrize(
    ("value", "outcome"),
    [(None, "skip"), ("", "skip"), ("false", "skip"), ("0", "skip"), ("true", "fail"),
     ("TRUE", "fail"), ("1", "fail"), ("yes", "fail")],
    ids=["unset", "empty", "false", "zero", "true", "upper-case", "one", "yes"],
)  # fmt: skip
def test_missing_image_outcome(value, outcome):
    environ = {} if value is None else {images.REQUIRE_IMAGES: value}
    assert missing_image_outcome(environ) == outcome


def test_missing_image_outcome_refuses_a_value_it_does_not_know():
    with pytest.raises(ValueError, match="ACCEPTANCE_REQUIRE_IMAGES='sometimes' is not valid"):
        missing_image_outcome({images.REQUIRE_IMAGES: "sometimes"})


def _platform_without(variable):
    reason = "grafana/grafana:12.3.0 cannot be pulled here and no stand-in can be built"
    choice = ImageChoice(variable, "grafana/grafana:12.3.0", None, reason)
    return Platform(settings=None, swarm=None, images={variable: choice})


def test_require_skips_naming_the_image(monkeypatch):
    monkeypatch.delenv(images.REQUIRE_IMAGES, raising=False)
    with pytest.raises(pytest.skip.Exception, match="GRAFANA_IMAGE: grafana/grafana:12.3.0"):
        _platform_without("GRAFANA_IMAGE").require("GRAFANA_IMAGE")


def test_require_fails_where_every_image_is_required(monkeypatch):
    monkeypatch.setenv(images.REQUIRE_IMAGES, "true")
    with pytest.raises(pytest.fail.Exception, match="GRAFANA_IMAGE: .*no test may skip"):
        _platform_without("GRAFANA_IMAGE").require("GRAFANA_IMAGE")


def test_require_returns_the_reference_of_an_image_that_is_here(monkeypatch):
    monkeypatch.setenv(images.REQUIRE_IMAGES, "true")
    choice = ImageChoice("REDIS_IMAGE", "redis:7.4.7", "nextcandle-standin/redis:7.4.7")
    platform = Platform(settings=None, swarm=None, images={"REDIS_IMAGE": choice})
    assert platform.require("REDIS_IMAGE") == "nextcandle-standin/redis:7.4.7"


def test_the_suite_pulls_what_it_deploys_and_not_the_tunnel_or_the_runner():
    variables = suite_image_variables()
    assert "CLOUDFLARED_IMAGE" not in variables  # core.tunnel.yml: the suite deploys tunnel=False
    assert "RUNNER_IMAGE" not in variables  # the suite never deploys the runner stack
    assert {"TRAEFIK_IMAGE", "POSTGRES_IMAGE", "REDIS_IMAGE", "PROMETHEUS_IMAGE"} <= set(variables)
    assert variables[-1] == "DIND_IMAGE"
    assert len(set(variables)) == len(variables)


def test_every_image_an_acceptance_test_names_is_pulled():
    named = {
        variable
        for path in ACCEPTANCE_DIR.glob("test_*.py")
        for variable in re.findall(r'"([A-Z0-9_]+_IMAGE)"', path.read_text())
    }
    assert named
    assert named - set(suite_image_variables()) - set(images.SUITE_BUILDS) == set()


@pytest.mark.parametrize("variable", sorted(images.SUITE_BUILDS), ids=str)
def test_an_image_the_suite_builds_has_a_dockerfile_and_is_pulled_by_no_one(variable):
    assert (REPO_ROOT / images.SUITE_BUILDS[variable] / "Dockerfile").is_file()
    assert variable not in suite_image_variables()
    assert variable in load_settings().images


def test_build_list_prints_the_pinned_reference_and_the_directory():
    result = subprocess.run(
        [sys.executable, "-m", "tests.acceptance.images", "--build-list"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    pinned = load_settings().images
    assert result.stdout.splitlines() == [
        f"{pinned[v]} {d}" for v, d in images.SUITE_BUILDS.items()
    ]


def test_pull_list_prints_the_pinned_references():
    result = subprocess.run(
        [sys.executable, "-m", "tests.acceptance.images", "--pull-list"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    pinned = load_settings().images
    assert result.stdout.split() == [pinned[v] for v in suite_image_variables()]
    assert pinned["RUNNER_IMAGE"] not in result.stdout.split()
