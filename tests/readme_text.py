"""The READMEs read as test data: sections, fenced code blocks, inline code and tables."""

from __future__ import annotations

import re
from pathlib import Path

from infra.settings import REPO_ROOT

README = REPO_ROOT / "README.md"
README_KO = REPO_ROOT / "README.ko.md"

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```\s*$", re.M | re.S)
_INLINE = re.compile(r"``\s(.+?)\s``|`([^`\n]+)`")
_COMMENT = re.compile(r"(^|\s+)#(\s.*)?$")


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of every `## ` section, in order; the text before the first one is
    the section with the heading ''."""
    parts = re.split(r"^## (.*)$", text, flags=re.M)
    return [("", parts[0])] + list(zip(parts[1::2], parts[2::2], strict=True))


def code_blocks(text: str) -> list[str]:
    return [match.group(1) for match in _FENCE.finditer(text)]


def commands(block: str) -> list[str]:
    """The commands of a code block: its lines without comments and blank lines."""
    lines = (_COMMENT.sub("", line).rstrip() for line in block.splitlines())
    return [line for line in lines if line.strip()]


def inline_code(text: str) -> list[str]:
    """Every inline code span outside the fenced blocks."""
    outside = _FENCE.sub("", text)
    return [a or b for a, b in _INLINE.findall(outside)]


def table_rows(text: str, start: str, end: str) -> list[list[str]]:
    """The cells of every row of the table between two marker comments, header rows left out."""
    table = text[text.index(start) + len(start) : text.index(end)]
    rows = []
    for line in table.strip().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if set("".join(cells)) <= set("-|: "):
            continue
        rows.append(cells)
    return rows[1:]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")
