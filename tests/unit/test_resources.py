"""Every service's reservations and limits against the original platform's.

The original's values are catalog.ORIGINAL_RESOURCES. A service carries them, or a comment in
its stack file's `resources:` block says why not: `Departure:` (naming the original's value)
where a recorded value differs, `Not recorded:` where no record of a value survives. The table
in stacks/README.md is made from the same two sources and must say the same. Also the
reservations scale for small nodes (RESERVATIONS_SCALE) and what the acceptance suite uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from infra import catalog, deploy, engine, report
from infra import plan as planning
from infra.catalog import ORIGINAL_RESOURCES, RUNNER, STACKS, OriginalResources
from infra.errors import SettingsError
from infra.secrets import generate_values
from infra.settings import REPO_ROOT, load_settings
from tests.acceptance.conftest import RESERVATIONS_SCALE as SUITE_SCALE
from tests.stack_cli import needs_stack_config

STACKS_README = REPO_ROOT / "stacks" / "README.md"
START, END = "<!-- resources:start -->", "<!-- resources:end -->"
FIELDS = ("CPU reservation", "CPU limit", "memory reservation", "memory limit")
DEPARTURE, NOT_RECORDED = "Departure:", "Not recorded:"


@dataclass(frozen=True)
class Declared:
    """A service as its stack files declare it (variables not yet filled in)."""

    stack: str
    service: str
    path: Path | None  # the file whose `resources:` block it has; None: it has none
    resources: dict
    deploy: dict

    @property
    def name(self) -> str:
        return f"{self.stack}_{self.service}"


def declared_services() -> dict[str, Declared]:
    """Every service of every stack (tunnel and port overlays included), in file order."""
    found: dict[str, Declared] = {}
    for stack in STACKS:
        for path in planning.stack_files(stack, tunnel=True):
            services = yaml.safe_load(path.read_text()).get("services") or {}
            for service, spec in services.items():
                name = f"{stack}_{service}"
                deploy_spec = spec.get("deploy") or {}
                if "resources" in deploy_spec or name not in found:
                    found[name] = Declared(
                        stack,
                        service,
                        path if "resources" in deploy_spec else None,
                        deploy_spec.get("resources") or {},
                        deploy_spec,
                    )
    return found


DECLARED = declared_services()
NAMES = list(dict.fromkeys([*DECLARED, *ORIGINAL_RESOURCES]))


def resources_comments(path: Path) -> dict[str, str]:
    """The comment lines inside each service's `resources:` block, joined, by service."""
    comments: dict[str, list[str]] = {}
    in_services, service, block = False, None, None
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text:
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0 and not text.startswith("#"):
            in_services, service, block = text == "services:", None, None
        elif in_services and indent == 2 and not text.startswith("#"):
            service, block = text.removesuffix(":"), None
        elif service and text == "resources:":
            block = indent
        elif block is not None and indent <= block:
            block = None
        elif block is not None and text.startswith("#"):
            comments.setdefault(service, []).append(text.lstrip("#").strip())
    return {name: " ".join(lines) for name, lines in comments.items()}


def _values(declared: Declared, settings) -> tuple:
    """(CPU reservation, CPU limit, memory reservation, memory limit), variables filled in:
    CPUs as Decimal, memory in bytes; None where the stack file gives none."""
    variables = planning.stack_variables(declared.stack, settings)
    values = []
    for kind in ("reservations", "limits"):
        values.append(declared.resources.get(kind, {}).get("cpus"))
    for kind in ("reservations", "limits"):
        values.append(declared.resources.get(kind, {}).get("memory"))
    filled = [
        None if value is None else planning.interpolate(str(value), variables, declared.name)
        for value in values
    ]
    return (
        *(None if v is None else Decimal(v) for v in filled[:2]),
        *(None if v is None else planning.memory_bytes(v) for v in filled[2:]),
    )


def _original(record: OriginalResources) -> tuple:
    cpu_reservation, cpu_limit, memory_reservation, memory_limit = record.values()
    return (
        *(None if v is None else Decimal(v) for v in (cpu_reservation, cpu_limit)),
        *(
            None if v is None else planning.memory_bytes(v)
            for v in (memory_reservation, memory_limit)
        ),
    )


