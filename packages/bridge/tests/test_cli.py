"""Settings from env and flags, URL checks, the status command, and the import footprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudtolocalllm.bridge import cli
from cloudtolocalllm.bridge.config import ConfigError, backend_base_url, default_state_dir, tunnel_url
from cloudtolocalllm.bridge.state import BridgeStatusFile, StatusSnapshot, load_or_create_bridge_id


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://app.example.com", "wss://app.example.com/ws/bridge"),
        ("https://app.example.com/", "wss://app.example.com/ws/bridge"),
        ("wss://app.example.com", "wss://app.example.com/ws/bridge"),
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/ws/bridge"),
        ("https://example.com/prefix/", "wss://example.com/prefix/ws/bridge"),
        ("https://app.example.com/ws/bridge", "wss://app.example.com/ws/bridge"),
        ("HTTPS://app.example.com", "wss://app.example.com/ws/bridge"),
    ],
)
def test_tunnel_url(given: str, expected: str) -> None:
    assert tunnel_url(given) == expected


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("", "no cloud URL"),
        ("ftp://example.com", "expected https"),
        ("app.example.com", "expected https"),
        ("https://user:pw@example.com", "credentials"),
        ("https://example.com/?token=abc", "query string"),
        ("https://example.com/#x", "query string"),
    ],
)
def test_tunnel_url_refusals(given: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        tunnel_url(given)


def test_backend_url_checks() -> None:
    assert backend_base_url("http://127.0.0.1:11434/") == "http://127.0.0.1:11434"
    assert backend_base_url("http://localhost:1234/lmstudio") == "http://localhost:1234/lmstudio"
    for bad in ("ftp://x", "127.0.0.1:11434", "http://u:p@host", "http://host/?q=1", "http://host:99999"):
        with pytest.raises(ConfigError):
            backend_base_url(bad)


def test_env_errors_name_every_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLOUDTOLOCALLLM_BRIDGE_BACKEND_KIND", "mainframe")
    monkeypatch.setenv("CLOUDTOLOCALLLM_BRIDGE_STATUS_INTERVAL_S", "often")
    monkeypatch.setenv("CLOUDTOLOCALLLM_BRIDGE_READ_ONLY", "maybe")
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--cloud", "https://x.example"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    for name in ("BACKEND_KIND", "STATUS_INTERVAL_S", "READ_ONLY"):
        assert f"CLOUDTOLOCALLLM_BRIDGE_{name}" in err


def test_missing_cloud_and_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("CLOUDTOLOCALLLM_TOKEN", raising=False)
    monkeypatch.setenv("CLOUDTOLOCALLLM_BRIDGE_STATE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        cli.main(["run"])
    assert info.value.code == 2
    assert "no cloud URL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--cloud", "https://x.example"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "no token: not logged in" in err and "cloudtolocalllm-bridge login" in err


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDTOLOCALLLM_BRIDGE_BACKEND_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("CLOUDTOLOCALLLM_BRIDGE_NAME", "from-env")
    args = cli._parser().parse_args(
        ["run", "--backend", "http://127.0.0.1:2", "--read-only", "--backend-kind", "auto", "--drain-timeout", "5"]
    )
    settings = cli.build_settings(args)
    assert settings.backend_url == "http://127.0.0.1:2"
    assert settings.name == "from-env"
    assert settings.read_only is True
    assert settings.backend_kind == "auto"
    assert settings.drain_timeout_s == 5.0


def test_invalid_flag_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli._parser().parse_args(["run", "--status-interval", "-1"])
    with pytest.raises(ConfigError, match="status_interval_s"):
        cli.build_settings(args)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("cloudtolocalllm-bridge 0.")


def test_default_state_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "cloudtolocalllm" / "bridge"


def test_bridge_id_is_created_once(tmp_path: Path) -> None:
    first = load_or_create_bridge_id(tmp_path / "state")
    assert first == load_or_create_bridge_id(tmp_path / "state")
    assert oct((tmp_path / "state" / "bridge-id").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "state" / "bridge-id").write_text("../../etc\n")  # garbage is replaced, not trusted
    assert load_or_create_bridge_id(tmp_path / "state").startswith("br-")


def _snapshot(**changes: object) -> StatusSnapshot:
    now = time.time()
    snap = StatusSnapshot(
        pid=os.getpid(),
        updated_at=now,
        state="connected",
        since=now - 120,
        cloud_url="wss://app.example.com/ws/bridge",
        session_id="s-9",
        bridge_id="br-1",
        name="desk",
        backend_url="http://127.0.0.1:11434",
        backend_kind="ollama",
        backend_reachable=True,
        models=["llama3:8b"],
        streams_in_flight=2,
        software_version="0.1.0",
    )
    for key, value in changes.items():
        setattr(snap, key, value)
    return snap


def test_status_command_reads_the_status_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = BridgeStatusFile(tmp_path)
    status.snapshot = _snapshot()
    status.update(force=True)
    with pytest.raises(SystemExit) as info:
        cli.main(["status", "--state-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "connected to wss://app.example.com/ws/bridge since 2 min ago, session s-9" in out
    assert "http://127.0.0.1:11434 (ollama): reachable, 1 model(s): llama3:8b" in out
    assert "2 in flight" in out
    with pytest.raises(SystemExit):
        cli.main(["status", "--state-dir", str(tmp_path), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert document["running"] is True and document["session_id"] == "s-9"


def test_status_of_a_dead_bridge(tmp_path: Path) -> None:
    text = cli.format_status(_snapshot(backend_reachable=False, last_error="cannot reach the cloud"), running=False)
    assert "not running" in text and "NOT reachable" in text and "last error: cannot reach the cloud" in text


def test_status_without_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["status", "--state-dir", str(tmp_path / "nothing")])
    assert info.value.code == 1
    assert "has not run" in capsys.readouterr().err


def test_cli_does_not_import_the_server_stack() -> None:
    code = (
        "import sys, cloudtolocalllm.bridge.cli, cloudtolocalllm.bridge.runner;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'httptools', 'h2'));"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == ""


def test_console_script_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloudtolocalllm.bridge", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "cloudtolocalllm-bridge" in result.stdout
