"""README.ko.md is README.md in Korean, and stays so.

Section for section, in the same order: the same commands in the code blocks (comments may be
translated), the same numbers in every table row, the same rows of the mistakes table (number,
command and the tools' answer; the mistake itself in Korean) and of the scripts table. README.md
links to it above its first command, and those first two commands stay the ones that set up
dev and run the tests. Links to headings must reach a heading, in both.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra.settings import REPO_ROOT
from tests.operator_mistakes import read_table
from tests.readme_text import README, README_KO, code_blocks, commands, read, sections

NUMBER = re.compile(r"\d+(?:\.\d+)?")
SCRIPTS_START, SCRIPTS_END = "<!-- scripts:start -->", "<!-- scripts:end -->"
HEADINGS = [heading or "(top)" for heading, _ in sections(read(README))]


def _pairs() -> list[tuple[str, str, str]]:
    english, korean = sections(read(README)), sections(read(README_KO))
    assert len(english) == len(korean), (
        f"README.md has {len(english)} sections, README.ko.md {len(korean)}: "
        f"{[h for h, _ in english]} vs {[h for h, _ in korean]}"
    )
    return [(en[0] or "(top)", en[1], ko[1]) for en, ko in zip(english, korean, strict=True)]


def test_readme_links_to_the_korean_one_above_its_first_command():
    text = read(README)
    assert "](README.ko.md)" in text[: text.index("```")]
    assert "](README.md)" in read(README_KO).split("```", 1)[0]


def test_the_readmes_first_two_commands_set_up_dev_and_run_the_ci_test_command():
    first, second = (commands(block) for block in code_blocks(read(README))[:2])
    assert first == ["./scripts/start.sh dev --no-tunnel"]
    ci = [line for line in commands((REPO_ROOT / ".ci" / "run").read_text()) if line]
    assert second == [ci[-1]], f".ci/run ends with {ci[-1]!r}, README's second command differs"


def test_the_korean_readme_has_every_section():
    _pairs()


@pytest.mark.parametrize("number", range(len(HEADINGS)), ids=HEADINGS)
def test_each_section_has_the_same_commands(number):
    heading, english, korean = _pairs()[number]
    got = [commands(block) for block in code_blocks(korean)]
    want = [commands(block) for block in code_blocks(english)]
    assert got == want, f"section '{heading}': README.ko.md's code blocks differ"


def _table_numbers(body: str) -> list[list[str]]:
    return [
        sorted(NUMBER.findall(line))
        for line in body.splitlines()
        if line.startswith("|") and not set(line) <= set("|-: ")
    ]


@pytest.mark.parametrize("number", range(len(HEADINGS)), ids=HEADINGS)
def test_each_sections_tables_have_the_same_rows_and_figures(number):
    heading, english, korean = _pairs()[number]
    assert _table_numbers(korean) == _table_numbers(english), (
        f"section '{heading}': README.ko.md's tables have other rows or numbers"
    )


def test_the_mistakes_table_has_the_same_rows():
    english, korean = read_table(README), read_table(README_KO)
    assert sorted(korean) == sorted(english)
    for number, mistake in english.items():
        assert (korean[number].command, korean[number].answer) == (
            mistake.command,
            mistake.answer,
        ), f"row {number}"
        assert korean[number].what and korean[number].what != mistake.what, (
            f"row {number}: the mistake is not in Korean"
        )


def _scripts_rows(path: Path) -> list[tuple[str, str]]:
    text = read(path)
    table = text[text.index(SCRIPTS_START) : text.index(SCRIPTS_END)]
    return re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", table, flags=re.M)


def test_the_scripts_table_has_the_same_rows():
    assert _scripts_rows(README)
    assert _scripts_rows(README_KO) == _scripts_rows(README)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", read(path), flags=re.M)}


@pytest.mark.parametrize("path", [README, README_KO], ids=lambda p: p.name)
def test_every_link_to_a_heading_reaches_one(path):
    links = re.findall(r"\]\(([^)\s]*#[^)\s]+)\)", read(path))
    assert links
    for link in links:
        target, anchor = link.split("#", 1)
        file = (path.parent / target) if target else path
        assert anchor in _anchors(file), f"{path.name}: ({link}) reaches no heading of {file.name}"


def test_slugs_are_githubs():
    assert _slug("Host ports and the firewall") == "host-ports-and-the-firewall"
    assert _slug("호스트 포트와 방화벽") == "호스트-포트와-방화벽"
    assert (
        _slug("Resources: the original's reservations and limits, or why not (issue 17)")
        == "resources-the-originals-reservations-and-limits-or-why-not-issue-17"
    )