def _cpu(value: Decimal | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def _memory(value: int | None) -> str:
    if value is None:
        return "?"
    for size, unit in ((1024**3, "G"), (1024**2, "M")):
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def _shown(values: tuple) -> str:
    cpu_reservation, cpu_limit, memory_reservation, memory_limit = values
    return (
        f"{_cpu(cpu_reservation)}-{_cpu(cpu_limit)} / "
        f"{_memory(memory_reservation)}-{_memory(memory_limit)}"
    )


def _replicas(declared: Declared, settings) -> int:
    """Tasks on a one-node swarm: a global service runs one."""
    if declared.deploy.get("mode") == "global":
        return 1
    variables = planning.stack_variables(declared.stack, settings)
    return int(planning.interpolate(str(declared.deploy.get("replicas", 1)), variables, "replicas"))


def _cpu_reservations(settings, names) -> Decimal:
    return sum(
        (_values(DECLARED[n], settings)[0] or Decimal(0)) * _replicas(DECLARED[n], settings)
        for n in names
    )


def _suite_names() -> list[str]:
    """What the acceptance suite deploys: every stack of deploy.all, core without the tunnel."""
    tunnel = set(yaml.safe_load(planning.stack_files(catalog.CORE)[-1].read_text())["services"])
    return [
        name
        for name, d in DECLARED.items()
        if d.stack in catalog.DEPLOY_ALL and not (d.stack == catalog.CORE and d.service in tunnel)
    ]


def expected_table(settings) -> str:
    """stacks/README.md's table, from the catalog and the stack files."""
    rows = [
        "| service | the original's: CPU / memory, reservation-limit | here | the record | which |",
        "|---|---|---|---|---|",
    ]
    for name, declared in DECLARED.items():
        record = ORIGINAL_RESOURCES.get(name)
        if record is None:
            continue
        original, here = _original(record), _values(declared, settings)
        pairs = list(zip(original, here, strict=True))
        which = [
            label
            for label, applies in (
                ("departure", any(o is not None and o != h for o, h in pairs)),
                ("not recorded", any(o is None for o, _ in pairs)),
            )
            if applies
        ]
        if record.source == catalog.NOT_IN_THE_ORIGINAL:
            which = ["not in the original"]
        rows.append(
            f"| `{name}` | {_shown(original)} | {_shown(here)} | {record.source} | "
            f"{'; '.join(which) or 'the original'} |"
        )
    platform = _cpu_reservations(settings, DECLARED)
    suite = _cpu_reservations(settings, _suite_names())
    rows += [
        "",
        f"CPU reservations on one node, RUNNER_REPLICAS={settings.runner_replicas}: the whole "
        f"platform {platform:.2f}; what the acceptance suite deploys (every stack but the "
        f"runner, core without the tunnel) {suite:.2f}. The suite deploys with "
        f"RESERVATIONS_SCALE={SUITE_SCALE}: {platform * Decimal(SUITE_SCALE):.2f} and "
        f"{suite * Decimal(SUITE_SCALE):.2f}.",
    ]
    return "\n".join(rows)


def test_every_service_has_a_record_of_the_original_and_every_record_a_service():
    missing = sorted(set(DECLARED) - set(ORIGINAL_RESOURCES))
    extra = sorted(set(ORIGINAL_RESOURCES) - set(DECLARED))
    assert not missing, (
        f"{missing}: no entry in catalog.ORIGINAL_RESOURCES. Add what the original had, or "
        "OriginalResources(NOT_IN_THE_ORIGINAL) for a service it did not have."
    )
    assert not extra, f"catalog.ORIGINAL_RESOURCES names {extra}, which no stack file has"


@pytest.mark.parametrize("name", NAMES)
def test_resources_are_the_originals_or_the_stack_file_says_why(settings, name):
    if name not in DECLARED or name not in ORIGINAL_RESOURCES:
        pytest.fail(f"{name} is not in both the stack files and catalog.ORIGINAL_RESOURCES")
    declared, record = DECLARED[name], ORIGINAL_RESOURCES[name]
    assert declared.path is not None, f"{name} has no resources: block"
    here, original = _values(declared, settings), _original(record)
    comment = resources_comments(declared.path).get(declared.service, "")
    where = f"{declared.path.name}, service {declared.service}, resources: comment"

    differs = [
        (field, value)
        for field, value, o, h in zip(FIELDS, record.values(), original, here, strict=True)
        if o is not None and o != h
    ]
    if differs:
        assert comment.startswith(DEPARTURE) or f" {DEPARTURE}" in f" {comment}", (
            f"{name}: {', '.join(f for f, _ in differs)} differ from the original's "
            f"({_shown(original)}, {record.source}) and {where} has no '{DEPARTURE} <why>'"
        )
        for field, value in differs:
            assert value in comment, f"{where} must name the original's {field}, {value}"
    else:
        assert DEPARTURE not in comment, (
            f"{name} carries the original's values ({_shown(original)}); {where} still "
            f"says '{DEPARTURE}'"
        )

    unknown = [field for field, o in zip(FIELDS, original, strict=True) if o is None]
    if unknown:
        assert NOT_RECORDED in comment, (
            f"{name}: the original's {', '.join(unknown)} not recorded ({record.source}); "
            f"{where} must say '{NOT_RECORDED} ...'"
        )
    else:
        assert NOT_RECORDED not in comment, f"{name}: every value is recorded; {where} says not"


def test_stacks_readme_table_says_which(settings):
    text = STACKS_README.read_text()
    assert START in text and END in text, f"stacks/README.md lacks {START} ... {END}"
    table = text[text.index(START) + len(START) : text.index(END)].strip()
    expected = expected_table(settings)
    assert table == expected, f"stacks/README.md's table should read:\n{expected}"


def test_restored_values_are_exactly_the_original_records(settings):
    """The values issue 17 gives, written out here on purpose: the catalog must hold them."""
    issue = {
        "shared_n8n": ("0.50", "2.00", "512M", "2G"),
        "shared_prometheus": ("0.10", "0.50", "128M", "512M"),
        "runner_runner": ("0.50", "2.00", "1G", "4G"),
        "shared_grafana": (None, "0.25", None, "256M"),
        "shared_loki": (None, "0.25", None, "256M"),
    }
    for name, values in issue.items():
        assert ORIGINAL_RESOURCES[name].values() == values, name


def test_the_whole_platform_fits_a_node_of_this_machine_at_the_suites_scale(settings):
    """A dind node of the acceptance suite reports this machine's CPUs; Swarm leaves a task
    pending while its reservation does not fit."""
    scale = Decimal(SUITE_SCALE)
    total = _cpu_reservations(settings, DECLARED) * scale
    cpus = os.cpu_count() or 1
    assert total <= cpus, (
        f"at RESERVATIONS_SCALE={scale} the platform reserves {total} CPUs, more than this "
        f"machine's {cpus}: lower RESERVATIONS_SCALE in tests/acceptance/conftest.py"
    )


# The reservations scale for small nodes.

RENDERED = {
    "services": {
        "n8n": {
            "deploy": {
                "resources": {
                    "reservations": {"cpus": "0.50", "memory": "536870912"},
                    "limits": {"cpus": "2.00", "memory": "2147483648"},
                }
            }
        },
        "node-exporter": {
            "deploy": {
                "resources": {
                    "reservations": {"cpus": "0.02", "memory": "16M"},
                    "limits": {"cpus": "0.20", "memory": "64M"},
                }
            }
        },
        "no-resources": {"deploy": {}},
    }
}


def test_scale_one_leaves_the_rendered_stack_alone():
    assert planning.scale_reservations(RENDERED, Decimal(1)) == RENDERED


def test_a_scale_multiplies_every_reservation_and_no_limit():
    scaled = planning.scale_reservations(RENDERED, Decimal("0.5"))
    n8n = scaled["services"]["n8n"]["deploy"]["resources"]
    exporter = scaled["services"]["node-exporter"]["deploy"]["resources"]
    assert n8n["reservations"] == {"cpus": "0.250", "memory": str(256 * 1024**2)}
    assert exporter["reservations"] == {"cpus": "0.010", "memory": str(8 * 1024**2)}
    assert n8n["limits"] == RENDERED["services"]["n8n"]["deploy"]["resources"]["limits"]
    assert exporter["limits"] == {"cpus": "0.20", "memory": "64M"}
    assert RENDERED["services"]["n8n"]["deploy"]["resources"]["reservations"]["cpus"] == "0.50"


def test_a_tiny_scale_still_reserves_something():
    scaled = planning.scale_reservations(RENDERED, Decimal("0.0001"))
    reservations = scaled["services"]["node-exporter"]["deploy"]["resources"]["reservations"]
    assert reservations["cpus"] == "0.001"
    assert int(reservations["memory"]) > 0


@needs_stack_config
def test_scaled_stack_is_one_docker_stack_reads(settings, tmp_path):
    """What deploy hands `docker stack deploy` on stdin must pass the CLI's own schema."""
    stack = planning.plan_stack("shared", settings, generate_values(settings))
    rendered = engine.render_stack([str(p) for p in stack.files], stack.variables)
    scaled = planning.scale_reservations(rendered, Decimal("0.3"))
    path = tmp_path / "scaled.yml"
    path.write_text(yaml.safe_dump(deploy._escape_dollars(scaled), sort_keys=False))
    again = engine.render_stack([str(path)], stack.variables)
    n8n = again["services"]["n8n"]["deploy"]["resources"]
    assert Decimal(n8n["reservations"]["cpus"]) == Decimal("0.150")
    assert int(n8n["reservations"]["memory"]) == int(512 * 1024**2 * Decimal("0.3"))
    assert n8n["limits"] == rendered["services"]["n8n"]["deploy"]["resources"]["limits"]


def test_deploy_hands_docker_the_scaled_reservations(environ, monkeypatch):
    settings = load_settings(REPO_ROOT, {**environ, "RESERVATIONS_SCALE": "0.5"})
    stack = planning.plan_stack("shared", settings, None)
    sent = {}
    monkeypatch.setattr(engine, "render_stack", lambda files, variables: RENDERED)
    monkeypatch.setattr(engine, "stack_services", lambda client, name, status=False: [])
    monkeypatch.setattr(
        engine, "docker_cli", lambda command, variables, stdin=None: sent.update(stdin=stdin)
    )
    deploy.deploy_stack(None, stack, lambda line: None)
    deployed = yaml.safe_load(sent["stdin"])["services"]["n8n"]["deploy"]["resources"]
    assert deployed["reservations"] == {"cpus": "0.250", "memory": str(256 * 1024**2)}
    assert deployed["limits"] == {"cpus": "2.00", "memory": "2147483648"}


@pytest.mark.parametrize("value", ["1", "0.5", "0.25", ".5"])
def test_reservations_scale_accepts_a_number_above_zero_up_to_one(environ, value):
    settings = load_settings(REPO_ROOT, {**environ, "RESERVATIONS_SCALE": value})
    assert settings.reservations_scale == Decimal(value)
    assert planning.plan_stack("dev", settings, None).reservations_scale == Decimal(value)


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "half", "nan", "inf", "50%"])
def test_reservations_scale_refuses_anything_else(environ, value):
    with pytest.raises(SettingsError, match=r"RESERVATIONS_SCALE=.* is not a number above 0"):
        load_settings(REPO_ROOT, {**environ, "RESERVATIONS_SCALE": value})


