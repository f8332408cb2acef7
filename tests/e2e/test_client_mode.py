"""From nothing to the real model through client mode, as a new user does it: ``login <cloud>`` with only
the cloud's URL (approved on the dev issuer's page), ``run`` with no cloud or token flags, ``connect``, then
the official ollama client with a bare host and no headers -> connect -> api-backend -> the bridge ->
SmolLM2 on llama.cpp."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from cloudtolocalllm.devkit.procs import BIN, Proc, dev_auth_env, free_port, start_api_backend, wait_for

from .conftest import AUDIENCE, FAST_TIMINGS

MODEL = "smollm2:135m"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
OPTIONS = {"temperature": 0, "seed": 42, "num_predict": 16}


def _cli(name: str, *args: str, env: dict[str, str], logs: Path) -> Proc:
    """The bridge's command, its output in ``logs``/``name``.log."""
    return Proc(name, [str(BIN / "cloudtolocalllm-bridge"), *args], env, logs)


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
    login = _cli(f"bridge-login-{port}", "login", cloud, "--no-browser", env=env, logs=logs)
    procs = [login]
    try:
        code = login.wait_for_output(r"enter the code ([A-Z]{4}-[A-Z]{4})", 30).group(1)
        form = {"user_code": code, "subject": "alice", "action": "approve"}
        approved = httpx.post(cloud + "/dev-issuer/activate", data=form, timeout=10)
        assert approved.status_code == 200
        login.wait_for_output(rf"Signed in to {re.escape(cloud)} as alice", 30)
        assert login.popen.wait(30) == 0

        run = ("run", "--backend", local_model, "--backend-kind", "openai", "--name", "desk")
        bridge = _cli(f"bridge-signed-in-{port}", *run, env=env, logs=logs)
        procs.append(bridge)
        headers = {"Authorization": f"Bearer {issuer.mint('alice')}"}
        wait_for(
            lambda: httpx.get(cloud + "/api/bridge/status", headers=headers, timeout=5).json()["bridges"],
            30,
            "the bridge signed in with the stored login",
            interval=0.1,
        )
        connect = _cli(f"bridge-connect-{port}", "connect", "--port", "0", env=env, logs=logs)
        procs.append(connect)
        serving = rf"Serving {re.escape(cloud)} \(as alice\) at (http://127\.0\.0\.1:\d+)"
        url = connect.wait_for_output(serving, 30).group(1)
        yield url
        for proc in (connect, bridge):
            assert proc.stop(timeout=30) == 0  # SIGTERM: a clean exit
    finally:
        for proc in procs:
            proc.kill()  # only what is still running
        api.stop()


def test_the_ollama_client_with_a_bare_host_reaches_the_real_model_through_connect(laptop: str) -> None:
    with ollama.Client(host=laptop) as client:  # no headers: what OLLAMA_HOST=127.0.0.1:11434 gives a tool
        assert MODEL in [m.model for m in client.list().models]
        answer = client.chat(model=MODEL, messages=QUESTION, options=OPTIONS)
        assert "Paris" in answer.message.content
        parts = list(client.chat(model=MODEL, messages=QUESTION, options=OPTIONS, stream=True))
    assert len(parts) >= 3 and parts[-1].done is True
    assert "".join(p.message.content for p in parts) == answer.message.content  # deterministic at 0
