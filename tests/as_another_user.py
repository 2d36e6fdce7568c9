"""Running the tasks as another user (nobody), wherever this checkout sits.

A clone may sit in a directory other users cannot enter (root's home is 0700), and so may its
virtualenv: `nobody` can read neither. `readable_copy` copies what `invoke <task>` needs (the
project's code, stacks and configs, and the installed distributions it depends on) into a
directory everyone can read, and names an interpreter `nobody` can run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from infra.settings import REPO_ROOT

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
PROJECT = "nextcandle-infra"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Copy:
    python: str  # an interpreter the user can run
    root: Path  # the project's copy: --search-root
    environ: dict[str, str]  # PYTHONPATH: the copy and its dependencies

    def invoke(self, *args: str) -> list[str]:
        return [*AS_NOBODY, self.python, "-m", "invoke", "--search-root", str(self.root), *args]


def _runtime_distributions() -> list[metadata.Distribution]:
    """The project's dependencies without its extras, and theirs, installed here."""
    seen: dict[str, metadata.Distribution] = {}
    pending = [PROJECT]
    while pending:
        name = pending.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # a dependency for another platform
            continue
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            match = _NAME.match(requirement)
            if match:
                pending.append(match.group(0))
    del seen[PROJECT]  # the project itself is copied from the checkout
    return list(seen.values())


def _runnable_by_nobody(python: str) -> bool:
    probe = subprocess.run(
        [*AS_NOBODY, python, "-c", "import json"], capture_output=True, check=False
    )
    return probe.returncode == 0


def readable_copy(directory: Path) -> Copy:
    """Copy the project and its dependencies into `directory` (made world-readable)."""
    directory.chmod(0o755)  # noqa: S103 - the unprivileged user must enter it
    root, site = directory / "repo", directory / "site-packages"
    for part in ("infra", "stacks", "configs", "secrets"):
        if (REPO_ROOT / part).is_dir():
            shutil.copytree(
                REPO_ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__")
            )
    shutil.copy2(REPO_ROOT / "tasks.py", root / "tasks.py")
    for dist in _runtime_distributions():
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if source.is_file() and "__pycache__" not in file.parts and ".." not in file.parts:
                (site / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, site / file)
    for path in (directory, *directory.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)  # noqa: S103 - the user reads it
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys.executable), f"/usr/bin/python{version}"]
    python = next((p for p in candidates if _runnable_by_nobody(p)), candidates[0])
    return Copy(python, root, {"PYTHONPATH": f"{root}{os.pathsep}{site}"})