def test_by_default_reservations_are_the_stack_files(settings):
    assert settings.reservations_scale == 1
    stack = planning.plan_stack("shared", settings, None)
    assert "RESERVATIONS_SCALE" not in report.format_plan(
        planning.Plan(networks=(), stacks=(stack,)), settings
    )


def test_dry_run_says_the_reservations_are_scaled(environ):
    settings = load_settings(REPO_ROOT, {**environ, "RESERVATIONS_SCALE": "0.5"})
    stack = planning.plan_stack(RUNNER, settings, None)
    text = report.format_plan(planning.Plan(networks=(), stacks=(stack,)), settings)
    assert "every reservation x 0.5 (RESERVATIONS_SCALE); limits as in the stack files" in text


def test_comment_reader_finds_only_the_resources_block(tmp_path):
    path = tmp_path / "stack.yml"
    path.write_text(
        "services:\n"
        "  a:\n"
        "    # not this one\n"
        "    deploy:\n"
        "      resources:\n"
        "        # Departure: one\n"
        "        # and two\n"
        "        reservations:\n"
        "          # inside\n"
        "          cpus: '0.1'\n"
        "      labels: []\n"
        "      # after the block\n"
        "  b:\n"
        "    deploy:\n"
        "      resources:\n"
        "        limits: {}\n"
        "configs:\n"
        "  resources:\n"
        "    # not a service\n"
    )
    assert resources_comments(path) == {"a": "Departure: one and two inside"}


def test_a_service_missing_from_the_catalog_fails_with_what_to_add(monkeypatch):
    monkeypatch.delitem(ORIGINAL_RESOURCES, "shared_n8n")
    with pytest.raises(AssertionError, match=r"shared_n8n.*no entry in catalog"):
        test_every_service_has_a_record_of_the_original_and_every_record_a_service()


def test_a_changed_value_without_a_departure_fails(settings, monkeypatch):
    monkeypatch.setitem(
        ORIGINAL_RESOURCES, "shared_n8n", OriginalResources("test", "0.50", "2.00", "512M", "1G")
    )
    with pytest.raises(AssertionError, match="memory limit differ"):
        test_resources_are_the_originals_or_the_stack_file_says_why(settings, "shared_n8n")
