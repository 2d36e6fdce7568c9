"""The README's table of operator mistakes, read as test data.

Each row names a mistake, the command the operator types and the one line the tools answer.
Tests set the mistake up, run the row's own command and compare the answer with the row, so
the table cannot drift from what the tools say. `<...>` in an answer stands for a value that
depends on the machine (a path, a container id).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from infra.settings import REPO_ROOT

README = REPO_ROOT / "README.md"
START, END = "<!-- mistakes:start -->", "<!-- mistakes:end -->"
INVOKE = [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT)]


@dataclass(frozen=True)
class Mistake:
    number: int
    what: str
    command: str
    answer: str

    def argv(self) -> list[str]:
        words = shlex.split(self.command)
        if words[0] == "invoke":
            return [*INVOKE, *words[1:]]
        if words[0].startswith("./scripts/"):
            return [str(REPO_ROOT / words[0]), *words[1:]]
        raise ValueError(f"row {self.number}: a command must start with invoke or ./scripts/")

    def matches(self, line: str) -> bool:
        parts = re.split(r"<[^>]+>", self.answer)
        return re.fullmatch(".+".join(re.escape(part) for part in parts), line) is not None


def _cell(text: str) -> str:
    """A cell's text without its code-span backticks (``double`` when it holds a backtick)."""
    text = text.strip()
    for fence in ("`` ", "`"):
        if text.startswith(fence) and text.endswith(fence[::-1]):
            return text[len(fence) : -len(fence)]
    return text


def read_table(readme: Path = README) -> dict[int, Mistake]:
    text = readme.read_text()
    table = text[text.index(START) + len(START) : text.index(END)]
    rows = {}
    for line in table.splitlines():
        cells = [cell for cell in line.strip().strip("|").split(" | ")]
        if len(cells) != 4 or not cells[0].strip().isdigit():
            continue
        number = int(cells[0])
        rows[number] = Mistake(number, cells[1].strip(), _cell(cells[2]), _cell(cells[3]))
    return rows


def run(mistake: Mistake, env: dict[str, str], cwd: Path | None = None):
    return subprocess.run(
        mistake.argv(),
        env=env,
        cwd=cwd or REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def answer_of(result: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed; fails unless it is exactly one line, exit 1."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, f"exit code {result.returncode}: {result.stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    return lines[0]
