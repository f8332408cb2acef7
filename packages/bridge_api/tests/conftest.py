from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from cloudtolocalllm.bridge_api.app import build_app
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core import ServiceApp
from cloudtolocalllm.core.auth import AuthSettings, DevIssuer, dev_issuer_from
from cloudtolocalllm.core.testing import running_server

ISSUER = "http://issuer.test/dev-issuer"
AUDIENCE = "cloudtolocalllm-test"


@dataclass
class Cloud:
    app: ServiceApp
    url: str
    issuer: DevIssuer

    def token(self, user: str = "alice", **kwargs: Any) -> str:
        return self.issuer.mint(user, **kwargs)

    def client(self, user: str = "alice", **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10, **kwargs)


CloudFactory = Callable[..., AbstractAsyncContextManager[Cloud]]


@pytest.fixture
def make_cloud(tmp_path: Path) -> CloudFactory:
    auth = AuthSettings(
        dev_auth=True, dev_issuer_dir=str(tmp_path / "issuer"), dev_issuer_url=ISSUER, dev_audience=AUDIENCE
    )

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[Cloud]:
        settings = msgspec.structs.replace(ApiSettings(), **overrides)
        app = build_app(settings, auth)
        async with running_server(app, websocket_max_message_size=settings.max_frame_bytes + 1024) as url:
            yield Cloud(app, url, dev_issuer_from(auth))

    return factory


@pytest.fixture
async def cloud(make_cloud: CloudFactory) -> AsyncIterator[Cloud]:
    async with make_cloud() as running:
        yield running
