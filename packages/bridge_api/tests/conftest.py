from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from cloudtolocalllm.bridge_api.app import build_app
from cloudtolocalllm.bridge_api.directory import BridgeDirectory
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core import ServiceApp
from cloudtolocalllm.core.auth import AuthSettings, DevIssuer, dev_issuer_from
from cloudtolocalllm.core.testing import running_server

from .redis_server import RedisServer

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
    async def factory(directory: BridgeDirectory | None = None, **overrides: Any) -> AsyncIterator[Cloud]:
        # No start-up grace unless a test asks: "no bridge" answers at once (test_reconnect_grace tests it).
        settings = msgspec.structs.replace(ApiSettings(reconnect_grace_s=0), **overrides)
        app = build_app(settings, auth, directory=directory)
        async with running_server(
            app, max_websocket_message_bytes=settings.max_frame_bytes + 1024, max_header_bytes=settings.max_header_bytes
        ) as url:
            app.state.registry.replica_url = url  # as cli.py does once the port is bound
            yield Cloud(app, url, dev_issuer_from(auth))

    return factory


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, without persistence; restartable on the same port."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def cloud(make_cloud: CloudFactory) -> AsyncIterator[Cloud]:
    async with make_cloud() as running:
        yield running
