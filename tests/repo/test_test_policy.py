"""The rules every test session runs under: CI fails on a skip that is not for another platform (the root
conftest.py), and every folder of tests is run by some nox session."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("CTLLM_REPO_ROOT") or Path(__file__).resolve().parents[2])

SAMPLE = """
import pytest

def test_passes():
    pass

@pytest.mark.skip(reason="not written yet")
def test_marked():
    pass

def test_skips_itself():
    pytest.skip("no tool here")

@pytest.mark.skipif(True, reason="other platform: Windows services")
def test_for_windows():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
"""


def _run_sample(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """pytest in a folder of its own holding the repository's root conftest.py and SAMPLE."""
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _summary(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_outside_ci_a_skip_is_listed_with_its_reason(tmp_path: Path) -> None:
    result = _run_sample(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout
    assert re.search(r"\b1 passed, 3 skipped, 1 xfailed\b", _summary(result.stdout)), result.stdout
    for reason in ("not written yet", "no tool here", "other platform: Windows services"):
        assert re.search(rf"^SKIPPED \[1\] .*: {reason}$", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_only_another_platforms_skip_passes(tmp_path: Path, ci: str) -> None:
    result = _run_sample(tmp_path, ci=ci)
    assert result.returncode == 1, result.stdout
    summary = _summary(result.stdout)
    # The marked skip is decided at setup (an error), the test's own skip in its call (a failure).
    assert re.search(r"\b1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error\b", summary), result.stdout
    assert "skipped in CI, which allows no skip but one for another platform" in result.stdout
    assert re.search(r"^ERROR .*test_marked - skipped in CI.*: not written yet$", result.stdout, re.MULTILINE)
    assert re.search(r"^FAILED .*test_skips_itself - skipped in CI.*: no tool here$", result.stdout, re.MULTILINE)
    assert re.search(r"^SKIPPED \[1\] .*: other platform: Windows services$", result.stdout, re.MULTILINE)


def test_in_ci_a_module_that_skips_itself_fails_collection(tmp_path: Path) -> None:
    (tmp_path / "test_needs_a_module.py").write_text('import pytest\npytest.importorskip("no_such_module_here")\n')
    result = _run_sample(tmp_path, ci="true")
    assert result.returncode != 0, result.stdout
    assert re.search(r"^ERROR .*test_needs_a_module\.py - skipped in CI", result.stdout, re.MULTILINE), result.stdout


# Folders of tests that no nox session runs yet, each with the issue that adds it. Nothing else may be here.
NOT_YET_IN_A_SESSION: set[str] = set()


def _test_folders() -> set[str]:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*test_*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    folders = {str(Path(name).parent) for name in files if Path(name).name.startswith("test_")}
    # A package's tests (and their subfolders) run in its own tests-<package> session.
    return {folder for folder in folders if not re.match(r"packages/[^/]+/tests(/|$)", folder)}


def test_every_folder_of_tests_runs_in_a_nox_session() -> None:
    noxfile = (ROOT / "noxfile.py").read_text()
    assert 'f"packages/{folder}/tests"' in noxfile  # the per-package sessions, generated for every package
    folders = _test_folders()
    assert {"tests/e2e", "tests/packaging", "tests/repo"} <= folders  # the listing found them
    # A session runs pytest on a folder it names (or on one of its parents) as a string in the noxfile.
    unrun = {
        folder
        for folder in folders
        if not any(f'"{named}"' in noxfile for named in (folder, *map(str, Path(folder).parents[:-1])))
    }
    assert unrun <= NOT_YET_IN_A_SESSION, f"no nox session runs {sorted(unrun - NOT_YET_IN_A_SESSION)}"
