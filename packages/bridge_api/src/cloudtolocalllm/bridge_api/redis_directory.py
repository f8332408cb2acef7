"""The bridge directory in Redis, for several api-backend replicas.

One hash per user (``ctllm:bridges:<user>``), one field per bridge id, the value a JSON record carrying its
own expiry. Redis 7.0 has no per-field TTL, so readers skip (and delete) lapsed fields, and the key itself
expires a TTL after the last refresh of any of its fields, so an idle user leaves nothing behind.
A lookup is one HGETALL; a refresh of all of a replica's bridges is one pipelined round trip.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Final

import msgspec
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cloudtolocalllm.bridge_api.directory import BridgeDirectory, BridgeRecord, DirectoryUnavailable

__all__ = ["RedisDirectory"]

KEY_PREFIX: Final = "ctllm:bridges:"

# Delete the field only if it still describes the withdrawing session: the bridge may already have
# reconnected to another replica, which published its new record under the same field.
_WITHDRAW: Final = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value and cjson.decode(value)['session_id'] == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Write unless a newer connection of the same bridge (on another replica) holds the field: then this
# replica's session is the stale one, and the caller closes it, as a single replica does with a reconnect.
_PUBLISH: Final = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local other = cjson.decode(current)
  if other['session_id'] ~= ARGV[2] and other['expires_at'] > tonumber(ARGV[5])
     and other['connected_since'] > tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(BridgeRecord).decode


def _key(user: str) -> str:
    return KEY_PREFIX + user


class RedisDirectory(BridgeDirectory):
    def __init__(self, url: str, *, timeout_s: float) -> None:
        # One immediate retry: a pooled connection that died with a Redis restart fails once, harmlessly.
        # Nothing longer: while Redis is down, callers must learn it fast and fall back to local bridges.
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        self._withdraw = self._redis.register_script(_WITHDRAW)
        self._publish = self._redis.register_script(_PUBLISH)

    async def publish(self, records: Sequence[BridgeRecord], ttl_s: float) -> list[BridgeRecord]:
        if not records:
            return []
        now = time.time()
        ttl_ms = max(1, round(ttl_s * 1000))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for record in records:
                    value = _encode(msgspec.structs.replace(record, expires_at=now + ttl_s))
                    args: list[str | float | bytes] = [
                        record.bridge_id,
                        record.session_id,
                        record.connected_since,
                        value,
                        now,
                        ttl_ms,
                    ]
                    await self._publish(keys=[_key(record.user)], args=args, client=pipe)
                written = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise DirectoryUnavailable(_describe(exc)) from None
        return [record for record, ok in zip(records, written, strict=True) if not ok]

    async def withdraw(self, user: str, bridge_id: str, session_id: str) -> None:
        try:
            await self._withdraw(keys=[_key(user)], args=[bridge_id, session_id])
        except (RedisError, OSError) as exc:
            raise DirectoryUnavailable(_describe(exc)) from None

    async def bridges_for(self, user: str) -> list[BridgeRecord]:
        try:
            fields = await self._redis.hgetall(_key(user))
        except (RedisError, OSError) as exc:
            raise DirectoryUnavailable(_describe(exc)) from None
        now = time.time()
        live: list[BridgeRecord] = []
        lapsed: list[bytes | str] = []
        for field, value in fields.items():
            try:
                record = _decode(value)
            except msgspec.ValidationError:
                lapsed.append(field)  # written by an incompatible version: unusable, drop it
                continue
            if record.expires_at > now:
                live.append(record)
            else:
                lapsed.append(field)
        if lapsed:
            # If this fails, the next reader tries again; the answer below is right either way.
            with contextlib.suppress(RedisError, OSError):
                await self._redis.hdel(_key(user), *lapsed)
        return live

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise DirectoryUnavailable(_describe(exc)) from None

    async def close(self) -> None:
        await self._redis.aclose()


def _describe(exc: BaseException) -> str:
    # The exception's text names the host and port at most; the URL (and any password in it) never.
    return f"redis: {type(exc).__name__}: {exc}"[:200]
