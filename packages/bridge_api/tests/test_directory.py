"""The bridge directory's contract, run against both implementations (Redis: a real redis-server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest
import redis.asyncio as redis

from cloudtolocalllm.bridge_api.directory import (
    BridgeDirectory,
    BridgeRecord,
    DirectoryUnavailable,
    InMemoryDirectory,
)
from cloudtolocalllm.bridge_api.redis_directory import KEY_PREFIX, RedisDirectory

from .redis_server import RedisServer


def record(bridge_id: str = "b1", *, user: str = "alice", session: str = "s1", since: float = 100.0) -> BridgeRecord:
    return BridgeRecord(
        user=user,
        bridge_id=bridge_id,
        session_id=session,
        replica="http://10.0.0.1:8080",
        name="laptop",
        version="1.0",
        platform="linux",
        backend_kind="ollama",
        backend_reachable=True,
        models=["smollm2:135m"],
        connected_since=since,
        last_heartbeat=since,
        in_flight=2,
    )


@pytest.fixture(params=["memory", "redis"])
async def directory(request: pytest.FixtureRequest) -> AsyncIterator[BridgeDirectory]:
    if request.param == "memory":
        yield InMemoryDirectory()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_directory = RedisDirectory(server.url, timeout_s=1.0)
    yield redis_directory
    await redis_directory.close()


# Long enough that the checks made right after a publication finish before it lapses, on a loaded machine;
# lapsing itself is waited for (until), never assumed after a fixed sleep.
SHORT_TTL_S = 2.0


async def until(read: Callable[[], Awaitable[object]], expected: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (got := await read()) != expected:
        assert time.monotonic() < deadline, f"still {got!r} after {timeout} s, expected {expected!r}"
        await asyncio.sleep(0.05)


async def _ids(directory: BridgeDirectory, user: str) -> list[str]:
    return [r.bridge_id for r in await directory.bridges_for(user)]


def without_expiry(records: list[BridgeRecord]) -> list[BridgeRecord]:
    return [msgspec.structs.replace(r, expires_at=0.0) for r in records]


async def test_a_published_record_is_found_by_its_user_only(directory: BridgeDirectory) -> None:
    assert await directory.publish([record(), record("b2", user="bob")], ttl_s=30) == []
    [found] = await directory.bridges_for("alice")
    assert without_expiry([found]) == [record()]
    assert time.time() + 20 < found.expires_at <= time.time() + 30
    assert [r.bridge_id for r in await directory.bridges_for("bob")] == ["b2"]
    assert await directory.bridges_for("mallory") == []


async def test_a_record_that_is_not_refreshed_lapses(directory: BridgeDirectory) -> None:
    await directory.publish([record("short")], ttl_s=SHORT_TTL_S)
    await directory.publish([record("long")], ttl_s=30)
    assert {r.bridge_id for r in await directory.bridges_for("alice")} == {"short", "long"}
    await until(lambda: _ids(directory, "alice"), ["long"])


async def test_refreshing_keeps_a_record_alive_and_updates_it(directory: BridgeDirectory) -> None:
    first_expiry = time.time() + SHORT_TTL_S
    await directory.publish([record()], ttl_s=SHORT_TTL_S)
    await directory.publish([msgspec.structs.replace(record(), in_flight=7)], ttl_s=30)
    await asyncio.sleep(max(0.0, first_expiry - time.time()) + 0.2)  # past the first publication's expiry
    [found] = await directory.bridges_for("alice")
    assert found.in_flight == 7


async def test_withdraw_removes_only_the_same_session(directory: BridgeDirectory) -> None:
    await directory.publish([record(session="old")], ttl_s=30)
    await directory.withdraw("alice", "b1", "other-session")
    assert len(await directory.bridges_for("alice")) == 1, "a newer session's record must survive"
    await directory.withdraw("alice", "b1", "old")
    assert await directory.bridges_for("alice") == []
    await directory.withdraw("alice", "b1", "old")  # idempotent


async def test_an_older_connection_cannot_overwrite_a_newer_one(directory: BridgeDirectory) -> None:
    await directory.publish([record(session="new", since=200.0)], ttl_s=30)
    stale = record(session="old", since=100.0)
    assert await directory.publish([stale], ttl_s=30) == [stale]
    [found] = await directory.bridges_for("alice")
    assert found.session_id == "new"
    # The newer connection refreshes its own record freely.
    assert await directory.publish([record(session="new", since=200.0)], ttl_s=30) == []


async def test_a_lapsed_newer_record_does_not_block_an_older_live_one(directory: BridgeDirectory) -> None:
    await directory.publish([record(session="new", since=200.0)], ttl_s=0.2)
    await asyncio.sleep(0.3)
    assert await directory.publish([record(session="old", since=100.0)], ttl_s=30) == []
    [found] = await directory.bridges_for("alice")
    assert found.session_id == "old"


async def test_redis_deletes_lapsed_fields_and_lets_an_idle_users_key_expire(redis_server: RedisServer) -> None:
    directory = RedisDirectory(redis_server.url, timeout_s=1.0)
    raw = redis.Redis.from_url(redis_server.url)
    try:
        await directory.publish([record("gone")], ttl_s=0.2)
        await directory.publish([record("kept")], ttl_s=SHORT_TTL_S)
        assert 0 < await raw.pttl(KEY_PREFIX + "alice") <= SHORT_TTL_S * 1000
        await asyncio.sleep(0.3)  # "gone" has lapsed; "kept" lives on for seconds
        await directory.bridges_for("alice")
        assert await raw.hkeys(KEY_PREFIX + "alice") == [b"kept"]
        await until(lambda: raw.exists(KEY_PREFIX + "alice"), 0)  # Redis's own expiry of the whole key
    finally:
        await raw.aclose()
        await directory.close()


async def test_redis_down_fails_fast_and_the_same_client_recovers(redis_server: RedisServer) -> None:
    directory = RedisDirectory(redis_server.url, timeout_s=1.0)
    try:
        await directory.publish([record()], ttl_s=30)
        redis_server.stop()
        for operation in (directory.ping(), directory.bridges_for("alice"), directory.publish([record()], ttl_s=30)):
            started = time.monotonic()
            with pytest.raises(DirectoryUnavailable, match="redis"):
                await operation
            assert time.monotonic() - started < 5
        redis_server.start()
        await directory.ping()
        assert await directory.bridges_for("alice") == []  # a restarted Redis without persistence is empty
        await directory.publish([record()], ttl_s=30)
        assert len(await directory.bridges_for("alice")) == 1
    finally:
        await directory.close()


async def test_redis_errors_never_carry_the_password(redis_server: RedisServer) -> None:
    url = redis_server.url.replace("redis://", "redis://:hunter2-secret@")
    redis_server.stop()
    directory = RedisDirectory(url, timeout_s=1.0)
    try:
        with pytest.raises(DirectoryUnavailable) as caught:
            await directory.bridges_for("alice")
        assert "hunter2" not in str(caught.value)
        assert str(redis_server.port) in str(caught.value)  # but where it tried, for the operator
    finally:
        await directory.close()
