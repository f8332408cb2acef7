"""Fixtures for the OpenAI-compatibility translator tests: the devkit's Ollama double in its OpenAI mode, and the
translator in front of it (openai_compat_fakes.py holds the helpers that call it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cloudtolocalllm.bridge.backend import HttpBackend
from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.devkit.ollama import OllamaDouble, OpenAIServer
from cloudtolocalllm.devkit.ollama.openai import MODEL
from cloudtolocalllm.protocol import BackendKind


@pytest.fixture
async def fake() -> AsyncIterator[OpenAIServer]:
    double = OllamaDouble(models=[MODEL], openai=True)
    app = double.openai_api
    async with running_server(double, graceful_timeout_s=0.5) as url:  # type: ignore[arg-type]
        app.url = url
        yield app
        if app.held is not None:
            app.held.put_nowait(None)


@pytest.fixture
async def upstream(fake: OpenAIServer) -> AsyncIterator[HttpBackend]:
    backend = HttpBackend(fake.url, kind=BackendKind.OPENAI, connect_timeout_s=2, idle_timeout_s=5)
    yield backend
    await backend.aclose()
