"""ctllm-release in a throwaway clone: one service's version, CHANGELOG, commit, tag, image built, tested and
published; every other service's files and registry entries untouched; and the refusals."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloudtolocalllm.devkit.images.publish import published_digest
from cloudtolocalllm.devkit.images.specs import IMAGES

VERSION = "9.8.7"  # far above any real version, so the clone's tags never collide with a real release's
SERVICE = "api-backend"
DAY = "2031-02-03"


def service_files(clone: Path) -> dict[str, str]:
    """Every version file and CHANGELOG in the repository, by path."""
    found = [*clone.glob("packages/*/CHANGELOG.md"), *clone.glob("packages/*/src/**/version.py")]
    found += [*clone.glob("apps/*/CHANGELOG.md")]
    return {str(path.relative_to(clone)): path.read_text() for path in found}


def test_release_touches_only_its_service(
    sh: Callable[..., Any],
    clone: Path,
    docker_env: dict[str, str],
    registry: str,
    untag_later: list[str],
) -> None:
    before = service_files(clone)
    old_head = sh(["git", "rev-parse", "HEAD"], clone, {}).stdout.strip()
    result = sh(
        [sys.executable, "-m", "cloudtolocalllm.devkit.release", SERVICE, VERSION, "--date", DAY],
        clone,
        {**docker_env, "REGISTRY": registry},
        timeout=1800,
    )
    revision = sh(["git", "rev-parse", "--short=12", "HEAD"], clone, {}).stdout.strip()
    untag_later.extend(
        f"{prefix}cloudtolocalllm/{SERVICE}:{tag}" for prefix in ("", f"{registry}/") for tag in (VERSION, revision)
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    # One commit on top, holding exactly the service's version file and CHANGELOG, tagged <service>-v<version>.
    assert sh(["git", "rev-parse", "HEAD~1"], clone, {}).stdout.strip() == old_head
    changed = sh(["git", "show", "--name-only", "--format=", "HEAD"], clone, {}).stdout.split()
    version_file = "packages/bridge_api/src/cloudtolocalllm/bridge_api/version.py"
    assert sorted(changed) == sorted([version_file, "packages/bridge_api/CHANGELOG.md"])
    tagged = sh(["git", "rev-parse", f"{SERVICE}-v{VERSION}^{{commit}}"], clone, {}).stdout.strip()
    assert tagged == sh(["git", "rev-parse", "HEAD"], clone, {}).stdout.strip()
    assert not sh(["git", "status", "--porcelain"], clone, {}).stdout.strip()

    after = service_files(clone)
    assert f'__version__ = "{VERSION}"' in after[version_file]
    changelog = after["packages/bridge_api/CHANGELOG.md"]
    assert re.search(rf"^## Unreleased\n\n## {re.escape(VERSION)} — {DAY}\n", changelog, re.MULTILINE)
    assert changelog.replace(f"## Unreleased\n\n## {VERSION} — {DAY}", "## X") == re.sub(
        r"^## \S+ — unreleased$", "## X", before["packages/bridge_api/CHANGELOG.md"], count=1, flags=re.MULTILINE
    )  # the notes themselves moved unchanged
    others = {path for path in before if path not in changed}
    assert len(others) >= 6
    assert {path: after[path] for path in others} == {path: before[path] for path in others}

    # Published: the new version and the release commit, one digest; no other service's entry in the registry.
    digest = published_digest(registry, f"cloudtolocalllm/{SERVICE}", VERSION)
    assert digest is not None
    assert published_digest(registry, f"cloudtolocalllm/{SERVICE}", revision) == digest
    assert f"images: {SERVICE} published as {digest}" in result.stdout
    for other in IMAGES:
        if other != SERVICE:
            assert published_digest(registry, f"cloudtolocalllm/{other}", VERSION) is None

    # The same release again: refused by its tag, before anything changes.
    again = sh(
        [sys.executable, "-m", "cloudtolocalllm.devkit.release", SERVICE, VERSION],
        clone,
        {**docker_env, "REGISTRY": registry},
    )
    assert again.returncode != 0
    assert "exists already" in again.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["bridge-desktop", "1.0.0"], {}, "unknown service"),
        ([SERVICE, "1.0"], {}, "is not a version"),
        ([SERVICE, "0.0.1"], {}, "must not be lower"),
        ([SERVICE, "1.0.0"], {"REGISTRY": ""}, "set REGISTRY"),
    ],
)
def test_release_refuses_bad_input(
    sh: Callable[..., Any], clone: Path, registry: str, args: list[str], env: dict[str, str], message: str
) -> None:
    before = service_files(clone)
    result = sh([sys.executable, "-m", "cloudtolocalllm.devkit.release", *args], clone, {"REGISTRY": registry, **env})
    assert result.returncode != 0
    assert message in result.stderr
    assert service_files(clone) == before
    assert not sh(["git", "status", "--porcelain"], clone, {}).stdout.strip()
    assert not sh(["git", "tag", "--list", "*-v*"], clone, {}).stdout.strip()


def test_release_refuses_a_dirty_tree(sh: Callable[..., Any], clone: Path, registry: str) -> None:
    version_file = clone / "packages/bridge_api/src/cloudtolocalllm/bridge_api/version.py"
    version_file.write_text(version_file.read_text() + "# local edit\n")
    result = sh(
        [sys.executable, "-m", "cloudtolocalllm.devkit.release", SERVICE, "1.0.0"], clone, {"REGISTRY": registry}
    )
    assert result.returncode != 0
    assert "uncommitted changes" in result.stderr
    assert version_file.read_text().endswith("# local edit\n")


def test_release_refuses_empty_release_notes(sh: Callable[..., Any], clone: Path, registry: str) -> None:
    changelog = clone / "packages/bridge_api/CHANGELOG.md"
    changelog.write_text("# Changelog\n\n## Unreleased\n\n## 0.1.0 — 2030-01-01\n\n- first\n")
    sh(["git", "commit", "--quiet", "-m", "notes", "--", str(changelog)], clone, {})
    result = sh(
        [sys.executable, "-m", "cloudtolocalllm.devkit.release", SERVICE, "1.0.0"], clone, {"REGISTRY": registry}
    )
    assert result.returncode != 0
    assert "Unreleased section is empty" in result.stderr
    assert not sh(["git", "status", "--porcelain"], clone, {}).stdout.strip()
