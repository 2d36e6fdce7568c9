"""Fixtures for unit tests: isolated settings with their own .env, secrets file and DATA_ROOT."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import REPO_ROOT, Settings, load_settings


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    """A process environment pointing every path of the platform into tmp_path."""
    return {
        "ENV_FILE": str(tmp_path / "env"),
        "DATA_ROOT": str(tmp_path / "data"),
        "SECRETS_FILE": str(tmp_path / "secrets" / "secrets.yml"),
        "GITHUB_OWNER": "example-org",
    }


@pytest.fixture
def settings(environ: dict[str, str]) -> Settings:
    return load_settings(REPO_ROOT, environ)
