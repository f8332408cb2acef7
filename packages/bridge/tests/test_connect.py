"""``connect`` (client mode) on real sockets: the official ollama client with a bare host -> connect -> a
real api-backend -> a real bridge -> the fake Ollama backend; streaming both ways, cancellation, the
loopback guard, and the end of a sign-in."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import ollama
import pytest

from cloudtolocalllm.bridge.connect import ClientMode
from cloudtolocalllm.bridge.credentials import Credentials, StoredCredentialsSource, save_credentials
from cloudtolocalllm.bridge.exits import EXIT_CONFIG, EXIT_SIGN_IN
from cloudtolocalllm.bridge.token import TokenSource
from cloudtolocalllm.core.testing import wait_until
from cloudtolocalllm.devkit.ollama import OllamaDouble

from .cloud_stack import Cloud, api_backend, running_bridge


@dataclass
class Chain:
    cloud: Cloud
    backend: OllamaDouble
    mode: ClientMode
    url: str


@asynccontextmanager
async def client_mode(cloud: Cloud, source: TokenSource) -> AsyncIterator[tuple[ClientMode, str]]:
    mode = ClientMode(cloud.url + "/api/ollama", source, cloud_url=cloud.url)
    host, port = await mode.start("127.0.0.1", 0)
    try:
        yield mode, f"http://{host}:{port}"
    finally:
        await mode.aclose()


@pytest.fixture
async def chain(tmp_path: Path, backend: OllamaDouble) -> AsyncIterator[Chain]:
    async with (
        api_backend(tmp_path / "keys") as cloud,
        running_bridge(cloud, backend.url, tmp_path / "bridge"),
        client_mode(cloud, TokenSource(env_token=cloud.token("alice"))) as (mode, url),
    ):
        yield Chain(cloud, backend, mode, url)


def _chat_line(content: str, *, done: bool = False) -> bytes:
    message = {"role": "assistant", "content": content}
    return json.dumps({"model": "smollm2:135m", "message": message, "done": done}).encode() + b"\n"


async def test_the_official_ollama_client_with_a_bare_host(chain: Chain) -> None:
    async with ollama.AsyncClient(host=chain.url) as client:  # no headers, no token: what OLLAMA_HOST gives
        listed = await client.list()  # the fake backend names models the old way ("name"), so count them
        assert len(listed.models) == len(chain.backend.models)
        assert chain.backend.requests[-1][:2] == ("GET", "/api/tags")
        for part in ("Bon", "jour"):
            chain.backend.chat_queue.put_nowait(_chat_line(part))
        chain.backend.chat_queue.put_nowait(_chat_line("", done=True))
        chain.backend.chat_queue.put_nowait(None)
        question = [{"role": "user", "content": "hi"}]
        parts = [p async for p in await client.chat("smollm2:135m", messages=question, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == "Bonjour" and parts[-1].done
    method, path, headers = chain.backend.requests[-1]
    assert (method, path) == ("POST", "/api/chat")
    assert "authorization" not in headers  # the bridge never passes the cloud's credentials on


async def test_answers_are_streamed_chunk_by_chunk(chain: Chain) -> None:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        http.post(chain.url + "/api/chat", json={"model": "smollm2:135m", "messages": []}) as response,
    ):
        assert response.status == 200
        for part in ("one", "two", "three"):
            chain.backend.chat_queue.put_nowait(_chat_line(part))
            line = await asyncio.wait_for(response.content.readline(), 10)  # before the next one exists
            assert json.loads(line)["message"]["content"] == part
        chain.backend.chat_queue.put_nowait(None)
        assert await response.content.read() == b""


async def test_a_client_that_goes_away_cancels_the_generation(chain: Chain) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        response = await http.post(chain.url + "/api/generate", json={"model": "smollm2:135m", "prompt": "go"})
        assert json.loads(await asyncio.wait_for(response.content.readline(), 10))["response"] == "x"
        response.close()  # the tool disconnects mid-answer
    await wait_until(lambda: chain.backend.generate_disconnected_at is not None, timeout=10)
    assert not chain.backend.generate_done.is_set()


async def test_request_bodies_stream_to_the_backend_unchanged(chain: Chain) -> None:
    blob = os.urandom(8 * 1024 * 1024)
    digest = hashlib.sha256(blob).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        for offset in range(0, len(blob), 256 * 1024):
            yield blob[offset : offset + 256 * 1024]

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        http.post(f"{chain.url}/api/blobs/sha256:{digest}", data=chunks()) as response,
    ):
        assert response.status == 201, await response.text()
        assert await response.json() == {"size": len(blob), "sha256": digest}


async def test_root_answers_like_ollama_and_errors_stay_ollama_shaped(chain: Chain) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(chain.url + "/") as root:
            assert (root.status, await root.text()) == (200, "Ollama is running")
        async with http.get(chain.url + "/api/nope") as unknown:
            assert unknown.status == 403  # the bridge's allowlist, relayed as the cloud answered it
            assert "not allowed" in (await unknown.json())["error"]


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Host": "evil.example"}, False),  # DNS rebinding: a web page's name pointed at 127.0.0.1
        ({"Origin": "https://evil.example"}, False),  # a web page elsewhere, through the user's browser
        ({"Origin": "http://localhost:3000"}, True),  # a local web UI
        ({"Host": "localhost:11434"}, True),
    ],
)
async def test_loopback_guard(chain: Chain, headers: dict[str, str], allowed: bool) -> None:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(chain.url + "/api/tags", headers=headers) as response,
    ):
        assert response.status == (200 if allowed else 403)
        if not allowed:
            assert "error" in await response.json()


async def test_a_refused_key_ends_with_the_sign_in_status(tmp_path: Path) -> None:
    async with (
        api_backend(tmp_path / "keys") as cloud,
        client_mode(cloud, TokenSource(env_token="ctllm_revoked", label="CLOUDTOLOCALLLM_BRIDGE_KEY")) as (mode, url),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(url + "/api/tags") as response,
    ):
        assert response.status == 401
        body = await response.json()
        assert body["error"].endswith(f"sign in again with: cloudtolocalllm-bridge login {cloud.url}")
        assert await asyncio.wait_for(mode.wait(), 5) == EXIT_SIGN_IN


async def test_a_refused_renewal_ends_with_the_sign_in_status(tmp_path: Path) -> None:
    async with api_backend(tmp_path / "keys") as cloud:
        path = tmp_path / "state" / "credentials.json"
        now = time.time()
        save_credentials(
            path,
            Credentials(
                issuer=cloud.url + "/dev-issuer",
                client_id="cloudtolocalllm-bridge",
                audience="cloudtolocalllm-test",
                token_endpoint=cloud.url + "/dev-issuer/oauth/token",
                access_token=cloud.token("alice", ttl_s=1),
                expires_at=now - 1,  # expired: the first request renews it, and the issuer refuses
                obtained_at=now - 3600,
                refresh_token="revoked-refresh-token",
            ),
        )
        source = StoredCredentialsSource(path, cloud_url=cloud.url)
        async with (
            client_mode(cloud, source) as (mode, url),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(url + "/api/tags") as response,
        ):
            assert response.status == 401
            assert "sign in again with: cloudtolocalllm-bridge login" in (await response.json())["error"]
            assert await asyncio.wait_for(mode.wait(), 5) == EXIT_SIGN_IN
            assert mode.exit_message is not None
            assert mode.exit_message.splitlines()[-1] == f"sign in again with: cloudtolocalllm-bridge login {cloud.url}"


# --- the command -----------------------------------------------------------------------------------


def _command(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudtolocalllm.bridge", "connect", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_command_says_which_cloud_and_account_then_stops_cleanly(tmp_path: Path) -> None:
    from cloudtolocalllm.dev_issuer import DevIssuer

    token = DevIssuer(tmp_path / "keys", issuer="http://x/i", audience="a").mint("alice", extra_claims={"email": "a@x"})
    env = {"CLOUDTOLOCALLLM_BRIDGE_KEY": token, "CLOUDTOLOCALLLM_BRIDGE_STATE_DIR": str(tmp_path / "state")}
    proc = _command("--port", "0", "--cloud", "https://app.example.com", env=env)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("Serving https://app.example.com (as a@x (alice)) at http://127.0.0.1:")
        port = int(first.rsplit(":", 1)[1])
        assert port > 0
        assert proc.stdout.readline().strip() == f"Use it as an Ollama server: OLLAMA_HOST=127.0.0.1:{port} ollama list"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    _, err = proc.communicate()
    assert token not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "not a loopback address"),
        (["--port", "70000"], "expected 0-65535"),
        ([], "no cloud URL: sign in with `cloudtolocalllm-bridge login https://app.example.com`"),
    ],
)
def test_the_command_refuses_what_it_cannot_serve(tmp_path: Path, args: list[str], message: str) -> None:
    env = {"CLOUDTOLOCALLLM_BRIDGE_KEY": "ctllm_x", "CLOUDTOLOCALLLM_BRIDGE_STATE_DIR": str(tmp_path / "state")}
    cloud = [] if not args else ["--cloud", "https://app.example.com"]
    proc = _command(*args, *cloud, env=env)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_CONFIG
    assert message in err


def test_a_port_in_use_is_explained(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {"CLOUDTOLOCALLLM_BRIDGE_KEY": "ctllm_x", "CLOUDTOLOCALLLM_BRIDGE_STATE_DIR": str(tmp_path / "state")}
        proc = _command("--port", str(port), "--cloud", "https://app.example.com", env=env)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err
