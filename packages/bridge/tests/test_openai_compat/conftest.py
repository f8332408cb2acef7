"""Fixtures for the OpenAI-compatibility translator tests; the fakes themselves are in openai_compat_fakes.py
(imported relatively: pytest's importlib import mode names each test module after its path)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cloudtolocalllm.bridge.backend import HttpBackend
from cloudtolocalllm.core.protocol import BackendKind
from cloudtolocalllm.core.testing import running_server

from .openai_compat_fakes import FakeOpenAI


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    app = FakeOpenAI()
    async with running_server(app, graceful_timeout_s=0.5) as url:  # type: ignore[arg-type]
        app.url = url
        yield app
        if app.held is not None:
            app.held.put_nowait(None)


@pytest.fixture
async def upstream(fake: FakeOpenAI) -> AsyncIterator[HttpBackend]:
    backend = HttpBackend(fake.url, kind=BackendKind.OPENAI, connect_timeout_s=2, idle_timeout_s=5)
    yield backend
    await backend.aclose()
