"""README's "Coming from the shell scripts", and every task it and README.ko.md name.

The scripts table says which task each original command runs: the real scripts run with a
stand-in `invoke` that records its arguments, so the table says what they exec. Every
`invoke ...` in the READMEs must name a task and options that task has, and the permission
fixes must give each data directory the owner the platform creates it with.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

import tasks
from infra import catalog
from infra import plan as planning
from infra.settings import REPO_ROOT
from tests.readme_text import (
    README,
    README_KO,
    code_blocks,
    commands,
    inline_code,
    read,
    sections,
    table_rows,
)

SCRIPTS_START, SCRIPTS_END = "<!-- scripts:start -->", "<!-- scripts:end -->"
MIGRATION = "Coming from the shell scripts"
# The images whose entrypoint takes its data directory over at start (as root: chown, then
# drop privileges), so a directory carried over with another owner needs no fix:
# ../shared/reference/upstream-images.md for postgres and redis, stacks/shared.yml for seaweedfs.
TAKE_OVER_THEIR_DIRECTORY = {"postgres", "redis", "seaweedfs"}
CORE_OPTIONS = {"--list", "-l", "--help", "-h"}


def _code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"expected one code span, got {cell!r}"
    return match.group(1)


def _script_rows(path: Path) -> list[tuple[str, str]]:
    return [
        (_code(row[0]), _code(row[1])) for row in table_rows(read(path), SCRIPTS_START, SCRIPTS_END)
    ]


def _migration_section() -> str:
    found = [body for heading, body in sections(read(README)) if heading == MIGRATION]
    assert found, f"README.md has no section '## {MIGRATION}'"
    return found[0]


def test_the_readme_has_the_migration_section_with_every_procedure():
    section = _migration_section()
    for original in (
        "./scripts/start.sh",
        "./scripts/stop.sh",
        "./scripts/status.sh",
        "docker secret rm $(docker secret ls -q)",
        "rm -rf .data/*",
        "chown -R",
        "docker swarm init",
        "docker stack deploy",
        "docker stack rm",
        "docker service logs",
    ):
        assert original in section, f"README's '{MIGRATION}' does not mention {original}"


def test_every_original_script_argument_has_a_row():
    """Each target and option the scripts' usage lines name appears in the section."""
    section = _migration_section()
    scripts = " ".join(script for script, _ in _script_rows(README))
    for name in ("start.sh", "stop.sh", "status.sh"):
        usage = (REPO_ROOT / "scripts" / name).read_text().splitlines()[1]
        groups = re.findall(r"\[([^\]]+)\]", usage)
        assert groups, f"scripts/{name}: no usage line"
        words = [w.strip(",") for group in groups for w in re.split(r"[|\s]+", group)]
        targets = [w for w in groups[0].split("|") if not w.startswith("-")]
        options = [w for w in words if w.startswith("-")]
        for word in (*targets, *options):
            assert f"`{word}`" in section or f" {word}" in scripts or f"{word}`" in section, (
                f"scripts/{name} takes {word}; README's '{MIGRATION}' does not say it"
            )
        assert f"./scripts/{name}" in scripts


@pytest.fixture(scope="module")
def recording_repo(tmp_path_factory) -> Path:
    """A copy of scripts/ beside a .venv whose `invoke` prints the arguments it was given."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO_ROOT / "scripts", root / "scripts")
    fake = root / ".venv" / "bin" / "invoke"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    return root


@pytest.mark.parametrize("script, runs", _script_rows(README), ids=lambda value: value)
def test_each_script_runs_the_task_its_row_names(recording_repo, script, runs):
    words = shlex.split(script)
    result = subprocess.run(
        [str(recording_repo / words[0]), *words[1:]],
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == shlex.split(runs)[1:], (
        f"{script} runs `invoke {' '.join(result.stdout.split())}`, the row says `{runs}`"
    )


def _options(task) -> set[str]:
    return {
        ("--" if len(name) > 1 else "-") + name.replace("_", "-")
        for argument in task.get_arguments()
        for name in argument.names
    }


ANY = "<any>"  # a placeholder task (deploy.*): its options are not checked


def _invocations(snippet: str) -> list[list[str]]:
    """Each `invoke ...` of a command line or code span, its alternatives (` | `) apart, as
    words; a placeholder task (`deploy.*`, `stop.<...>`) is ANY."""
    match = re.search(r"(?:^|[\s/])invoke((?:\s.*)?)$", snippet)
    if not match:
        return []
    found = []
    for alternative in match.group(1).split(" | "):
        words = [w.strip("[]") for w in alternative.split()]
        found.append(
            [
                w if w.startswith("-") else ANY if re.search(r"[<*]", w) else w
                for w in words
                if w and w != "..."
            ]
        )
    return found


def _all_invocations(path: Path) -> list[tuple[str, list[str]]]:
    text = read(path)
    snippets = [line for block in code_blocks(text) for line in commands(block)]
    snippets += inline_code(text)
    return [(snippet, words) for snippet in snippets for words in _invocations(snippet)]


@pytest.mark.parametrize("path", [README, README_KO], ids=lambda p: p.name)
def test_every_invoke_command_names_a_task_and_its_options(path):
    seen = 0
    for snippet, words in _all_invocations(path):
        task = None
        for word in words:
            if word == ANY:
                task = ANY
            elif task is ANY:
                continue
            elif word.startswith("-"):
                option = word.split("=", 1)[0]
                valid = CORE_OPTIONS if task is None else _options(task)
                assert option in valid, f"{path.name}: `{snippet}`: {option} is not an option"
            else:
                try:
                    task = tasks.ns[word]
                except (KeyError, ValueError):
                    pytest.fail(f"{path.name}: `{snippet}`: no task named {word!r}")
                seen += 1
    assert seen > 20, f"{path.name}: only {seen} tasks named; is the reader broken?"


def test_the_invocation_reader_sees_alternatives_and_leaves_placeholders():
    assert _invocations("invoke stop.core | stop.env --name=dev | stop.all [--cleanup]") == [
        ["stop.core"],
        ["stop.env", "--name=dev"],
        ["stop.all", "--cleanup"],
    ]
    assert _invocations("sudo .venv/bin/invoke firewall.apply") == [["firewall.apply"]]
    assert _invocations("invoke deploy.* --dry-run") == [[ANY, "--dry-run"]]
    assert _invocations("nox -s lint") == []


def test_a_misspelt_task_in_a_readme_fails(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```bash\ninvoke deploy.environment --name=dev\n```\n")
    with pytest.raises(pytest.fail.Exception, match="no task named 'deploy.environment'"):
        test_every_invoke_command_names_a_task_and_its_options(readme)


def _chowns() -> dict[str, tuple[int, int]]:
    """data directory (relative to DATA_ROOT) -> owner, from the section's chown lines."""
    found = {}
    for block in code_blocks(_migration_section()):
        for line in commands(block):
            match = re.fullmatch(r"sudo chown -R (\d+):(\d+) (.+)", line)
            if match:
                for path in match.group(3).split():
                    found[path.removeprefix(".data/")] = (int(match[1]), int(match[2]))
    return found


def test_permission_fixes_give_each_directory_the_owner_the_platform_creates_it_with(settings):
    shared = planning.plan_stack(catalog.SHARED, settings, None)
    expected = {
        str(d.path.relative_to(settings.data_root)): (d.uid, d.gid)
        for d in shared.data_dirs
        if d.path.name not in TAKE_OVER_THEIR_DIRECTORY
    }
    assert expected, "the shared stack has no data directories to check"
    assert _chowns() == expected
