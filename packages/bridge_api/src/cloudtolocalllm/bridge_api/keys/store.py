"""API keys in the database: create, list, revoke, look up by digest, and add up use counts.

Every database error becomes :class:`DatabaseUnavailable`, which callers turn into a 503.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from sqlalchemy import BigInteger, DateTime, bindparam, case, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloudtolocalllm.bridge_api.database import DatabaseUnavailable, api_keys
from cloudtolocalllm.bridge_api.keys.format import display_prefix, generate_key, key_digest

__all__ = ["KeyRecord", "KeyStore", "StoredKey", "TooManyKeys"]

T = TypeVar("T")


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A key as its owner sees it (never the secret, never its hash)."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    use_count: int


class StoredKey(msgspec.Struct, frozen=True):
    """What verification needs from a live key."""

    id: str
    user_id: str
    scopes: frozenset[str]


class TooManyKeys(Exception):
    pass


def _record(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=row.scopes.split(),
        created_at=_aware(row.created_at),
        last_used_at=_aware(row.last_used_at) if row.last_used_at is not None else None,
        use_count=row.use_count,
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)  # SQLite drops the zone


_LISTED = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.scopes,
    api_keys.c.created_at,
    api_keys.c.last_used_at,
    api_keys.c.use_count,
)


class KeyStore:
    def __init__(self, engine: AsyncEngine, *, max_keys_per_user: int) -> None:
        self.engine = engine
        self.max_keys_per_user = max_keys_per_user
        # Called inside the revoking transaction (PostgreSQL's NOTIFY is delivered only if it commits).
        self.on_revoke_in_transaction: Callable[[AsyncConnection, str], Awaitable[None]] | None = None

    async def _guard(self, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise DatabaseUnavailable(type(exc).__name__) from None

    async def create(self, user_id: str, name: str, scopes: Sequence[str]) -> tuple[KeyRecord, str]:
        """The new key's record and the key itself (returned once, never stored)."""
        key = generate_key()
        now = datetime.now(UTC)
        key_id = uuid.uuid4().hex
        scope_list = sorted(set(scopes))
        values = {
            "id": key_id,
            "user_id": user_id,
            "name": name,
            "prefix": display_prefix(key),
            "key_hash": key_digest(key),
            "scopes": " ".join(scope_list),
            "created_at": now,
            "last_used_at": None,
            "use_count": 0,
        }

        async def work() -> None:
            async with self.engine.begin() as conn:
                live = await conn.scalar(
                    select(func.count())
                    .select_from(api_keys)
                    .where(api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
                )
                if (live or 0) >= self.max_keys_per_user:
                    raise TooManyKeys(f"at most {self.max_keys_per_user} keys per account: revoke one first")
                await conn.execute(insert(api_keys).values(**values))

        await self._guard(work)
        record = KeyRecord(
            id=key_id,
            name=name,
            prefix=display_prefix(key),
            scopes=scope_list,
            created_at=now,
            last_used_at=None,
            use_count=0,
        )
        return record, key

    async def list(self, user_id: str) -> list[KeyRecord]:
        async def work() -> list[KeyRecord]:
            async with self.engine.connect() as conn:
                rows = await conn.execute(
                    select(*_LISTED)
                    .where(api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
                    .order_by(api_keys.c.created_at, api_keys.c.id)
                )
                return [_record(row) for row in rows]

        return await self._guard(work)

    async def revoke(self, user_id: str, key_id: str) -> bool:
        """False when ``key_id`` is not a live key of ``user_id``."""

        async def work() -> bool:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.id == key_id, api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
                    .values(revoked_at=datetime.now(UTC))
                )
                if result.rowcount != 1:
                    return False
                if self.on_revoke_in_transaction is not None:
                    await self.on_revoke_in_transaction(conn, key_id)
                return True

        return await self._guard(work)

    async def lookup(self, digest: bytes) -> StoredKey | None:
        async def work() -> StoredKey | None:
            async with self.engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(api_keys.c.id, api_keys.c.user_id, api_keys.c.scopes).where(
                            api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                        )
                    )
                ).first()
            return StoredKey(row.id, row.user_id, frozenset(row.scopes.split())) if row is not None else None

        return await self._guard(work)

    async def add_usage(self, usage: Mapping[str, tuple[int, datetime]]) -> None:
        """Add use counts and move last-used times forward, for many keys in one transaction."""
        if not usage:
            return
        rows = [{"key_id": key_id, "n": n, "at": at} for key_id, (n, at) in usage.items()]
        at = bindparam("at", type_=DateTime(timezone=True))
        statement = (
            update(api_keys)
            .where(api_keys.c.id == bindparam("key_id"))
            .values(
                use_count=api_keys.c.use_count + bindparam("n", type_=BigInteger),
                last_used_at=case(
                    (
                        or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < at),
                        at,
                    ),
                    else_=api_keys.c.last_used_at,
                ),
            )
        )

        async def work() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(statement, rows)

        await self._guard(work)
