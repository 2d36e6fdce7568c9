"""Dashboard queries as the acceptance suite hands them to promtool and Prometheus: Grafana's
variables replaced, one recording rule each, metric names read back. promtool itself runs in
tests/acceptance/test_dashboards.py (it needs the Prometheus image)."""

import json
import re

import pytest
import yaml

from infra.catalog import ENVIRONMENTS
from tests.acceptance import dashboards
from tests.acceptance.dashboards import (
    DASHBOARD_FILES,
    names_in_expression,
    selector_names,
    substitute_variables,
)
from tests.acceptance.test_dashboards import (
    EXPORTERS,
    PRODUCED_LATER,
    PROMETHEUS_SERIES,
    exporter_of,
)

VARIABLES = {"instance": ".+", "window": "5m"}
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

# --- substitution


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("rate(x[$__rate_interval])", "rate(x[1m])"),
        ("rate(x[$__interval])", "rate(x[1m])"),
        ("x / $__interval_ms", "x / 60000"),
        ("increase(x[$__range])", "increase(x[1h])"),
        ("x / $__range_s", "x / 3600"),
        ('x{instance=~"$instance"}', 'x{instance=~".+"}'),
        ('x{instance=~"${instance}"}', 'x{instance=~".+"}'),
        ('x{instance=~"${instance:regex}"}', 'x{instance=~".+"}'),
        ('x{instance=~"[[instance]]"}', 'x{instance=~".+"}'),
        ("rate(x[$window])", "rate(x[5m])"),
        ('label_replace(x, "a", "$1", "b", "(.*)")', 'label_replace(x, "a", "$1", "b", "(.*)")'),
        ("rate(x[$typo])", "rate(x[$typo])"),
    ],
    ids=[
        "rate-interval",
        "interval",
        "interval-ms",
        "range",
        "range-seconds",
        "dollar-name",
        "braced",
        "braced-with-format",
        "double-brackets",
        "interval-variable",
        "regex-group-kept",
        "unknown-kept-for-promtool",
    ],
)
def test_substitute_variables(expr, expected):
    assert substitute_variables(expr, VARIABLES) == expected


def test_substitution_keeps_a_broken_expression_broken():
    broken = 'sum(rate(x{instance=~"$instance"}[$__rate_interval])'
    substituted = substitute_variables(broken, VARIABLES)
    assert substituted.count("(") == substituted.count(")") + 1


def test_variable_values_follow_the_variable_type():
    dashboard = {
        "templating": {
            "list": [
                {"name": "node", "type": "query", "allValue": ".*"},
                {"name": "stack", "type": "query"},
                {"name": "window", "type": "interval", "query": "5m,1h"},
                {"name": "env", "type": "custom", "query": "dev, stg"},
            ]
        }
    }
    assert dashboards.variable_values(dashboard) == {
        "node": ".*",
        "stack": ".+",
        "window": "5m",
        "env": "dev",
    }


# --- extraction

DASHBOARD = {
    "templating": {
        "list": [
            {
                "name": "instance",
                "type": "query",
                "datasource": {"type": "prometheus", "uid": "prometheus"},
                "query": {"query": 'label_values(up{job="a"}, instance)'},
            },
            {
                "name": "job",
                "type": "query",
                "datasource": {"type": "prometheus", "uid": "prometheus"},
                "query": "label_values(job)",
            },
        ]
    },
    "panels": [
        {
            "id": 1,
            "title": "Rate",
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "targets": [{"refId": "A", "expr": 'rate(x{instance=~"$instance"}[$__rate_interval])'}],
        },
        {
            "id": 2,
            "title": "Logs",
            "datasource": {"type": "loki", "uid": "loki"},
            "targets": [{"refId": "A", "expr": '{service="a"} |= "error"'}],
        },
        {
            "id": 3,
            "type": "row",
            "panels": [{"id": 4, "title": "Folded", "targets": [{"refId": "B", "expr": "y"}]}],
        },
    ],
}


def test_queries_are_the_prometheus_ones_of_panels_rows_and_variables():
    queries = dashboards.prometheus_queries(DASHBOARD, "sample")
    assert [(q.where, q.promql) for q in queries] == [
        ("panel 1 'Rate' query A", 'rate(x{instance=~".+"}[1m])'),
        ("panel 4 'Folded' query B", "y"),  # no data source: Grafana's default, Prometheus
        ("variable instance", 'up{job="a"}'),
    ]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_every_prometheus_query_of_a_dashboard_becomes_a_uniquely_named_rule(path):
    queries = dashboards.dashboard_queries(path)
    panel_queries = sum(
        1
        for panel in json.loads(path.read_text()).get("panels", [])
        for target in panel.get("targets", [])
        if (target.get("datasource") or panel.get("datasource") or {}).get("uid") != "loki"
    )
    assert len([q for q in queries if q.where.startswith("panel")]) == panel_queries
    document = yaml.safe_load(dashboards.recording_rules(queries))
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert [rule["expr"] for rule in rules] == [q.promql for q in queries]
    names = [rule["record"] for rule in rules]
    assert len(set(names)) == len(names)
    assert all(METRIC_NAME.fullmatch(name) for name in names)
    assert not any("$" in q.promql.replace("$1", "") for q in queries)


def test_explain_names_the_dashboard_place_of_a_failing_rule():
    (query, *_) = dashboards.prometheus_queries(DASHBOARD, "sample")
    output = f'group "dashboard_sample", rule 1, "{query.record}": could not parse expression'
    assert "panel 1 'Rate' query A" in dashboards.explain(output, [query])


