"""Real peers for the tunnel tests: the devkit's fake cloud (a websockets server running the tunnel runtime) and
its Ollama double as the local backend (a raw ASGI app on uvicorn), both on 127.0.0.1 with ephemeral ports,
plus a running Bridge.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cloudtolocalllm.bridge.backend import Backend
from cloudtolocalllm.bridge.backoff import Backoff
from cloudtolocalllm.bridge.config import BridgeSettings
from cloudtolocalllm.bridge.runner import Bridge
from cloudtolocalllm.bridge.token import TokenSource
from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.devkit.ollama import OllamaDouble, OpenAIServer
from cloudtolocalllm.devkit.peers import FakeCloud

TOKEN = "tok-1"


# --- the local backend: the devkit's Ollama double ---------------------------------------------------


@pytest.fixture
async def backend() -> AsyncIterator[OllamaDouble]:
    """Chat answers what a test puts in ``chat_queue``; a pull is 64 MB of progress, as fast as it is read."""
    fake = OllamaDouble(
        chat_queue=asyncio.Queue(),
        pull_bytes=64 * 1024 * 1024,
        openai_api=OpenAIServer(stream_content_type="text/event-stream"),
    )
    async with running_server(fake, graceful_timeout_s=0.5) as url:  # type: ignore[arg-type]
        fake.url = url
        yield fake
        assert fake.chat_queue is not None
        fake.chat_queue.put_nowait(None)


@pytest.fixture
def dead_backend_url() -> str:
    """A loopback URL where nothing listens (the port was bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- the cloud: the devkit's fake cloud ---------------------------------------------------------------


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    async with FakeCloud(tokens={TOKEN}) as fake:
        yield fake


# --- the bridge under test ----------------------------------------------------------------------------


class RunningBridge:
    def __init__(self, bridge: Bridge, task: asyncio.Task[int]) -> None:
        self.bridge = bridge
        self.task = task

    async def stop(self, timeout: float = 10.0) -> int:
        self.bridge.request_stop()
        async with asyncio.timeout(timeout):
            return await self.task


BridgeFactory = Callable[..., "asyncio.Future[RunningBridge] | Any"]


@pytest.fixture
async def start_bridge(tmp_path: Path, cloud: FakeCloud, backend: OllamaDouble) -> AsyncIterator[Callable[..., Any]]:
    started: list[RunningBridge] = []

    async def start(
        *,
        token_source: TokenSource | None = None,
        backoff: Backoff | None = None,
        backend_impl: Backend | None = None,
        **overrides: Any,
    ) -> RunningBridge:
        options: dict[str, Any] = {
            "cloud_url": cloud.url,
            "backend_url": backend.url,
            "state_dir": str(tmp_path / "state"),
            "name": "test-bridge",
            "status_interval_s": 30.0,
            "drain_timeout_s": 5.0,
            "handshake_timeout_s": 5.0,
        }
        options.update(overrides)
        settings = BridgeSettings(**options)
        bridge = Bridge(
            settings,
            token_source or TokenSource(env_token=TOKEN),
            backoff=backoff or Backoff(base_s=0.05, cap_s=0.2, stable_after_s=30, rng=random.Random(7)),
            token_poll_s=0.05,
            backend=backend_impl,
        )
        running = RunningBridge(bridge, asyncio.create_task(bridge.run()))
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.stop()
