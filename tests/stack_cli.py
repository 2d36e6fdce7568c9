"""Whether the docker CLI here renders stack files (`docker stack config`, CLI >= 23): the
unit tests that render a stack skip without it."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def stack_config_works() -> bool:
    if shutil.which("docker") is None:
        return False
    command = ["docker", "stack", "config", "--help"]
    probe = subprocess.run(command, capture_output=True, check=False)
    return probe.returncode == 0


needs_stack_config = pytest.mark.skipif(
    not stack_config_works(), reason="needs the docker CLI with `docker stack config` (>= 23)"
)
