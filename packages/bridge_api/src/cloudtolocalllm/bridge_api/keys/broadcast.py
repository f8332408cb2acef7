"""Tell every replica that a key was revoked, within milliseconds.

- PostgreSQL (no Redis configured): ``NOTIFY`` in the revoking transaction, so the message goes out if
  and only if the revocation commits; each replica holds one ``LISTEN`` connection.
- Redis (API_REDIS_URL set, the replicas already share it for the bridge directory): ``PUBLISH`` after
  the commit; each replica subscribes.
- SQLite (one replica): in-process only.
Whenever a listener (re)connects, the replica drops its whole key cache: it may have missed a message
while disconnected. The cache TTL bounds the staleness of anything else (a lost PUBLISH).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["CHANNEL", "Invalidations", "LocalInvalidations", "PostgresInvalidations", "RedisInvalidations"]

log = logging.getLogger(__name__)

CHANNEL: Final = "ctllm_api_key_revoked"
_RETRY_S: Final = 1.0

OnRevoked = Callable[[str], None]
OnReset = Callable[[], None]


class Invalidations:
    """In-process delivery; the base of the shared ones."""

    name = "local"

    def __init__(self) -> None:
        self.on_revoked: OnRevoked = lambda key_id: None
        self.on_reset: OnReset = lambda: None
        self.connected = True

    async def start(self, on_revoked: OnRevoked, on_reset: OnReset) -> None:
        self.on_revoked, self.on_reset = on_revoked, on_reset

    async def in_transaction(self, conn: AsyncConnection, key_id: str) -> None:
        """Called inside the revoking transaction."""

    async def after_commit(self, key_id: str) -> None:
        """Called once the revocation committed (this replica has already applied it)."""

    async def close(self) -> None:
        pass


LocalInvalidations = Invalidations


class _Listening(Invalidations):
    def __init__(self) -> None:
        super().__init__()
        self.connected = False
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self, on_revoked: OnRevoked, on_reset: OnReset, *, wait_s: float = 2.0) -> None:
        await super().start(on_revoked, on_reset)
        self._task = asyncio.create_task(self._run())
        with contextlib.suppress(TimeoutError):  # not reachable yet: the loop keeps trying
            async with asyncio.timeout(wait_s):
                await self._subscribed.wait()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
                    log.warning("key revocation listener lost; reconnecting", extra={"error": type(exc).__name__})
            self.connected = False
            await asyncio.sleep(_RETRY_S)

    def _listening(self) -> None:
        self.on_reset()  # whatever was revoked while we were not listening is forgotten with the cache
        self.connected = True
        self._subscribed.set()

    async def _listen(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class PostgresInvalidations(_Listening):
    name = "postgresql"

    def __init__(self, url: URL, *, timeout_s: float) -> None:
        super().__init__()
        self.dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.timeout_s = timeout_s

    async def in_transaction(self, conn: AsyncConnection, key_id: str) -> None:
        await conn.execute(text("SELECT pg_notify(:channel, :key_id)"), {"channel": CHANNEL, "key_id": key_id})

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=self.timeout_s)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, lambda _c, _pid, _channel, payload: self.on_revoked(payload))
            self._listening()
            while not lost.is_set():
                # A silent network failure never terminates the connection: probe it now and then.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await lost.wait()
                if not lost.is_set():
                    await conn.execute("SELECT 1", timeout=self.timeout_s)
            raise ConnectionError("LISTEN connection closed")
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=self.timeout_s)


class RedisInvalidations(_Listening):
    name = "redis"

    def __init__(self, url: str, *, timeout_s: float) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    async def after_commit(self, key_id: str) -> None:
        try:
            await self.client.publish(CHANNEL, key_id)
        except (RedisError, OSError):
            log.warning("key revocation not broadcast (Redis unavailable): other replicas drop it within the TTL")

    async def _listen(self) -> None:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            self._listening()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if message is None:
                    await pubsub.ping()  # a dead connection shows here
                    continue
                data = message.get("data")
                if message.get("type") == "message" and isinstance(data, bytes):  # not our ping's pong
                    self.on_revoked(data.decode("ascii", "replace"))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await super().close()
        with contextlib.suppress(Exception):
            await self.client.aclose()
