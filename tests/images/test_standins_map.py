"""The stand-in map (tests/images/standins.yml) against stacks/images.env, and the builder's pure
parts. No Docker needed."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import yaml

from . import build

PINNED = build.read_images_env()
ENTRIES = build.load_map()["images"]
RECIPES = {v: e for v, e in ENTRIES.items() if "none" not in e}


@pytest.mark.parametrize("variable", sorted(PINNED), ids=str)
def test_every_image_of_images_env_has_an_entry(variable):
    assert variable in ENTRIES, (
        f"{variable} is pinned in stacks/images.env but missing from standins.yml"
    )


@pytest.mark.parametrize("variable", sorted(ENTRIES), ids=str)
def test_every_entry_is_an_image_of_images_env(variable):
    assert variable in PINNED, f"standins.yml has {variable}, which stacks/images.env does not pin"


@pytest.mark.parametrize("variable", sorted(set(ENTRIES) & set(PINNED)), ids=str)
def test_entry_replaces_exactly_what_images_env_pins(variable):
    assert ENTRIES[variable]["replaces"] == PINNED[variable]


@pytest.mark.parametrize("variable", sorted(ENTRIES), ids=str)
def test_entry_is_a_recipe_or_says_why_there_is_none(variable):
    entry = ENTRIES[variable]
    if "none" in entry:
        assert len(str(entry["none"]).strip()) > 20, "say why there is no stand-in"
        assert "name" not in entry
    else:
        assert entry.get("name"), "a recipe needs a name"
        assert entry.get("config", {}).get("entrypoint"), "a recipe sets the upstream entrypoint"


def test_builder_accepts_the_map():
    names = [s.name for s in build.standins() if s.name]
    assert len(names) == len(set(names)) == len(RECIPES)


@pytest.mark.parametrize("variable", sorted(RECIPES), ids=str)
def test_recipe_files_exist(variable):
    for target, source in (RECIPES[variable].get("files") or {}).items():
        path = build.FILES / source
        assert path.is_file(), f"{variable}: {target} comes from {path}, which does not exist"
        if target.endswith(".sh") or "/bin/" in target:
            assert os.access(path, os.X_OK), (
                f"{path} must be executable (it is copied with its mode)"
            )


@pytest.mark.parametrize(
    "variable",
    sorted(v for v, e in RECIPES.items() if e.get("wheels") or e.get("npm")),
    ids=str,
)
def test_wheel_and_npm_versions_follow_the_upstream_tag(variable):
    tag = build.StandIn(variable, PINNED[variable]).upstream_tag.removeprefix("v")
    versions = [str(w["version"]) for w in RECIPES[variable].get("wheels") or []]
    if RECIPES[variable].get("npm"):
        versions.append(str(RECIPES[variable]["npm"]["version"]))
    assert versions and all(v == tag for v in versions), (
        f"{variable}: versions {versions}, upstream tag {tag}"
    )


def test_tag_is_named_after_the_upstream_tag():
    standin = build.StandIn("TRAEFIK_IMAGE", "traefik:v3.6.15", name="traefik")
    assert standin.tag == "nextcandle-standin/traefik:v3.6.15"


@pytest.mark.parametrize(
    ("reference", "tag"),
    [
        ("redis:7.4.7", "7.4.7"),
        ("gcr.io/cadvisor/cadvisor:v0.52.1", "v0.52.1"),
        ("localhost:5000/team/app", "latest"),
        ("app:1.0@sha256:" + "0" * 64, "1.0"),
    ],
    ids=["plain", "registry-path", "registry-port-no-tag", "digest"],
)
def test_upstream_tag_parsing(reference, tag):
    assert build.StandIn("X_IMAGE", reference).upstream_tag == tag


def write_pair(tmp_path, env_lines: list[str], images: dict) -> tuple:
    env = tmp_path / "images.env"
    env.write_text("# comment\n\n" + "\n".join(env_lines) + "\n")
    mapping = tmp_path / "standins.yml"
    mapping.write_text(yaml.safe_dump({"debian": {"suite": "trixie"}, "images": images}))
    return env, mapping


def test_builder_refuses_an_image_missing_from_the_map(tmp_path):
    env, mapping = write_pair(
        tmp_path, ["A_IMAGE=a:1", "B_IMAGE=b:2"], {"A_IMAGE": {"replaces": "a:1", "none": "x"}}
    )
    with pytest.raises(build.BuildError, match="B_IMAGE is in images.env but has no entry"):
        build.standins(env, mapping)


def test_builder_refuses_a_recipe_for_another_upstream_version(tmp_path):
    env, mapping = write_pair(
        tmp_path, ["A_IMAGE=a:2"], {"A_IMAGE": {"replaces": "a:1", "name": "a"}}
    )
    with pytest.raises(build.BuildError, match="pins 'a:2'"):
        build.standins(env, mapping)


def test_builder_takes_the_reference_from_images_env(tmp_path):
    env, mapping = write_pair(
        tmp_path,
        ["A_IMAGE=reg.example/a:2"],
        {"A_IMAGE": {"replaces": "reg.example/a:2", "name": "a"}},
    )
    (standin,) = build.standins(env, mapping)
    assert (standin.upstream, standin.tag) == ("reg.example/a:2", "nextcandle-standin/a:2")


def redis_standin() -> build.StandIn:
    return next(s for s in build.standins() if s.name == "redis")


DEBIAN = {
    "suite": "trixie",
    "variant": "minbase",
    "mirror": "http://deb.debian.org/debian",
    "include": [],
}


def test_recipe_hash_changes_with_the_package_list():
    standin = redis_standin()
    changed = build.StandIn(
        standin.variable,
        standin.upstream,
        standin.name,
        {**standin.recipe, "packages": [*standin.recipe["packages"], "procps"]},
    )
    assert build.recipe_hash(standin, DEBIAN, "2026-01-01") != build.recipe_hash(
        changed, DEBIAN, "2026-01-01"
    )


def test_recipe_hash_changes_with_the_debian_snapshot():
    standin = redis_standin()
    assert build.recipe_hash(standin, DEBIAN, "2026-01-01") != build.recipe_hash(
        standin, DEBIAN, "2026-02-01"
    )


def test_recipe_hash_ignores_the_differs_notes():
    standin = redis_standin()
    noted = build.StandIn(
        standin.variable, standin.upstream, standin.name, {**standin.recipe, "differs": ["new"]}
    )
    assert build.recipe_hash(standin, DEBIAN, "2026-01-01") == build.recipe_hash(
        noted, DEBIAN, "2026-01-01"
    )


def test_recipe_hash_covers_the_content_of_copied_files(tmp_path, monkeypatch):
    standin = redis_standin()
    copy = tmp_path / "files"
    for source in standin.recipe["files"].values():
        (copy / source).parent.mkdir(parents=True, exist_ok=True)
        (copy / source).write_bytes((build.FILES / source).read_bytes())
    monkeypatch.setattr(build, "FILES", copy)
    before = build.recipe_hash(standin, DEBIAN, "2026-01-01")
    (copy / "redis/docker-entrypoint.sh").write_text('#!/bin/sh\nexec "$@"\n')
    assert build.recipe_hash(standin, DEBIAN, "2026-01-01") != before


def test_release_date_parsing():
    text = "Origin: Debian\nSuite: stable\nDate: Sat, 21 Nov 2026 09:15:44 UTC\nValid-Until: x\n"
    assert build.parse_release_date(text) == "2026-11-21T09:15:44Z"


def test_image_overrides_lists_only_standins_present_in_the_engine():
    redis = redis_standin()
    present = [
        SimpleNamespace(tags=[redis.tag]),
        SimpleNamespace(tags=["nextcandle-standin/redis:0.0.1"]),
    ]  # built for an older pin
    client = SimpleNamespace(images=SimpleNamespace(list=lambda filters: present))
    assert build.image_overrides(client) == {"REDIS_IMAGE": redis.tag}


def test_only_rejects_an_image_without_standin_and_names_the_valid_ones():
    with pytest.raises(build.BuildError, match=r"GRAFANA_IMAGE: no stand-in .*Valid: .*redis"):
        build.select(build.standins(), ["GRAFANA_IMAGE"])


def test_only_builds_the_slowest_first():
    chosen = build.select(build.standins(), ["redis", "N8N_IMAGE"])
    assert [s.name for s in chosen] == ["n8n", "redis"]
