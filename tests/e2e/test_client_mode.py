"""From nothing to the real model through client mode, as a new user does it: ``login <cloud>`` with only
the cloud's URL (approved on the dev issuer's page), ``run`` with no cloud or token flags, ``connect``, then
the official ollama client with a bare host and no headers -> connect -> api-backend -> the bridge ->
SmolLM2 on llama.cpp."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from cloudtolocalllm.devkit.procs import BIN, dev_auth_env, free_port, start_api_backend, wait_for

from .conftest import AUDIENCE, FAST_TIMINGS

MODEL = "smollm2:135m"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 16}


def _cli(*args: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen[str]:
    """The bridge's command; its output in a pipe to read (short-lived output), or in ``log``."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("ab")) if log is not None else subprocess.PIPE
        return subprocess.Popen(
            [str(BIN / "cloudtolocalllm-bridge"), *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 30) -> re.Match[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if found := re.search(pattern, line):
            return found
    raise AssertionError(f"{pattern!r} not printed; got: {''.join(seen)}")


@pytest.fixture
def laptop(logs: Path, tmp_path: Path, local_model: str) -> Iterator[str]:
    """api-backend (its dev issuer at its own URL, as in the dev stack); then, with one state dir: `login
    <cloud>`, `run` (only the backend named: the model is not on Ollama's port) and `connect --port 0`.
    Yields connect's URL."""
    port = free_port()
    cloud = f"http://127.0.0.1:{port}"
    auth_env, issuer = dev_auth_env(tmp_path / "issuer", cloud + "/dev-issuer", AUDIENCE)
    api, _ = start_api_backend(logs, {**auth_env, **FAST_TIMINGS}, port=port)
    env = {"CLOUDTOLOCALLLM_BRIDGE_STATE_DIR": str(tmp_path / "signed-in"), "DISPLAY": ""}
    login = _cli("login", cloud, "--no-browser", env=env)
    procs: list[subprocess.Popen[str]] = [login]
    try:
        code = _read_until(login, r"enter the code ([A-Z]{4}-[A-Z]{4})").group(1)
        form = {"user_code": code, "subject": "alice", "action": "approve"}
        approved = httpx.post(cloud + "/dev-issuer/activate", data=form, timeout=10)
        assert approved.status_code == 200
        _read_until(login, rf"Signed in to {re.escape(cloud)} as alice")
        assert login.wait(30) == 0

        run = ("run", "--backend", local_model, "--backend-kind", "openai", "--name", "desk")
        bridge = _cli(*run, env=env, log=logs / f"bridge-signed-in-{port}.log")
        procs.append(bridge)
        headers = {"Authorization": f"Bearer {issuer.mint('alice')}"}
        wait_for(
            lambda: httpx.get(cloud + "/api/bridge/status", headers=headers, timeout=5).json()["bridges"],
            30,
            "the bridge signed in with the stored login",
            interval=0.1,
        )
        connect = _cli("connect", "--port", "0", env=env)
        procs.append(connect)
        url = _read_until(connect, rf"Serving {re.escape(cloud)} \(as alice\) at (http://127\.0\.0\.1:\d+)").group(1)
        yield url
        for proc in (connect, bridge):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        api.stop()


def test_the_ollama_client_with_a_bare_host_reaches_the_real_model_through_connect(laptop: str) -> None:
    with ollama.Client(host=laptop) as client:  # no headers: what OLLAMA_HOST=127.0.0.1:11434 gives a tool
        assert MODEL in [m.model for m in client.list().models]
        answer = client.chat(model=MODEL, messages=QUESTION, options=OPTIONS)
        assert "Paris" in answer.message.content
        parts = list(client.chat(model=MODEL, messages=QUESTION, options=OPTIONS, stream=True))
    assert len(parts) >= 3 and parts[-1].done is True
    assert "".join(p.message.content for p in parts) == answer.message.content  # deterministic at 0
