"""Dashboard queries as Prometheus sees them: read from the Grafana dashboards, Grafana's
variables replaced, written as recording rules for `promtool check rules`, and their metric
names read back from Prometheus's own parser.

No Docker here except in `run_promtool`; tests/unit/test_dashboard_queries.py covers the rest.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra.settings import CONFIGS_DIR

DASHBOARD_DIR = CONFIGS_DIR / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
PROMETHEUS_CONFIG_DIR = CONFIGS_DIR / "prometheus"
PROMTOOL = "/bin/promtool"  # in prom/prometheus and in its stand-in

# What Grafana puts in for its own macros: values valid wherever Grafana allows the macro
# (a range `[...]`, a number, a duration).
GRAFANA_MACROS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__auto": "1m",
}
# For a query variable: its "All" value, else a regex that matches anything; queries put these
# variables inside label matchers (`instance=~"$instance"`).
ANY_VALUE = ".+"

_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute_variables(expr: str, variables: Mapping[str, str]) -> str:
    """`expr` with Grafana's macros and the dashboard's variables replaced by valid values
    (`$x`, `${x}`, `${x:format}`, `[[x]]`). A name that is neither is left as written, as
    Grafana leaves it: `$1` in a label_replace stays, and an undeclared `$typo` outside a
    string stays a parse error for promtool to report."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in GRAFANA_MACROS:
            return GRAFANA_MACROS[name]
        return variables.get(name, match.group(0))

    return _VARIABLE.sub(value, expr)


def variable_values(dashboard: dict) -> dict[str, str]:
    """A value for each of the dashboard's template variables, as Grafana would put in."""
    values = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query", "")
        if variable.get("type") in ("interval", "custom", "constant", "textbox") and isinstance(
            query, str
        ):
            values[variable["name"]] = query.split(",")[0].strip()
        else:
            values[variable["name"]] = variable.get("allValue") or ANY_VALUE
    return values


@dataclass(frozen=True)
class DashboardQuery:
    dashboard: str  # the file's stem, e.g. host
    where: str  # e.g. "panel 3 'CPU busy' query A", in the operator's terms
    record: str  # the recording rule's name that carries it through promtool
    expr: str  # as written in the dashboard
    promql: str  # Grafana's variables replaced


def _panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels folded inside a collapsed row


def _is_prometheus(datasource: object) -> bool:
    if datasource is None:  # Grafana's default data source, which is Prometheus
        return True
    if isinstance(datasource, dict):
        return datasource.get("uid") == "prometheus" or datasource.get("type") == "prometheus"
    return datasource == "prometheus"


def _variable_expr(query: object) -> str | None:
    """The PromQL inside a template variable's query: label_values(EXPR, label) or
    query_result(EXPR); None for label_values(label), metrics(regex) and the like."""
    text = query.get("query", "") if isinstance(query, dict) else str(query or "")
    if match := re.fullmatch(r"\s*label_values\((.+),\s*[\w.]+\s*\)\s*", text, re.S):
        return match.group(1)
    if match := re.fullmatch(r"\s*query_result\((.+)\)\s*", text, re.S):
        return match.group(1)
    return None


def _record_name(dashboard: str, *parts: object) -> str:
    return ":".join(["dashboard", *(re.sub(r"\W", "_", str(p)) for p in (dashboard, *parts))])


