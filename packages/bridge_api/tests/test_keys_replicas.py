"""A revocation on one replica holds on the other at once: two real api-backend servers sharing one
PostgreSQL (LISTEN/NOTIFY) or one Redis (pub/sub), each with the key cached for an hour, so only the
broadcast can explain the 401. The measured latency is printed (``-s``); ``nox -s bench`` reports it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from cloudtolocalllm.bridge_api.database import DatabaseSettings

from .conftest import Cloud, CloudFactory
from .postgres_server import PostgresServer
from .redis_server import RedisServer

HOUR = 3600.0


async def measure_revocation(a: Cloud, b: Cloud) -> float:
    """Seconds from the revocation's answer on ``a`` until ``b`` refuses the key."""
    created = await a.create_key("inference")
    async with b.client(bearer=created["key"]) as on_b:
        assert (await on_b.get("/api/ollama/api/tags")).status_code == 503  # accepted (no bridge), now cached
        async with a.client() as owner:
            assert (await owner.delete(f"/api/keys/{created['id']}")).status_code == 204
        revoked_at = time.perf_counter()
        deadline = revoked_at + 30
        while time.perf_counter() < deadline:
            response = await on_b.get("/api/ollama/api/tags")
            if response.status_code == 401:
                return time.perf_counter() - revoked_at
        raise AssertionError("the other replica still accepted the revoked key after 30 s")


@pytest.fixture
async def replicas_on_postgres(make_cloud: CloudFactory, postgres: PostgresServer) -> AsyncIterator[list[Cloud]]:
    database = DatabaseSettings(database_url=postgres.url)
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(make_cloud(database=database, key_cache_ttl_s=HOUR)) for _ in range(2)]


async def test_revocation_reaches_the_other_replica_through_postgresql(replicas_on_postgres: list[Cloud]) -> None:
    a, b = replicas_on_postgres
    assert type(b.app.state.keys.invalidations).__name__ == "PostgresInvalidations"
    latencies = [await measure_revocation(a, b) for _ in range(5)]
    print(f"revocation latency across replicas (PostgreSQL NOTIFY), ms: {[round(x * 1000, 1) for x in latencies]}")
    assert max(latencies) < 5  # a broadcast, not the hour-long cache TTL


async def test_revocation_reaches_the_other_replica_through_redis(
    make_cloud: CloudFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings: dict[str, Any] = {"redis_url": redis_server.url, "key_cache_ttl_s": HOUR}
    async with make_cloud(**settings) as a, make_cloud(**settings) as b:
        assert type(b.app.state.keys.invalidations).__name__ == "RedisInvalidations"
        latencies = [await measure_revocation(a, b) for _ in range(5)]
    print(f"revocation latency across replicas (Redis pub/sub), ms: {[round(x * 1000, 1) for x in latencies]}")
    assert max(latencies) < 5


async def test_a_listener_that_reconnects_forgets_every_cached_key(
    make_cloud: CloudFactory, redis_server: RedisServer
) -> None:
    async with make_cloud(redis_url=redis_server.url, key_cache_ttl_s=HOUR) as cloud:
        created = await cloud.create_key("inference")
        async with cloud.client(bearer=created["key"]) as client:
            await client.get("/api/ollama/api/tags")
        keys = cloud.app.state.keys
        assert keys.verifier.cached == 1
        reset = asyncio.Event()
        forget = keys.invalidations.on_reset
        keys.invalidations.on_reset = lambda: (forget(), reset.set())
        redis_server.restart()
        await asyncio.wait_for(reset.wait(), 15)
        assert keys.verifier.cached == 0 and keys.invalidations.connected
