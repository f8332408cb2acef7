"""Where the built artifacts are: ``nox -s tests-packaging`` builds them first and passes the folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("CTLLM_REPO_ROOT", Path(__file__).resolve().parents[2]))


def _built(variable: str, default: Path, what: str) -> Path:
    path = Path(os.environ.get(variable, default))
    if not path.is_dir():
        pytest.fail(f"{what} not built at {path}: run `nox -s tests-packaging` (it builds them), or set {variable}")
    return path


@pytest.fixture(scope="session")
def downloads_dir() -> Path:
    return _built("CTLLM_DOWNLOADS_DIR", ROOT / "dist" / "downloads", "the downloads")


@pytest.fixture(scope="session")
def site_dir() -> Path:
    return _built("CTLLM_SITE_DIR", ROOT / "dist" / "static-site", "the static site")
