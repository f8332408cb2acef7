"""Faults with the real processes: a bridge killed mid-stream, a client that goes away, an api-backend
restarted under many bridges, slow readers, and a user trying to hijack another user's bridge."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from cloudtolocalllm.devkit.ollama import LLAMA32 as MODEL
from cloudtolocalllm.devkit.ollama import OllamaDouble, contract_double
from cloudtolocalllm.devkit.peers import FakeBridge
from cloudtolocalllm.devkit.procs import wait_for

from .conftest import Stack

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "count"}], "options": {"num_predict": 400}}


@pytest.fixture
def fake_ollama() -> Iterator[OllamaDouble]:
    with contract_double() as backend:
        yield backend


def test_bridge_killed_mid_stream_ends_the_stream_with_an_error_within_a_second(
    stack: Stack, fake_ollama: OllamaDouble
) -> None:
    bridge = stack.bridge(fake_ollama.url, kind="ollama")
    with (
        httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=30) as client,
        client.stream("POST", "/api/ollama/api/chat", json=CHAT) as response,
    ):
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False
        killed_at = time.monotonic()
        bridge.kill()
        rest = list(lines)
        elapsed = time.monotonic() - killed_at
    assert json.loads(rest[-1]) == {"error": "stream interrupted: bridge disconnected"}
    assert elapsed < 1.0
    wait_for(lambda: stack.metric("relay_streams_active") == 0, 5, "no stream left on the server")
    wait_for(lambda: stack.metric("bridges_connected") == 0, 10, "the dead bridge to be dropped")


def test_client_disconnect_stops_generation_on_the_backend_within_a_second(
    stack: Stack, fake_ollama: OllamaDouble
) -> None:
    stack.bridge(fake_ollama.url, kind="ollama")
    with httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=30) as client:
        with client.stream("POST", "/api/ollama/api/chat", json=CHAT) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(lines)
        closed_at = time.monotonic()
    stopped = wait_for(lambda: fake_ollama.event_times("chat-closed"), 5, "the backend to see the disconnect")
    assert stopped[0] - closed_at < 1.0
    assert not fake_ollama.event_times("chat-done"), "generation must not have run to the end"


def test_api_backend_restart_brings_every_bridge_back_spread_over_time(stack: Stack, fake_ollama: OllamaDouble) -> None:
    count = 8
    for i in range(count):
        stack.bridge(fake_ollama.url, kind="ollama", name=f"b{i}", wait=False)
    stack.wait_bridges("alice", lambda bridges: len(bridges) == count)
    stack.restart_api()
    stack.wait_bridges("alice", lambda bridges: len(bridges) == count, timeout=60)
    since = sorted(float(b["connected_since"]) for b in stack.status())  # type: ignore[arg-type]
    # Full jitter: the reconnects are spread out, not a thundering herd in the same instant.
    assert since[-1] - since[0] > 0.2
    with httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=30) as client:
        assert client.get("/api/ollama/api/version").json() == {"version": "0.6.2"}


def test_slow_readers_keep_api_backend_memory_bounded(stack: Stack, fake_ollama: OllamaDouble) -> None:
    """20 streams whose clients read 1 KiB/s while the backend keeps producing."""
    stack.bridge(fake_ollama.url, kind="ollama", name="slow-reader")
    baseline = stack.api.rss_kb()

    async def slow_reader() -> int:
        body = {**CHAT, "options": {"num_predict": 100_000, "delay_ms": 0}}
        headers = stack.headers()
        read = 0
        async with (
            httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=60) as client,
            client.stream("POST", "/api/ollama/api/chat", json=body) as response,
        ):
            async for chunk in response.aiter_raw(1024):
                read += len(chunk)
                await asyncio.sleep(1.0)
                if read > 5 * 1024:
                    break
        return read

    async def run() -> list[int]:
        return await asyncio.gather(*(slow_reader() for _ in range(20)))

    reads = asyncio.run(run())
    growth_mb = (stack.api.rss_kb() - baseline) / 1024
    assert all(r > 0 for r in reads)
    assert growth_mb < 100, f"api-backend grew by {growth_mb:.1f} MB"


def test_another_user_cannot_hijack_a_bridge_by_its_id(stack: Stack, fake_ollama: OllamaDouble) -> None:
    stack.bridge(fake_ollama.url, kind="ollama", name="mine")
    [alice_bridge] = stack.status("alice")

    async def intrude() -> None:
        mallory = stack.token("mallory")
        intruder = FakeBridge(stack.url, mallory, bridge_id=str(alice_bridge["id"]), name="intruder", models=[MODEL])
        async with intruder:
            assert intruder.welcome is not None
            # Mallory's socket is registered under mallory; alice keeps her bridge and her traffic.
            assert [b["name"] for b in stack.status("alice")] == ["mine"]
            assert [b["name"] for b in stack.status("mallory")] == ["intruder"]
            async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers("alice")) as client:
                response = await client.get("/api/ollama/api/version")
            assert response.json() == {"version": "0.6.2"}

    asyncio.run(intrude())
    assert stack.status("alice")[0]["id"] == alice_bridge["id"]
