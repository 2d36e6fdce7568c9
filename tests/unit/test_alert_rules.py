"""Alert rules (configs/prometheus/rules) proven with no Docker daemon: every rules file passes
`promtool check rules`, every rule test file (configs/prometheus/tests) passes `promtool test
rules`, and every alert has a severity, a summary, a description, and cases in which it fires,
stays quiet and resolves.

promtool is Debian's (`bash .ci/promtool` unpacks it into .cache/promtool; `nox -s unit` does
that itself). It runs in configs/prometheus with paths relative to it, as the acceptance suite
runs the Prometheus image's promtool on a copy of that folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from infra.settings import REPO_ROOT
from tests.acceptance import dashboards

PROMETHEUS_DIR = dashboards.PROMETHEUS_CONFIG_DIR
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_FILES, RULE_TEST_FILES = dashboards.rule_files()
PROMTOOL = Path(os.environ.get("PROMTOOL") or REPO_ROOT / ".cache" / "promtool" / "promtool")
SEVERITIES = ("critical", "warning")


def _relative(path: Path) -> str:
    return str(path.relative_to(PROMETHEUS_DIR))


@dataclass(frozen=True)
class Alert:
    file: Path
    group: str
    rule: dict

    @property
    def name(self) -> str:
        return self.rule["alert"]


def alerts_in(paths: list[Path]) -> list[Alert]:
    return [
        Alert(path, group["name"], rule)
        for path in paths
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


ALERTS = alerts_in(RULE_FILES)


# --- promtool ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool():
    """`promtool ARGS` in a configs/prometheus folder (the checkout's unless told)."""
    if not os.access(PROMTOOL, os.X_OK):
        pytest.fail(
            f"promtool is missing ({PROMTOOL}): get it with `bash .ci/promtool`", pytrace=False
        )

    def run(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=120
        )

    return run


@pytest.mark.parametrize("path", RULE_FILES, ids=_relative)
def test_rules_file_passes_promtool_check(promtool, path):
    result = promtool("check", "rules", _relative(path))
    count = sum(len(g["rules"]) for g in yaml.safe_load(path.read_text())["groups"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {count} rules found" in result.stdout, result.stdout


@pytest.mark.parametrize("path", RULE_TEST_FILES, ids=_relative)
def test_rule_tests_pass_promtool(promtool, path):
    result = promtool("test", "rules", _relative(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


@pytest.fixture
def prometheus_copy(tmp_path) -> Path:
    """configs/prometheus copied whole, as the acceptance suite hands it to promtool."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    return copy


def test_promtool_reports_an_alert_that_does_not_fire_as_expected(promtool, prometheus_copy):
    """The rule tests can fail: a firing case expecting the wrong severity is reported with
    the alert's name, and the copied folder's relative rule_files still resolve."""
    path = prometheus_copy / "tests" / "node.yml"
    document = yaml.safe_load(path.read_text())
    case = next(c for t in document["tests"] for c in t["alert_rule_test"] if c["exp_alerts"])
    labels = case["exp_alerts"][0]["exp_labels"]
    severity, labels["severity"] = labels["severity"], "info"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = promtool("test", "rules", "tests/node.yml", cwd=prometheus_copy)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"alertname: {case['alertname']}" in output, output
    assert f'severity="{severity}"' in output and "FAILED" in output, output


def test_promtool_reports_a_broken_rule(promtool, prometheus_copy):
    path = prometheus_copy / "rules" / "node.yml"
    path.write_text(path.read_text().replace("up{job=", "up({job=", 1))
    result = promtool("check", "rules", "rules/node.yml", cwd=prometheus_copy)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert '"NodeDown"' in output and "parse error" in output, output


# --- what every alert must have ----------------------------------------------------------


def test_there_are_alert_rules_and_rule_tests():
    assert ALERTS, "no alert rule under configs/prometheus"
    assert RULE_TEST_FILES, "no rule test file under configs/prometheus"


def test_rules_files_are_where_the_stack_mounts_them():
    """The shared stack mounts configs/prometheus/rules/*.yml: a rules file elsewhere, or
    named .yaml, would never be loaded."""
    misplaced = [_relative(p) for p in RULE_FILES if p.parent != RULES_DIR or p.suffix != ".yml"]
    assert not misplaced


def test_alertnames_are_unique():
    names = [alert.name for alert in ALERTS]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_alert_has_a_severity_a_summary_and_a_description(alert):
    assert alert.rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = alert.rule.get("annotations", {})
    assert annotations.get("summary", "").strip(), f"{alert.name} has no summary"
    assert annotations.get("description", "").strip(), f"{alert.name} has no description"


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_metrics_an_alert_reads_are_named_in_its_file(alert):
    """Each rules file says which metrics it depends on (the exporters must produce them):
    every metric an expression reads is named in the file's comments."""
    comments = " ".join(
        line.split("#", 1)[1] for line in alert.file.read_text().splitlines() if "#" in line
    )
    named = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", comments))
    assert dashboards.names_in_expression(alert.rule["expr"]) - named == set()


# --- the rule tests' cases -----------------------------------------------------------------

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(duration: str) -> float:
    """A Prometheus duration ("1h30m") in seconds."""
    parts = _DURATION.findall(str(duration))
    if not parts or "".join(n + u for n, u in parts) != str(duration):
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)


@dataclass
class Coverage:
    """What the cases of one alert show: it fires, it stays quiet, it resolves (a quiet
    evaluation after a firing one, on the same input series)."""

    fires: bool = False
    quiet: bool = False
    resolves: bool = False

    def missing(self) -> list[str]:
        return [what for what, shown in vars(self).items() if not shown]


def rule_files_of(test_file: Path, document: dict) -> set[Path]:
    """The rules files a test file loads, resolved as promtool does: relative to the test
    file's own folder."""
    return {(test_file.parent / name).resolve() for name in document.get("rule_files", [])}


def cases(document: dict) -> Iterator[tuple[int, str, float, list]]:
    """(test index, alertname, eval time in seconds, expected alerts) of each case."""
    for index, test in enumerate(document.get("tests", [])):
        for case in test.get("alert_rule_test", []):
            yield index, case["alertname"], seconds(case["eval_time"]), case.get("exp_alerts") or []


def coverage(documents: list[dict], alertname: str) -> Coverage:
    found = Coverage()
    for document in documents:
        firing: dict[int, list[float]] = {}
        quiet: dict[int, list[float]] = {}
        for index, name, at, expected in cases(document):
            if name == alertname:
                (firing if expected else quiet).setdefault(index, []).append(at)
        found.fires |= bool(firing)
        found.quiet |= bool(quiet)
        found.resolves |= any(
            max(quiet.get(index, [0])) > min(times) for index, times in firing.items()
        )
    return found


TEST_DOCUMENTS = {path: yaml.safe_load(path.read_text()) for path in RULE_TEST_FILES}


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_alert_has_cases_where_it_fires_stays_quiet_and_resolves(alert):
    documents = [
        document
        for path, document in TEST_DOCUMENTS.items()
        if alert.file.resolve() in rule_files_of(path, document)
    ]
    missing = coverage(documents, alert.name).missing()
    assert not missing, (
        f"{alert.name} ({_relative(alert.file)}) has no promtool case where it "
        + ", none where it ".join(missing)
    )


@pytest.mark.parametrize("path", RULE_TEST_FILES, ids=_relative)
def test_firing_cases_state_labels_and_annotations(path):
    """promtool compares exactly what is given: a firing case without the severity or the
    annotations would let either change unnoticed."""
    for _, name, at, expected in cases(TEST_DOCUMENTS[path]):
        for alert in expected:
            where = f"{name} at {at:g} s"
            assert "severity" in alert.get("exp_labels", {}), where
            annotations = alert.get("exp_annotations", {})
            assert {"summary", "description"} <= set(annotations), where
            assert not any("<no value>" in text for text in annotations.values()), where


@pytest.mark.parametrize("path", RULE_TEST_FILES, ids=_relative)
def test_rule_tests_load_rules_files_of_this_folder_by_relative_path(path):
    """Relative to the test file (as promtool resolves them) and inside configs/prometheus,
    so they resolve in the checkout and in a copy of the folder alike."""
    document = TEST_DOCUMENTS[path]
    names = document.get("rule_files", [])
    assert names and not any(Path(name).is_absolute() for name in names)
    for resolved in rule_files_of(path, document):
        assert resolved in {p.resolve() for p in RULE_FILES}, resolved


def test_every_rules_file_has_a_rule_test_file():
    tested = {p for path, doc in TEST_DOCUMENTS.items() for p in rule_files_of(path, doc)}
    assert [_relative(p) for p in RULE_FILES if p.resolve() not in tested] == []


# --- the coverage reading itself -----------------------------------------------------------


def _document(*evaluations: tuple[str, bool]) -> dict:
    """One test whose cases evaluate alert A at each time, firing or not."""
    checks = [
        {"alertname": "A", "eval_time": at, "exp_alerts": [{"exp_labels": {}}] if fires else []}
        for at, fires in evaluations
    ]
    return {"tests": [{"alert_rule_test": checks}]}


@pytest.mark.parametrize(
    ("evaluations", "missing"),
    [
        ((("5m", False), ("10m", True), ("20m", False)), []),
        ((("10m", True),), ["quiet", "resolves"]),
        ((("5m", False), ("10m", True)), ["resolves"]),
        ((("1h", False), ("90m", True)), ["resolves"]),
        ((("5m", False),), ["fires", "resolves"]),
    ],
    ids=["complete", "fires-only", "quiet-before-only", "durations-compared", "never-fires"],
)
def test_coverage_tells_each_kind_of_case_apart(evaluations, missing):
    assert coverage([_document(*evaluations)], "A").missing() == missing


def test_a_resolve_must_follow_a_firing_case_on_the_same_series():
    firing_then_quiet_elsewhere = {
        "tests": [
            {"alert_rule_test": [{"alertname": "A", "eval_time": "10m", "exp_alerts": [{}]}]},
            {"alert_rule_test": [{"alertname": "A", "eval_time": "20m", "exp_alerts": []}]},
        ]
    }
    assert coverage([firing_then_quiet_elsewhere], "A").missing() == ["resolves"]


@pytest.mark.parametrize(
    ("duration", "expected"), [("90s", 90), ("1h30m", 5400), ("26h", 93600), ("500ms", 0.5)]
)
def test_seconds(duration, expected):
    assert seconds(duration) == expected


def test_seconds_refuses_what_is_not_a_duration():
    with pytest.raises(ValueError):
        seconds("10 minutes")
