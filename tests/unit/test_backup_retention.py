"""Retention (BACKUP_KEEP) on a backup folder of many dated entries, and backup.prune's CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra import backup
from infra.backup import retention
from infra.errors import SettingsError
from infra.settings import REPO_ROOT, Keep, load_settings, parse_keep

INVOKE = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT)]
# A Wednesday. Its ISO week starts on Monday 2026-03-02.
NOW = datetime(2026, 3, 4, 12, 0, 0, tzinfo=UTC)
DEFAULT = Keep(days=7, weeks=4, months=6)

# With BACKUP_KEEP=7d,4w,6m at NOW: the days 02-26 .. 03-04, the weeks starting 02-09, 02-16,
# 02-23, 03-02, the months 2025-10 .. 2026-03. Verified backups, newest first:
KEPT = {
    "20260304T030000Z": "the newest: today, this week, this month",
    "20260303T030000Z-1": "taken twice in one second: the -1 is the later, daily 03-03",
    "20260302T000000Z": "Monday 00:00: daily 03-02 (its week has a newer one)",
    "20260301T235959Z": "Sunday 23:59:59: daily 03-01, and the newest of the week of 02-23",
    "20260227T030000Z": "daily 02-27 and the newest of February",
    "20260218T030000Z": "the newest of the week of 02-16",
    "20260210T030000Z": "the newest of the week of 02-09 (the fourth week back)",
    "20260131T235959Z": "the newest of January",
    "20251015T030000Z": "the newest of 2025-10 (the sixth month back)",
}
PRUNED = {
    "20260304T010000Z": "today, but not today's newest",
    "20260303T030000Z": "the same second as 20260303T030000Z-1, and before it",
    "20260301T120000Z": "Sunday, not the day's newest",
    "20260225T030000Z": "before the 7 days; its week and month have newer ones",
    "20260224T030000Z": "likewise",
    "20260208T030000Z": "Sunday of the fifth week back; February has a newer one",
    "20260201T000000Z": "February 1st 00:00 is February's, which has newer ones",
    "20260131T120000Z": "January, not its newest",
    "20250915T030000Z": "the seventh month back",
}
# Kept whatever the policy says:
LEFT_ALONE = {
    "20260227T050000Z": "no manifest: newer than 20260227T030000Z, yet it counts for no day",
    "20250101T000000Z": "no manifest, and old",
    "20240101T000000Z-before-restore": "a restore's safety backup",
}
# Not backups by name: never listed, never touched.
NOT_BACKUPS = (".partial-20260304T040000Z-abcd1234", "20261399T000000Z", "latest")


def make_entry(folder: Path, name: str, verified: bool = True) -> Path:
    directory = folder / name
    directory.mkdir(parents=True)
    (directory / "postgres.dump").write_bytes(b"PGDMP" + name.encode())
    if verified:
        (directory / backup.MANIFEST).write_text(json.dumps({"format": 1, "files": {}}))
    return directory


@pytest.fixture
def folder(tmp_path) -> Path:
    """A target's backup folder: every entry of the tables above."""
    prod = tmp_path / "backups" / "prod"
    for name in (*KEPT, *PRUNED, "20240101T000000Z-before-restore"):
        make_entry(prod, name)
    for name in ("20260227T050000Z", "20250101T000000Z"):
        make_entry(prod, name, verified=False)
    for name in NOT_BACKUPS:
        make_entry(prod, name)
    (prod / "20260220T030000Z").write_text("a file with a backup's name")
    return prod


def plan(folder: Path, keep: Keep = DEFAULT, now: datetime = NOW) -> retention.RetentionPlan:
    return backup.plan_retention(retention.scan(folder), now, keep)


def test_the_policy_keeps_exactly_the_newest_of_each_day_week_and_month(folder):
    result = plan(folder)
    assert set(result.pruned) == set(PRUNED)
    assert set(result.kept) == set(KEPT) | set(LEFT_ALONE)


def test_decisions_are_listed_newest_first_and_say_why(folder):
    decisions = {d.name: d for d in plan(folder).decisions}
    names = [d.name for d in plan(folder).decisions]
    assert names[0] == "20260304T030000Z" and names[-1] == "20240101T000000Z-before-restore"
    assert decisions["20260304T030000Z"].reasons == (
        "the newest verified backup",
        "daily 2026-03-04",
        "weekly week of 2026-03-02",
        "monthly 2026-03",
    )
    assert decisions["20260301T235959Z"].reasons == (
        "daily 2026-03-01",
        "weekly week of 2026-02-23",
    )
    assert decisions["20260227T030000Z"].reasons == ("daily 2026-02-27", "monthly 2026-02")
    assert decisions["20260227T050000Z"].reasons == (
        "no manifest.json: not a verified backup, left alone",
    )
    assert decisions["20260304T010000Z"].describe() == "20260304T010000Z  prune"


