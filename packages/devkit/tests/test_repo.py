"""The workspace root is found from the working directory, so a command run in another checkout works there."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudtolocalllm.devkit.repo import ROOT, repo_root


def _workspace(folder: Path) -> Path:
    (folder / "packages" / "a").mkdir(parents=True)
    (folder / "pyproject.toml").write_text('[tool.uv.workspace]\nmembers = ["packages/*"]\n')
    (folder / "packages" / "a" / "pyproject.toml").write_text('[project]\nname = "a"\n')
    return folder


def test_the_root_above_a_member_is_the_workspace_not_the_member(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "checkout")
    assert repo_root(root / "packages" / "a") == root.resolve()


def test_the_working_directory_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _workspace(tmp_path / "clone")
    monkeypatch.chdir(root / "packages")
    assert repo_root() == root.resolve()


def test_outside_any_workspace_the_devkits_own_checkout(tmp_path: Path) -> None:
    assert repo_root(tmp_path) == ROOT
    assert (ROOT / "packages" / "devkit" / "pyproject.toml").is_file()