def prometheus_queries(dashboard: dict, name: str) -> list[DashboardQuery]:
    """Every PromQL expression of a dashboard: its Prometheus panels' queries and its
    variables' queries. Loki's (LogQL) are not PromQL and are left out."""
    variables = variable_values(dashboard)
    found = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            source = target.get("datasource", panel.get("datasource"))
            if "expr" not in target or not _is_prometheus(source):
                continue
            ref = target.get("refId", "?")
            found.append(
                DashboardQuery(
                    dashboard=name,
                    where=f"panel {panel.get('id')} {panel.get('title', '')!r} query {ref}",
                    record=_record_name(name, f"panel_{panel.get('id')}", ref),
                    expr=target["expr"],
                    promql=substitute_variables(target["expr"], variables),
                )
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query" or not _is_prometheus(variable.get("datasource")):
            continue
        expr = _variable_expr(variable.get("query"))
        if expr is not None:
            found.append(
                DashboardQuery(
                    dashboard=name,
                    where=f"variable {variable['name']}",
                    record=_record_name(name, "variable", variable["name"]),
                    expr=expr,
                    promql=substitute_variables(expr, variables),
                )
            )
    return found


def dashboard_queries(path: Path) -> list[DashboardQuery]:
    return prometheus_queries(json.loads(path.read_text()), path.stem)


def recording_rules(queries: list[DashboardQuery]) -> str:
    """A Prometheus rules file with one recording rule per query, a group per dashboard."""
    groups: dict[str, list[dict]] = {}
    for query in queries:
        groups.setdefault(query.dashboard, []).append(
            {"record": query.record, "expr": query.promql}
        )
    document = {
        "groups": [{"name": f"dashboard_{name}", "rules": rules} for name, rules in groups.items()]
    }
    return yaml.safe_dump(document, sort_keys=False, width=10_000)


def explain(output: str, queries: list[DashboardQuery]) -> str:
    """promtool's output with each rule name followed by the dashboard place it stands for."""
    for query in queries:
        output = output.replace(f'"{query.record}"', f'"{query.record}" ({query.where})')
    return output


def rule_files(directory: Path = PROMETHEUS_CONFIG_DIR) -> tuple[list[Path], list[Path]]:
    """(rules files, rule test files) under configs/prometheus: YAML documents with `groups`,
    and with `tests` (for `promtool test rules`)."""
    rules, tests = [], []
    for path in sorted([*directory.rglob("*.yml"), *directory.rglob("*.yaml")]):
        document = yaml.safe_load(path.read_text())
        if isinstance(document, dict) and "groups" in document:
            rules.append(path)
        elif isinstance(document, dict) and "tests" in document:
            tests.append(path)
    return rules, tests


# --- Docker: promtool in the Prometheus image --------------------------------------------

CHECK_DIR = "/promtool-check"


@dataclass(frozen=True)
class PromtoolResult:
    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _archive(files: Mapping[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"{CHECK_DIR.lstrip('/')}/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def run_promtool(
    client,
    image: str,
    args: list[str],
    files: Mapping[str, bytes | str],
    timeout: float = 120,
    entrypoint: str = PROMTOOL,
) -> PromtoolResult:
    """`promtool ARGS` (or another checker of the image, e.g. amtool) in `image` on the engine
    of `client`, with `files` copied into its working directory (copied, not bind-mounted:
    the image's user reads them whatever the checkout's permissions)."""
    container = client.containers.create(
        image,
        entrypoint=[entrypoint],
        command=args,
        working_dir=CHECK_DIR,
        network_disabled=True,
        labels={"org.nextcandle.acceptance": "promtool"},
    )
    try:
        container.put_archive("/", _archive(files))
        container.start()
        exit_code = container.wait(timeout=timeout)["StatusCode"]
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    return PromtoolResult(exit_code, output)


# --- metric names --------------------------------------------------------------------------


def selector_names(ast: object) -> set[str]:
    """Metric names of every vector and matrix selector in a /api/v1/parse_query AST."""
    names: set[str] = set()
    if isinstance(ast, list):
        for item in ast:
            names |= selector_names(item)
    elif isinstance(ast, dict):
        if ast.get("type") in ("vectorSelector", "matrixSelector"):
            name = ast.get("name") or next(
                (
                    m["value"]
                    for m in ast.get("matchers", [])
                    if m["name"] == "__name__" and m["type"] == "="
                ),
                "",
            )
            if name:
                names.add(name)
        for value in ast.values():
            names |= selector_names(value)
    return names


_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "start", "end", "anchored", "smoothed",
}  # fmt: skip
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKENS = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      |(?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w:]))
      |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      |(?P<ident>[A-Za-z_:][\w:]*)
      |(?P<open>[({\[])
      |(?P<close>[)}\]])
      |(?P<space>\s+)
      |(?P<other>.)""",
    re.X | re.S,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    return [(m.lastgroup, m.group()) for m in _TOKENS.finditer(expr) if m.lastgroup != "space"]


def _closing(tokens: list[tuple[str, str]], start: int) -> int:
    """Index of the bracket that closes the one at `start`."""
    depth = 0
    for index in range(start, len(tokens)):
        kind = tokens[index][0]
        depth += (kind == "open") - (kind == "close")
        if depth == 0:
            return index
    return len(tokens) - 1


def _braced_name(tokens: list[tuple[str, str]]) -> str:
    """The metric name a bare `{...}` selects: `__name__="x"` or, in Prometheus 3, a lone
    quoted name."""
    for index, (kind, text) in enumerate(tokens):
        following = tokens[index + 1 : index + 3]
        if text == "__name__" and [k for k, _ in following] == ["other", "string"]:
            if following[0][1] != "=":
                return ""  # a regex or negative matcher names no one metric
            return _unquote(following[1][1])
        before = tokens[index - 1][1] if index else ","
        after = tokens[index + 1][1] if index + 1 < len(tokens) else ","
        if kind == "string" and before in ("{", ",") and after in ("}", ","):
            return _unquote(text)
    return ""


def _unquote(text: str) -> str:
    return text[1:-1] if text[:1] in "\"'`" else text


def names_in_expression(expr: str) -> set[str]:
    """Metric names in a PromQL expression, read token by token: for a Prometheus without
    /api/v1/parse_query (2.x). Feed it Prometheus's own /api/v1/format_query output."""
    tokens = _tokens(expr)
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "ident" and text.lower() in _GROUPING and following == "(":
            index = _closing(tokens, index + 1) + 1  # a list of label names
            continue
        if kind == "ident" and (following == "(" or following.lower() in ("by", "without")):
            # a function or an aggregation (`sum by (x) (...)` names its grouping first)
            index += 1
            continue
        if kind == "ident" and text.lower() not in _KEYWORDS:
            names.add(text)
            if following == "{":
                index = _closing(tokens, index + 1)
        elif text == "{":
            end = _closing(tokens, index)
            if name := _braced_name(tokens[index + 1 : end]):
                names.add(name)
            index = end
        elif text == "[":
            index = _closing(tokens, index)  # a range or a subquery's range and step
        index += 1
    return names
