"""Where the repository is: the workspace root at or above the working directory.

Found from the working directory rather than from this file, so that a command run in another checkout (the
release tests' throwaway clones) works on that checkout while the devkit is installed from this one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path


def _is_workspace_root(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file():
        return False
    return "workspace" in tomllib.loads(pyproject.read_text()).get("tool", {}).get("uv", {})


def repo_root(start: Path | None = None) -> Path:
    """The workspace root holding ``start`` (the working directory by default), else the devkit's own."""
    for origin in (start or Path.cwd(), Path(__file__)):
        resolved = origin.resolve()
        for folder in (resolved, *resolved.parents):
            if _is_workspace_root(folder):
                return folder
    raise SystemExit("devkit: no uv workspace (a pyproject.toml with [tool.uv.workspace]) above the working directory")


ROOT = repo_root()
