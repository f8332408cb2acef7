"""Fixtures for the image publishing and release tests: the real scripts, a real registry, throwaway clones.

Run by ``nox -s tests-images`` after every ``test-<image>`` session (so this commit's images exist), with
DOCKER_HOST naming the run's engine.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloudtolocalllm.devkit.images.engine import docker, image_exists
from cloudtolocalllm.devkit.images.publish import local_registry

ROOT = Path(__file__).resolve().parents[2]
# Commits in throwaway clones need an identity, whatever the machine's git config says.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "release test",
    "GIT_AUTHOR_EMAIL": "release-test@example.invalid",
    "GIT_COMMITTER_NAME": "release test",
    "GIT_COMMITTER_EMAIL": "release-test@example.invalid",
}


@pytest.fixture(scope="session")
def docker_env() -> dict[str, str]:
    host = os.environ.get("DOCKER_HOST")
    assert host, "DOCKER_HOST is unset: run these tests through nox -s tests-images"
    return {"DOCKER_HOST": host, "DOCKER_BUILDKIT": "1"}


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's docker-registry on a free 127.0.0.1 port with its own storage, for the whole session."""
    with local_registry(tmp_path_factory.mktemp("registry")) as address:
        yield address


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """A script as a user runs it: its exit code and output, never an exception."""
    full_env = {**os.environ, **GIT_IDENTITY, **env}
    full_env.pop("VIRTUAL_ENV", None)  # nox inside the clone makes its own
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def sh() -> Run:
    """Run a script as a user runs it: ``sh(args, cwd, env)`` returns exit code and output, never raises."""
    return _run


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone of this commit in a temporary folder: what it changes never reaches the real repository."""
    target = tmp_path / "repo"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(target)], check=True)
    return target


@pytest.fixture
def untag_later(docker_env: dict[str, str]) -> Iterator[list[str]]:
    """Names appended to this list are untagged on the shared engine after the test (layers stay while other
    tags use them): only what the test itself tagged."""
    names: list[str] = []
    yield names
    existing = [name for name in names if image_exists(docker_env, name)]
    if existing:
        docker(docker_env, "image", "rm", *existing, check=False, capture=True)