def test_what_is_not_a_backup_by_name_is_not_even_listed(folder):
    names = {d.name for d in plan(folder).decisions}
    assert names.isdisjoint({*NOT_BACKUPS, "20260220T030000Z"})


def test_the_newest_verified_backup_is_kept_when_the_policy_keeps_nothing(folder):
    result = plan(folder, keep=Keep(days=0, weeks=0, months=0))
    assert set(result.kept) == {"20260304T030000Z", *LEFT_ALONE}


def test_the_newest_verified_backup_is_kept_however_old(tmp_path):
    for name in ("20200101T000000Z", "20200102T000000Z", "20200103T000000Z-before-restore"):
        make_entry(tmp_path, name)
    assert plan(tmp_path).kept == ("20200103T000000Z-before-restore", "20200102T000000Z")


def test_an_unverified_directory_is_never_the_newest_verified_one(tmp_path):
    make_entry(tmp_path, "20200101T000000Z")
    make_entry(tmp_path, "20200102T000000Z")
    make_entry(tmp_path, "20200103T000000Z", verified=False)
    assert set(plan(tmp_path).kept) == {"20200102T000000Z", "20200103T000000Z"}


def test_a_backup_dated_after_now_is_kept(tmp_path):
    make_entry(tmp_path, "20260305T000000Z")
    make_entry(tmp_path, "20260304T030000Z")
    decisions = {d.name: d for d in plan(tmp_path).decisions}
    assert "dated after now" in decisions["20260305T000000Z"].reasons
    assert decisions["20260304T030000Z"].keep  # still today's newest until tomorrow


def test_keep_all_keeps_everything(folder):
    assert plan(folder, keep=Keep(everything=True)).pruned == ()


def test_iso_weeks_cross_the_new_year(tmp_path):
    # 2027-01-01 is a Friday in ISO week 2026-W53, which started on Monday 2026-12-28.
    now = datetime(2027, 1, 6, 12, tzinfo=UTC)  # Wednesday of 2027-W01
    for name in ("20261229T030000Z", "20261231T030000Z", "20270101T030000Z", "20261227T030000Z"):
        make_entry(tmp_path, name)
    result = plan(tmp_path, keep=Keep(weeks=2), now=now)
    # 2027-01-01 is the newest of the week of 2026-12-28; 12-27 is a Sunday of the week before.
    assert set(result.kept) == {"20270101T030000Z"}
    assert set(result.pruned) == {"20261229T030000Z", "20261231T030000Z", "20261227T030000Z"}
    assert set(plan(tmp_path, keep=Keep(weeks=3), now=now).kept) == {
        "20270101T030000Z",
        "20261227T030000Z",
    }


# --- applying it -------------------------------------------------------------------------


@pytest.fixture
def settings_for(folder, environ):
    return load_settings(REPO_ROOT, {**environ, "BACKUP_ROOT": str(folder.parent)})


def test_prune_removes_exactly_the_plan_and_prints_each_path(folder, settings_for):
    printed: list[str] = []
    result = backup.prune(settings_for, "prod", now=NOW, report=printed.append)
    assert {p.name for p in result.removed} == set(PRUNED)
    assert printed == [f"pruned {folder / name}" for name in result.plan.pruned]
    left = {p.name for p in folder.iterdir()}
    assert left == {*KEPT, *LEFT_ALONE, *NOT_BACKUPS, "20260220T030000Z"}
    assert (folder / "20260227T050000Z" / "postgres.dump").is_file()


def test_dry_run_removes_nothing(folder, settings_for):
    before = sorted(folder.rglob("*"))
    result = backup.prune(settings_for, "prod", now=NOW, dry_run=True)
    assert set(result.plan.pruned) == set(PRUNED) and result.removed == ()
    assert sorted(folder.rglob("*")) == before


def test_a_symbolic_link_is_not_followed_nor_removed(tmp_path, environ):
    elsewhere = make_entry(tmp_path / "elsewhere", "20200101T000000Z")
    prod = tmp_path / "backups" / "prod"
    make_entry(prod, "20260304T030000Z")
    (prod / "20200101T000000Z").symlink_to(elsewhere)
    settings = load_settings(REPO_ROOT, {**environ, "BACKUP_ROOT": str(tmp_path / "backups")})
    result = backup.prune(settings, "prod", now=NOW)
    assert result.removed == () and (elsewhere / backup.MANIFEST).is_file()
    assert (prod / "20200101T000000Z").is_symlink()


def test_each_target_is_pruned_on_its_own(tmp_path, environ):
    root = tmp_path / "backups"
    make_entry(root / "prod", "20200101T000000Z")
    make_entry(root / "shared", "20200101T000000Z")
    make_entry(root / "shared", "20200102T000000Z")
    settings = load_settings(REPO_ROOT, {**environ, "BACKUP_ROOT": str(root)})
    assert backup.prune(settings, "prod", now=NOW).removed == ()
    assert [p.name for p in backup.prune(settings, "shared", now=NOW).removed] == [
        "20200101T000000Z"
    ]


