"""Two api-backend replicas sharing a real Redis, in one process: a request on one replica reaches a bridge
held by the other, streamed, cancelable, merged and isolated per user; Redis loss and recovery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from cloudtolocalllm.bridge_api.redis_directory import RedisDirectory
from cloudtolocalllm.core.testing import wait_until
from cloudtolocalllm.devkit.peers import FakeBridge, Reply, chunks_of
from cloudtolocalllm.protocol import CloseCode, Open

from .conftest import Cloud, CloudFactory
from .redis_server import RedisServer
from .test_relay import ndjson_reply

FAST = {"directory_ttl_s": 2.0, "directory_refresh_s": 0.5}


@pytest.fixture
async def pair(make_cloud: CloudFactory, redis_server: RedisServer) -> AsyncIterator[tuple[Cloud, Cloud]]:
    async with AsyncExitStack() as stack:
        clouds = [
            await stack.enter_async_context(
                make_cloud(directory=RedisDirectory(redis_server.url, timeout_s=1.0), **FAST)
            )
            for _ in range(2)
        ]
        yield clouds[0], clouds[1]


async def wait_listed(cloud: Cloud, user: str, count: int) -> None:
    async def listed() -> bool:
        async with cloud.client(user) as client:
            response = await client.get("/api/bridge/status")
        return response.status_code == 200 and len(response.json()["bridges"]) == count

    for _ in range(100):
        if await listed():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{user} never had {count} bridges listed on {cloud.url}")


async def test_a_request_on_one_replica_streams_from_a_bridge_on_the_other(pair: tuple[Cloud, Cloud]) -> None:
    a, b = pair
    release = asyncio.Event()
    async with FakeBridge(b.url, b.token(), handler=ndjson_reply(release)) as bridge:  # type: ignore[arg-type]
        await wait_listed(a, "alice", 1)
        async with (
            a.client() as client,
            client.stream("POST", "/api/ollama/api/chat", json={"model": "smollm2:135m"}) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/x-ndjson"
            lines = response.aiter_lines()
            first = await asyncio.wait_for(anext(lines), 10)  # before the bridge sends the rest
            assert first == '{"message":{"content":"Hel"},"done":false}'
            release.set()
            rest = [line async for line in lines]
    assert rest == ['{"message":{"content":"lo"},"done":false}', '{"done":true}']
    assert len(bridge.opens) == 1
    names = {name for name, _ in bridge.opens[0].headers}
    assert "authorization" not in names and "x-cloudtolocalllm-forwarded" not in names
    assert 'replica_forwarded_requests_total{outcome="ok"} 1.0' in (await _metrics(a))


async def test_cancel_on_the_first_replica_reaches_the_bridge_on_the_other(pair: tuple[Cloud, Cloud]) -> None:
    a, b = pair
    never = asyncio.Event()
    async with FakeBridge(b.url, b.token(), handler=ndjson_reply(never)) as bridge:  # type: ignore[arg-type]
        await wait_listed(a, "alice", 1)
        async with (
            a.client() as client,
            client.stream("POST", "/api/ollama/api/chat", json={"model": "smollm2:135m"}) as response,
        ):
            await asyncio.wait_for(anext(response.aiter_lines()), 10)
        await wait_until(lambda: bool(bridge.cancelled), timeout=10)
        await wait_until(lambda: b.app.state.registry.all_sessions()[0].in_flight == 0, timeout=10)


async def test_status_and_tags_span_replicas_and_stay_per_user(pair: tuple[Cloud, Cloud]) -> None:
    a, b = pair

    async def tags(name: str) -> object:
        async def handler(open_frame: Open, body: bytes) -> Reply:
            return Reply(chunks=chunks_of(json.dumps({"models": [{"name": name}]}).encode()))

        return handler

    async with (
        FakeBridge(a.url, a.token(), bridge_id="here", handler=await tags("one:latest")),  # type: ignore[arg-type]
        FakeBridge(b.url, b.token(), bridge_id="there", handler=await tags("two:latest")),  # type: ignore[arg-type]
        FakeBridge(b.url, b.token("bob"), bridge_id="bobs", handler=await tags("bob:latest")),  # type: ignore[arg-type]
    ):
        await wait_listed(a, "alice", 2)
        async with a.client() as client:
            listed = (await client.get("/api/bridge/status")).json()["bridges"]
            merged = (await client.get("/api/ollama/api/tags")).json()
        assert sorted(b["id"] for b in listed) == ["here", "there"]
        assert sorted(m["name"] for m in merged["models"]) == ["one:latest", "two:latest"]
        async with a.client("bob") as client:
            assert [b["id"] for b in (await client.get("/api/bridge/status")).json()["bridges"]] == ["bobs"]
            # Bob cannot reach Alice's bridge by pinning its id: it is not among his bridges.
            pinned = await client.get("/api/ollama/api/version", headers={"X-CloudToLocalLLM-Bridge": "there"})
        assert pinned.status_code == 404


async def test_redis_down_local_bridges_still_work_remote_ones_get_a_clear_503_then_recover(
    pair: tuple[Cloud, Cloud], redis_server: RedisServer
) -> None:
    a, b = pair
    async with FakeBridge(a.url, a.token("local")), FakeBridge(b.url, b.token("remote")):
        await wait_listed(a, "remote", 1)
        redis_server.stop()
        await wait_until(lambda: not a.app.state.registry.sync.available, timeout=10)
        async with a.client("local") as client:
            assert (await client.get("/api/ollama/api/version")).status_code == 200
        async with a.client("remote") as client:
            response = await client.get("/api/ollama/api/version")
            ready = await client.get("/ready")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert "bridge directory is unavailable" in response.json()["error"]
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["bridge-directory"]["ok"] is False
        redis_server.start()  # empty: the replicas re-publish their bridges by themselves
        await wait_listed(a, "remote", 1)
        async with a.client("remote") as client:
            assert (await client.get("/api/ollama/api/version")).status_code == 200
            assert (await client.get("/ready")).json()["status"] == "ok"


async def test_a_bridge_that_moves_replaces_its_stale_session_on_the_other_replica(
    pair: tuple[Cloud, Cloud],
) -> None:
    a, b = pair
    async with FakeBridge(a.url, a.token(), bridge_id="mover") as first:
        await wait_listed(b, "alice", 1)
        async with FakeBridge(b.url, b.token(), bridge_id="mover"):
            # The newer connection wins everywhere; the old replica closes its stale session.
            await wait_until(lambda: not a.app.state.registry.all_sessions(), timeout=10)
            await wait_until(lambda: first.close_code is not None, timeout=10)
            assert first.close_code == CloseCode.REPLACED
            await wait_listed(a, "alice", 1)


async def _metrics(cloud: Cloud) -> str:
    async with cloud.client() as client:
        return (await client.get("/metrics")).text


async def test_a_forwarded_request_is_never_relayed_again(pair: tuple[Cloud, Cloud]) -> None:
    a, b = pair
    async with FakeBridge(b.url, b.token()) as bridge:
        await wait_listed(a, "alice", 1)
        async with a.client() as client:
            response = await client.get("/api/ollama/api/version", headers={"X-CloudToLocalLLM-Forwarded": "1"})
        assert response.status_code == 503  # served with A's own bridges only: it has none
        assert bridge.opens == []


async def test_a_draining_replica_withdraws_its_bridges_at_once(pair: tuple[Cloud, Cloud]) -> None:
    a, b = pair
    async with FakeBridge(b.url, b.token()):
        await wait_listed(a, "alice", 1)
        await b.app.state.registry.drain(retry_after_s=1.0, deadline_s=1.0)
        async with a.client() as client:  # well before the records' TTL (2 s) could lapse
            assert (await client.get("/api/bridge/status")).json()["bridges"] == []


async def test_the_bridge_limit_counts_every_replica(make_cloud: CloudFactory, redis_server: RedisServer) -> None:
    limits = {**FAST, "max_bridges_per_user": 1}
    async with (
        make_cloud(directory=RedisDirectory(redis_server.url, timeout_s=1.0), **limits) as a,
        make_cloud(directory=RedisDirectory(redis_server.url, timeout_s=1.0), **limits) as b,
        FakeBridge(a.url, a.token(), bridge_id="one"),
    ):
        await wait_listed(b, "alice", 1)
        second = FakeBridge(b.url, b.token(), bridge_id="two")
        await second.connect()
        await asyncio.wait_for(second.closed.wait(), 5)
        assert second.close_code == 1008
        assert "too many bridges for this account (limit 1)" in second.close_reason
        # The same bridge reconnecting elsewhere is not an extra one.
        async with FakeBridge(b.url, b.token(), bridge_id="one") as moved:
            assert moved.welcome is not None


async def test_a_model_only_another_replica_has_is_routed_there(pair: tuple[Cloud, Cloud]) -> None:
    a, b = pair
    async with (
        FakeBridge(a.url, a.token(), bridge_id="small", models=["smollm2:135m"]) as here,
        FakeBridge(b.url, b.token(), bridge_id="big", models=["llama3.2:1b"]) as there,
    ):
        await wait_listed(a, "alice", 2)
        async with a.client() as client:
            big = await client.post("/api/ollama/api/chat", json={"model": "llama3.2:1b"})
            small = await client.post("/api/ollama/api/chat", json={"model": "smollm2:135m"})
            missing = await client.post("/api/ollama/api/chat", json={"model": "mistral"})
        assert big.status_code == small.status_code == 200
        assert (len(here.opens), len(there.opens)) == (1, 1)
        assert missing.status_code == 404 and "mistral" in missing.json()["error"]
