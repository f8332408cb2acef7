"""Settings from the environment, and the console script as a real process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloudtolocalllm.core import SettingsError
from cloudtolocalllm.core.app import DEFAULT_CSP
from cloudtolocalllm.static_site import __version__, load

from .static_site_tree import INDEX_HTML

SCRIPT = "cloudtolocalllm-static-site"


def _command() -> list[str]:
    # The console script installed next to this interpreter (nox and uv venvs both put it there).
    found = shutil.which(SCRIPT, path=str(Path(sys.executable).parent))
    assert found, f"{SCRIPT} is not installed in this environment"
    return [found]


def test_defaults(tree: Path) -> None:
    settings = load({"STATIC_ROOT": str(tree)})
    assert settings.root == str(tree)
    assert (settings.host, settings.port, settings.spa, settings.max_age) == ("127.0.0.1", 8080, False, 300)
    assert settings.csp == DEFAULT_CSP
    assert settings.service_name == "static-site"


def test_values_from_the_environment(tree: Path) -> None:
    settings = load(
        {
            "STATIC_ROOT": str(tree),
            "STATIC_PORT": "9000",
            "STATIC_HOST": "::1",
            "STATIC_SPA": "true",
            "STATIC_CSP": "default-src 'none'",
            "STATIC_MAX_AGE": "60",
            "STATIC_SERVICE_NAME": "flutter-app",
        }
    )
    assert (settings.port, settings.host, settings.spa, settings.max_age) == (9000, "::1", True, 60)
    assert settings.csp == "default-src 'none'"
    assert settings.service_name == "flutter-app"


def test_every_bad_variable_is_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load(
            {
                "STATIC_ROOT": str(tmp_path / "missing"),
                "STATIC_PORT": "http",
                "STATIC_SPA": "maybe",
                "STATIC_MAX_AGE": "-1",
            }
        )
    assert set(caught.value.problems) == {"STATIC_ROOT", "STATIC_PORT", "STATIC_SPA", "STATIC_MAX_AGE"}
    assert "not a directory" in caught.value.problems["STATIC_ROOT"]


def test_root_is_required() -> None:
    with pytest.raises(SettingsError) as caught:
        load({})
    assert set(caught.value.problems) == {"STATIC_ROOT"}


def test_version_flag() -> None:
    done = subprocess.run([*_command(), "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == f"{SCRIPT} {__version__}"


def test_bad_settings_exit_2_with_one_message(tmp_path: Path) -> None:
    env = {**os.environ, "STATIC_ROOT": str(tmp_path / "nope"), "STATIC_PORT": "eighty"}
    done = subprocess.run(_command(), env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith(f"{SCRIPT}: invalid configuration:")
    assert "STATIC_ROOT" in done.stderr and "STATIC_PORT" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def process(tree: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {**os.environ, "STATIC_ROOT": str(tree), "STATIC_PORT": "0", "STATIC_SPA": "true"}
    proc = subprocess.Popen(_command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            if record["msg"] == "listening":
                port = record["port"]
        assert port, "the server did not report its port"
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_console_script_serves_then_stops_cleanly_on_sigterm(
    process: tuple[subprocess.Popen[str], str],
) -> None:
    proc, base_url = process
    with httpx.Client(base_url=base_url, timeout=10) as client:
        health = client.get("/health")
        assert health.json()["status"] == "ok"
        page = client.get("/chat", headers={"accept": "text/html"})
        assert page.status_code == 200
        assert page.text == INDEX_HTML
        assert "server" not in page.headers  # no software banner
        assert page.headers["content-security-policy"] == DEFAULT_CSP
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert proc.stdout is not None
    access = [json.loads(line) for line in proc.stdout.read().splitlines() if '"request"' in line]
    assert any(entry.get("route") == "/{path:path}" and entry.get("status") == 200 for entry in access)
