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
from cloudtolocalllm.bridge_api.database import DatabaseSettings
from cloudtolocalllm.bridge_api.directory import BridgeDirectory
from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core import ServiceApp
from cloudtolocalllm.core.auth import AuthSettings
from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.dev_issuer import DevIssuer, dev_issuer_from

from .postgres_server import PostgresServer
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

    def client(self, user: str = "alice", *, bearer: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {bearer or self.token(user)}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10, **kwargs)

    async def create_key(self, *scopes: str, user: str = "alice", name: str = "test key") -> dict[str, Any]:
        """A new API key of ``user`` (the whole creation answer, with "key")."""
        async with self.client(user) as client:
            response = await client.post("/api/keys", json={"name": name, "scopes": list(scopes)})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


CloudFactory = Callable[..., AbstractAsyncContextManager[Cloud]]


@pytest.fixture
def make_cloud(tmp_path: Path) -> CloudFactory:
    auth = AuthSettings(
        dev_auth=True, dev_issuer_dir=str(tmp_path / "issuer"), dev_issuer_url=ISSUER, dev_audience=AUDIENCE
    )

    @asynccontextmanager
    async def factory(
        directory: BridgeDirectory | None = None, database: DatabaseSettings | None = None, **overrides: Any
    ) -> AsyncIterator[Cloud]:
        # No start-up grace unless a test asks: "no bridge" answers at once (test_reconnect_grace tests it).
        # Replicas made by one test share its SQLite file unless a database is given.
        defaults = ApiSettings(reconnect_grace_s=0, data_dir=str(tmp_path / "data"))
        settings = msgspec.structs.replace(defaults, **overrides)
        app = build_app(settings, auth, directory=directory, database=database)
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (tests use their own databases or clean tables)."""
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def fresh_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own (for tests that stop it, or need an empty schema)."""
    server = PostgresServer()
    server.start()
    yield server
    server.remove()
