"""The GitHub workflow, read as GitHub reads it (there is no GitHub here to run it)."""

import pytest
import yaml

from infra.settings import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yml"


@pytest.fixture(scope="module")
def workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(workflow, job):
    return workflow["jobs"][job]["steps"]


def _uses(step, action):
    return step.get("uses", "").split("@")[0] == action


def test_a_newer_run_cancels_the_superseded_one(workflow):
    assert workflow["concurrency"] == {
        "group": "${{ github.workflow }}-${{ github.ref }}",
        "cancel-in-progress": True,
    }


@pytest.mark.parametrize("job", ["lint-unit", "acceptance"])
def test_pip_is_cached_on_the_project_file(workflow, job):
    (setup,) = [s for s in _steps(workflow, job) if _uses(s, "actions/setup-python")]
    assert setup["uses"] == "actions/setup-python@v5"
    assert setup["with"]["cache"] == "pip"
    assert setup["with"]["cache-dependency-path"] == "pyproject.toml"
    assert (REPO_ROOT / setup["with"]["cache-dependency-path"]).is_file()


def test_acceptance_requires_every_image_and_keeps_its_artifacts(workflow):
    env = workflow["jobs"]["acceptance"]["env"]
    assert env["CI"] == "true"
    assert env["ACCEPTANCE_REQUIRE_IMAGES"] == "true"
    assert env["ACCEPTANCE_ARTIFACTS"]


def test_acceptance_uploads_the_artifacts_only_when_it_fails(workflow):
    steps = _steps(workflow, "acceptance")
    (upload,) = [s for s in steps if _uses(s, "actions/upload-artifact")]
    assert upload["uses"] == "actions/upload-artifact@v4"
    assert upload["if"] == "failure()"
    assert upload["with"]["path"] == "${{ env.ACCEPTANCE_ARTIFACTS }}"
    runs = [i for i, s in enumerate(steps) if "nox -s acceptance" in s.get("run", "")]
    assert runs and runs[0] < steps.index(upload)


def test_acceptance_pulls_the_suite_pull_list_before_the_suite(workflow):
    steps = _steps(workflow, "acceptance")
    scripts = [s.get("run", "") for s in steps]
    (pull,) = [i for i, run in enumerate(scripts) if "docker pull" in run]
    assert "python -m tests.acceptance.images --pull-list" in scripts[pull]
    assert "images.env" not in scripts[pull]  # not a second, hand-made list
    assert pull < next(i for i, run in enumerate(scripts) if "nox -s acceptance" in run)


def test_acceptance_builds_the_suites_unpulled_images_before_the_suite(workflow):
    scripts = [s.get("run", "") for s in _steps(workflow, "acceptance")]
    (build,) = [i for i, run in enumerate(scripts) if "docker build" in run]
    assert "python -m tests.acceptance.images --build-list" in scripts[build]
    assert build < next(i for i, run in enumerate(scripts) if "nox -s acceptance" in run)