def test_rule_files_are_told_apart_from_the_scrape_config(tmp_path):
    (tmp_path / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "alerts.yml").write_text("groups: []\n")
    (tmp_path / "rules" / "alerts.test.yml").write_text("rule_files: [alerts.yml]\ntests: []\n")
    rules, tests = dashboards.rule_files(tmp_path)
    assert [p.name for p in rules] == ["alerts.yml"]
    assert [p.name for p in tests] == ["alerts.test.yml"]


# --- metric names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (mode) (rate(node_cpu_seconds_total{mode!="idle"}[1m]))',
            {"node_cpu_seconds_total"},
        ),
        ("SUM WITHOUT (job) (x) / on (instance) group_left (a) y", {"x", "y"}),
        ("a offset 5m and b > bool 1e3 unless c @ start()", {"a", "b", "c"}),
        ('{__name__="up", job="x"}', {"up"}),
        ('{__name__=~"up|down"}', set()),
        ('{"my.metric", job="x"}', {"my.metric"}),
        ('label_replace(up, "dst", "$1", "src", "(.*)")', {"up"}),
        ('count_values("value", build_info{v="a}b"})', {"build_info"}),
        ("max_over_time(rate(x[5m])[1h:1m]) - Inf + NaN + 0x1f", {"x"}),
        ("histogram_quantile(0.95, sum by (le) (rate(h_bucket[1m])))", {"h_bucket"}),
        ("topk(5, a:recorded:rate5m)", {"a:recorded:rate5m"}),
        ("vector(1) + time()", set()),
    ],
    ids=[
        "aggregation-grouping-first",
        "grouping-and-matching-lists",
        "keywords-and-modifiers",
        "name-matcher",
        "regex-name-matcher",
        "quoted-name",
        "strings",
        "brace-in-a-label-value",
        "subquery-and-numbers",
        "histogram",
        "recording-rule-name",
        "no-metric",
    ],
)
def test_names_in_expression(expr, names):
    assert names_in_expression(expr) == names


def test_selector_names_reads_vector_and_matrix_selectors_of_the_ast():
    # The shape of /api/v1/parse_query (web/api/v1/translate_ast.go, Prometheus 3).
    ast = {
        "type": "binaryExpr",
        "op": "/",
        "lhs": {
            "type": "call",
            "func": {"name": "rate"},
            "args": [{"type": "matrixSelector", "name": "a_total", "matchers": []}],
        },
        "rhs": {
            "type": "vectorSelector",
            "name": "",
            "matchers": [{"name": "__name__", "type": "=", "value": "b"}],
        },
    }
    assert selector_names(ast) == {"a_total", "b"}


def _dashboard_names(path):
    return {n for q in dashboards.dashboard_queries(path) for n in names_in_expression(q.promql)}


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_every_dashboard_metric_has_an_exporter(path):
    names = _dashboard_names(path)
    assert names
    assert {name for name in names - PRODUCED_LATER.keys() if exporter_of(name) is None} == set()


def test_the_longest_exporter_prefix_wins():
    assert exporter_of("redis_exporter_build_info").prefix == "redis_exporter_"
    assert exporter_of("redis_up").jobs == ("redis",)
    assert len({e.prefix for e in EXPORTERS}) == len(EXPORTERS)


def test_prometheus_own_series_are_matched_by_exact_name():
    assert {exporter_of(name).jobs for name in PROMETHEUS_SERIES} == {("prometheus",)}
    assert exporter_of("upstream_requests_total") is None


def test_postgres_metrics_come_from_each_environments_exporter():
    exporter = exporter_of("pg_stat_database_xact_commit")
    assert exporter.jobs == ("postgres",)
    assert set(exporter.stacks) == set(ENVIRONMENTS)


def test_metrics_produced_later_are_read_by_a_dashboard_and_served_by_no_exporter():
    """The allowance stays exact: no stale name, and none that an exporter now serves (then
    the suite must find it)."""
    read = set().union(*(_dashboard_names(path) for path in DASHBOARD_FILES))
    assert PRODUCED_LATER.keys() <= read
    assert {name: exporter_of(name) for name in PRODUCED_LATER if exporter_of(name)} == {}
    assert all(reason.strip() for reason in PRODUCED_LATER.values())


def _panels_reading(metric):
    """(dashboard, panel, its queries that read `metric`) for every panel that reads it."""
    for path in DASHBOARD_FILES:
        dashboard = json.loads(path.read_text())
        variables = dashboards.variable_values(dashboard)
        for panel in dashboard.get("panels", []):
            exprs = [
                target["expr"]
                for target in panel.get("targets", [])
                if metric in names_in_expression(substitute_variables(target["expr"], variables))
            ]
            if exprs:
                yield path.stem, panel, exprs


@pytest.mark.parametrize("metric", sorted(PRODUCED_LATER), ids=sorted(PRODUCED_LATER))
def test_a_panel_reading_a_metric_produced_later_says_something_while_it_is_absent(metric):
    """Without the metric such a panel would show Grafana's bare "No data", which reads like
    a fault: it shows its own text (noValue) or a default (`or vector(0)`) instead."""
    readers = list(_panels_reading(metric))
    assert readers
    silent = [
        f"{name}: {panel['title']}"
        for name, panel, exprs in readers
        if not panel.get("fieldConfig", {}).get("defaults", {}).get("noValue")
        and not all(re.search(r"\bor\s+vector\(", expr) for expr in exprs)
    ]
    assert silent == []
