"""Static checks of the observability configs: Loki, Alloy, Grafana provisioning, dashboards.

Loki, Alloy and Grafana cannot run here, so these tests catch what would stop them at
start-up or leave a panel silently empty: a schema retention cannot work with, a label the
log collector never sets, a dashboard pointing at a data source that is not provisioned.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
LOKI_CONFIG = CONFIGS / "loki" / "loki.yml"
ALLOY_CONFIG = CONFIGS / "alloy" / "config.alloy"
DATASOURCES = CONFIGS / "grafana" / "provisioning" / "datasources" / "datasources.yml"
DASHBOARD_PROVIDERS = CONFIGS / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD_DIR = CONFIGS / "grafana" / "dashboards"

# Where the stack mounts things, and the addresses other services answer on.
LOKI_DATA_MOUNT = "/loki"
DASHBOARDS_MOUNT = "/etc/grafana/dashboards"
LOKI_PUSH_URL = "http://tasks.shared_loki:3100/loki/api/v1/push"
EXPECTED_DATASOURCES = {
    "prometheus": ("prometheus", "http://tasks.shared_prometheus:9090"),
    "loki": ("loki", "http://tasks.shared_loki:3100"),
}
# The labels DESIGN.md promises on every log stream, plus the stream (stdout/stderr).
ALLOY_LABELS = ("container", "service", "stack", "image", "stream")
REQUIRED_DASHBOARDS = {
    "host": "node_",
    "containers": "container_",
    "traefik": "traefik_",
    "redis": "redis_",
    "postgres": "pg_",
}
# Reads across every exporter, so it has no one prefix; links to every other dashboard.
OVERVIEW_DASHBOARD = DASHBOARD_DIR / "overview.json"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
# Grafana's own variables, never declared in a dashboard.
BUILTIN_VARIABLES = {
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__auto",
    "__dashboard",
    "__org",
    "__user",
}


def _load_yaml(path):
    return yaml.safe_load(path.read_text())


def _hours(duration):
    """Hours in a Prometheus-style duration such as 168h, 7d or 1w."""
    units = {"m": 1 / 60, "h": 1, "d": 24, "w": 168}
    parts = re.fullmatch(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?", str(duration))
    assert parts and any(parts.groups()), f"not a duration: {duration!r}"
    return sum(int(n) * units[u] for n, u in zip(parts.groups(), "wdhm", strict=True) if n)


# --- Loki


@pytest.fixture(scope="module")
def loki():
    return _load_yaml(LOKI_CONFIG)


def _active_schema(loki):
    return loki["schema_config"]["configs"][-1]


def test_loki_active_schema_is_tsdb_v13_with_daily_index(loki):
    schema = _active_schema(loki)
    assert (schema["store"], schema["schema"]) == ("tsdb", "v13")
    # Compactor retention only works on a 24h index period.
    assert schema["index"]["period"] == "24h"
    assert schema["object_store"] == "filesystem"


def test_loki_keeps_seven_days(loki):
    assert loki["limits_config"]["retention_period"] == "168h"


def test_loki_compactor_enforces_retention(loki):
    compactor = loki["compactor"]
    assert compactor["retention_enabled"] is True
    # Loki refuses to start with retention on and no delete request store.
    assert compactor["delete_request_store"] == _active_schema(loki)["object_store"]


def test_loki_accepts_no_sample_older_than_retention(loki):
    limits = loki["limits_config"]
    assert _hours(limits["reject_old_samples_max_age"]) <= _hours(limits["retention_period"])


def test_loki_listens_on_3100_single_tenant_without_reporting(loki):
    assert loki["server"]["http_listen_port"] == 3100
    # Alloy pushes without a tenant header.
    assert loki["auth_enabled"] is False
    assert loki["analytics"]["reporting_enabled"] is False


def _directories(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else key
            if isinstance(value, str) and (key.endswith("directory") or key == "path_prefix"):
                yield where, value
            else:
                yield from _directories(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _directories(value, f"{path}[{index}]")


def test_loki_writes_only_under_its_data_mount(loki):
    # uid 10001 owns /loki (the bind mount) and nothing else it could write to.
    directories = dict(_directories(loki))
    assert "compactor.working_directory" in directories
    outside = {
        key: value
        for key, value in directories.items()
        if value != LOKI_DATA_MOUNT and not value.startswith(LOKI_DATA_MOUNT + "/")
    }
    assert outside == {}


# --- Alloy

_STRING_OR_COMMENT = re.compile(r'"(?:\\.|[^"\\\n])*"|//[^\n]*|/\*.*?\*/', re.S)
_BLOCK_HEADER = re.compile(r'^([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*)(?:\s+"([^"]*)")?\s*\{', re.M)


def _mask(text, keep_strings):
    """Blank out comments (and, unless kept, string contents) without moving offsets."""

    def blank(match):
        token = match.group(0)
        if token.startswith('"'):
            return token if keep_strings else '"' + " " * (len(token) - 2) + '"'
        return re.sub(r"[^\n]", " ", token)

    return _STRING_OR_COMMENT.sub(blank, text)


@pytest.fixture(scope="module")
def alloy_text():
    return _mask(ALLOY_CONFIG.read_text(), keep_strings=True)


@pytest.fixture(scope="module")
def alloy_blocks():
    """Top-level blocks as {(component, label): body}."""
    raw = ALLOY_CONFIG.read_text()
    code = _mask(raw, keep_strings=True)
    structure = _mask(raw, keep_strings=False)
    blocks, position = {}, 0
    while match := _BLOCK_HEADER.search(structure, position):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(structure)):
            depth += {"{": 1, "}": -1}.get(structure[end], 0)
            if depth == 0:
                break
        assert depth == 0, f"unclosed block {match.group(1)} {match.group(2)!r}"
        label = code[match.start(2) : match.end(2)] if match.group(2) is not None else ""
        key = (match.group(1), label)
        assert key not in blocks, f"component {key} declared twice"
        blocks[key] = code[match.end() : end]
        position = end + 1
    return blocks


def _attribute(body, name):
    found = re.search(rf"^\s*{name}\s*=\s*(.+?)\s*$", body, re.M)
    return found.group(1) if found else None


def _blocks_of(alloy_blocks, component):
    return {label: body for (kind, label), body in alloy_blocks.items() if kind == component}


def test_alloy_brackets_balance():
    structure = _mask(ALLOY_CONFIG.read_text(), keep_strings=False)
    for opening, closing in ("{}", "[]", "()"):
        depth = 0
        for character in structure:
            depth += (character == opening) - (character == closing)
            assert depth >= 0, f"unexpected {closing!r}"
        assert depth == 0, f"unclosed {opening!r}"


@pytest.mark.parametrize("label", ALLOY_LABELS, ids=ALLOY_LABELS)
def test_alloy_sets_label(alloy_text, label):
    assert re.search(rf'^\s*target_label\s*=\s*"{label}"', alloy_text, re.M)


def test_alloy_stream_label_is_set_where_the_log_stream_is_known(alloy_blocks):
    # __meta_docker_container_log_stream exists only inside loki.source.docker; a rule
    # for it in discovery.relabel would silently produce no stream label.
    holders = [
        key for key, body in alloy_blocks.items() if "__meta_docker_container_log_stream" in body
    ]
    assert len(holders) == 1
    kind, label = holders[0]
    assert kind in ("loki.relabel", "discovery.relabel")
    sources = _blocks_of(alloy_blocks, "loki.source.docker")
    assert sources
    for body in sources.values():
        assert _attribute(body, "relabel_rules") == f"{kind}.{label}.rules"


def test_alloy_reads_the_local_docker_socket(alloy_blocks):
    for component in ("discovery.docker", "loki.source.docker"):
        bodies = _blocks_of(alloy_blocks, component)
        assert bodies, f"no {component} component"
        for body in bodies.values():
            assert _attribute(body, "host") == '"unix:///var/run/docker.sock"'


def test_alloy_pushes_to_shared_loki(alloy_blocks):
    writers = _blocks_of(alloy_blocks, "loki.write")
    urls = [
        url
        for body in writers.values()
        for url in re.findall(r'^\s*url\s*=\s*"([^"]*)"', body, re.M)
    ]
    assert urls == [LOKI_PUSH_URL]


def test_alloy_references_name_declared_components(alloy_blocks):
    code = _mask(ALLOY_CONFIG.read_text(), keep_strings=False)
    references = re.findall(
        r"\b((?:discovery|loki|prometheus)(?:\.[a-z_]+)+)\.([A-Za-z0-9_]+)\."
        r"(?:targets|output|receiver|rules)\b",
        code,
    )
    assert references
    missing = sorted({ref for ref in references if ref not in alloy_blocks})
    assert missing == []


# --- Grafana provisioning


@pytest.fixture(scope="module")
def datasources():
    document = _load_yaml(DATASOURCES)
    assert document["apiVersion"] == 1
    return document["datasources"]


def test_datasources_are_exactly_prometheus_and_loki(datasources):
    found = {source["uid"]: (source["type"], source["url"]) for source in datasources}
    assert len(found) == len(datasources), "duplicate data source uid"
    assert found == EXPECTED_DATASOURCES


def test_prometheus_is_the_only_default_datasource(datasources):
    assert [source["uid"] for source in datasources if source.get("isDefault")] == ["prometheus"]


def test_datasource_names_are_unique(datasources):
    names = [source["name"] for source in datasources]
    assert len(set(names)) == len(names)


def test_dashboard_provider_reads_the_mounted_folder():
    document = _load_yaml(DASHBOARD_PROVIDERS)
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider.get("type", "file") == "file"
    assert provider["folder"] == "Platform"
    assert provider["options"]["path"] == DASHBOARDS_MOUNT


# --- dashboards


def _dashboard(path):
    return json.loads(path.read_text())


def _panels(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels folded inside a collapsed row


def _queries(dashboard):
    for panel in _panels(dashboard):
        for query in panel.get("targets", []):
            yield panel, query


@pytest.fixture(scope="module")
def provisioned_uids():
    return {source["uid"] for source in _load_yaml(DATASOURCES)["datasources"]}


@pytest.mark.parametrize("name", sorted(REQUIRED_DASHBOARDS), ids=sorted(REQUIRED_DASHBOARDS))
def test_required_dashboard_exists(name):
    assert (DASHBOARD_DIR / f"{name}.json").is_file()


def test_overview_links_to_every_other_dashboard():
    """Through a link by tag, so a dashboard added later is listed without editing this one:
    every other dashboard must carry the tags the link lists."""
    overview = _dashboard(OVERVIEW_DASHBOARD)
    tag_links = [link for link in overview["links"] if link.get("type") == "dashboards"]
    assert tag_links
    tags = set(tag_links[0]["tags"])
    assert tags
    others = [path for path in DASHBOARD_FILES if path != OVERVIEW_DASHBOARD]
    assert others
    unlisted = {path.stem for path in others if not tags <= set(_dashboard(path)["tags"])}
    assert unlisted == set()


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_dashboard_has_identity(path):
    dashboard = _dashboard(path)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard.get("uid", ""))
    assert dashboard.get("title", "").strip()
    assert dashboard.get("schemaVersion") == 39
    assert "id" not in dashboard or dashboard["id"] is None  # provisioning assigns it


def test_dashboard_uids_and_titles_are_unique():
    dashboards = [_dashboard(path) for path in DASHBOARD_FILES]
    uids = [dashboard["uid"] for dashboard in dashboards]
    titles = [dashboard["title"] for dashboard in dashboards]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_dashboard_uses_only_provisioned_datasources(path, provisioned_uids):
    dashboard = _dashboard(path)
    assert provisioned_uids == set(EXPECTED_DATASOURCES)
    used = {}
    for panel in _panels(dashboard):
        if panel.get("type") == "row":
            continue
        used[f"panel {panel.get('title')!r}"] = (panel.get("datasource") or {}).get("uid")
    for panel, query in _queries(dashboard):
        if "datasource" in query:
            used[f"query {query['refId']} of {panel.get('title')!r}"] = query["datasource"]["uid"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            used[f"variable {variable['name']}"] = variable["datasource"]["uid"]
    assert used
    assert {where: uid for where, uid in used.items() if uid not in provisioned_uids} == {}


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_dashboard_panels_have_ids_places_and_queries(path):
    dashboard = _dashboard(path)
    panels = [panel for panel in _panels(dashboard) if panel.get("type") != "row"]
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids), "duplicate panel id"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [query["refId"] for query in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_dashboard_queries_are_well_formed(path):
    for panel, query in _queries(_dashboard(path)):
        expr = query.get("expr", "")
        assert expr.strip(), f"empty query in {panel['title']!r}"
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), f"{panel['title']!r}: {expr}"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_dashboard_variables_used_are_declared(path):
    dashboard = _dashboard(path)
    declared = {variable["name"] for variable in dashboard.get("templating", {}).get("list", [])}
    texts = [query.get("expr", "") for _, query in _queries(dashboard)]
    texts += [
        variable.get("query", {}).get("query", "")
        if isinstance(variable.get("query"), dict)
        else variable.get("query", "")
        for variable in dashboard.get("templating", {}).get("list", [])
    ]
    used = {name for text in texts for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)}
    assert used - declared - BUILTIN_VARIABLES == set()


@pytest.mark.parametrize(
    ("name", "prefix"),
    sorted(REQUIRED_DASHBOARDS.items()),
    ids=sorted(REQUIRED_DASHBOARDS),
)
def test_dashboard_queries_its_exporter(name, prefix):
    path = DASHBOARD_DIR / f"{name}.json"
    exprs = [
        query["expr"]
        for _, query in _queries(_dashboard(path))
        if query.get("datasource", {}).get("uid") == "prometheus"
    ]
    assert exprs and all(prefix in expr for expr in exprs)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_dashboard_log_queries_use_labels_alloy_sets(path):
    for panel, query in _queries(_dashboard(path)):
        if query.get("datasource", {}).get("uid") != "loki":
            continue
        selector = re.match(r"\s*\{([^}]*)\}", query["expr"])
        assert selector, f"{panel['title']!r} has no stream selector"
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", selector.group(1)))
        assert labels and labels <= set(ALLOY_LABELS), f"{panel['title']!r}: {labels}"