# --- BACKUP_KEEP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, keep",
    [
        ("7d,4w,6m", Keep(7, 4, 6)),
        ("6m, 14d", Keep(days=14, months=6)),
        ("3D", Keep(days=3)),
        ("0d,0w,0m", Keep()),
        ("all", Keep(everything=True)),
    ],
    ids=["default", "any-order-and-spaces", "upper-case", "zeros", "all"],
)
def test_backup_keep_is_read(value, keep):
    assert parse_keep(value) == keep


@pytest.mark.parametrize("value", ["", "7", "7x", "7d,2d", "-1d", "7d;4w", "seven days"], ids=repr)
def test_a_malformed_backup_keep_is_one_line_with_an_example(environ, value):
    with pytest.raises(SettingsError) as caught:
        load_settings(REPO_ROOT, {**environ, "BACKUP_KEEP": value})
    message = str(caught.value)
    assert message.startswith(f"BACKUP_KEEP={value!r}") and "7d,4w,6m" in message
    assert "\n" not in message


def test_backup_keep_defaults_to_a_week_a_month_and_half_a_year(settings):
    assert settings.backup_keep == Keep(7, 4, 6)
    assert str(settings.backup_keep) == "7d,4w,6m"


# --- the command line --------------------------------------------------------------------

# Years old whatever the clock says: only the newest verified one is kept by the policy.
OLD_PRUNED = ("20010101T000000Z", "20010102T000000Z")
OLD_KEPT = ("20010103T000000Z", "20010104T000000Z-before-restore", "20010105T000000Z")


@pytest.fixture
def old_folder(tmp_path) -> Path:
    prod = tmp_path / "cli-backups" / "prod"
    for name in (*OLD_PRUNED, *OLD_KEPT[:2]):
        make_entry(prod, name)
    make_entry(prod, OLD_KEPT[2], verified=False)
    make_entry(prod, ".partial-20010106T000000Z-abcd1234", verified=False)
    return prod


@pytest.fixture
def operator_env(old_folder, environ):
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    return {
        **env,
        **environ,
        "BACKUP_ROOT": str(old_folder.parent),
        "DOCKER_HOST": f"unix://{old_folder}/no-docker.sock",  # prune needs no Docker
    }


def run(args, env):
    return subprocess.run([*INVOKE, *args], env=env, capture_output=True, text=True, check=False)


def test_cli_dry_run_lists_every_backup_and_removes_nothing(old_folder, operator_env):
    before = sorted(old_folder.rglob("*"))
    result = run(["backup.prune", "--name=prod", "--dry-run"], operator_env)
    assert result.returncode == 0, result.stderr
    assert sorted(old_folder.rglob("*")) == before
    assert result.stdout.splitlines() == [
        f"{old_folder} (BACKUP_KEEP=7d,4w,6m):",
        "  20010105T000000Z  keep (no manifest.json: not a verified backup, left alone)",
        "  20010104T000000Z-before-restore  keep (labelled before-restore: never pruned)",
        "  20010103T000000Z  keep (the newest verified backup)",
        "  20010102T000000Z  prune",
        "  20010101T000000Z  prune",
        "2 to prune, 3 kept. Apply: invoke backup.prune --name=prod --yes",
    ]


def test_cli_prune_without_yes_is_one_line_and_removes_nothing(old_folder, operator_env):
    before = sorted(old_folder.rglob("*"))
    result = run(["backup.prune", "--name=prod"], operator_env)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        f"error: this removes 2 backups of prod from {old_folder}. See which: invoke "
        "backup.prune --name=prod --dry-run; remove them: invoke backup.prune --name=prod --yes"
    )
    assert sorted(old_folder.rglob("*")) == before


def test_cli_prune_with_yes_removes_and_names_each(old_folder, operator_env):
    result = run(["backup.prune", "--name=prod", "--yes"], operator_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"pruned {old_folder / '20010102T000000Z'}",
        f"pruned {old_folder / '20010101T000000Z'}",
        f"2 pruned, 3 kept in {old_folder}",
    ]
    assert sorted(p.name for p in old_folder.iterdir()) == sorted(
        [".partial-20010106T000000Z-abcd1234", *OLD_KEPT]
    )


def test_cli_prune_with_nothing_to_prune_needs_no_yes(old_folder, operator_env):
    for name in OLD_PRUNED:
        (old_folder / name / backup.MANIFEST).unlink()  # unverified now: left alone
    result = run(["backup.prune", "--name=prod"], operator_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 to prune, 5 kept"


@pytest.mark.parametrize(
    "args",
    [["backup.prune", "--name=qa", "--dry-run"], ["backup.prune", "--yes"]],
    ids=["unknown", "missing"],
)
def test_cli_prune_of_an_unknown_target_is_one_line(operator_env, args):
    result = run(args, operator_env)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith("Valid: dev, stg, prod, shared.")
