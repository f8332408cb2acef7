"""Everything API keys need at run time, built from the settings, with one start and one close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtolocalllm.bridge_api.database import (
    DatabaseSettings,
    DatabaseUnavailable,
    create_engine_for,
    database_url_for,
    is_postgres,
    migrate,
)
from cloudtolocalllm.bridge_api.keys.broadcast import (
    Invalidations,
    PostgresInvalidations,
    RedisInvalidations,
)
from cloudtolocalllm.bridge_api.keys.store import KeyRecord, KeyStore
from cloudtolocalllm.bridge_api.keys.usage import UsageRecorder
from cloudtolocalllm.bridge_api.keys.verifier import KeyVerifier
from cloudtolocalllm.bridge_api.settings import ApiSettings, data_dir_for

__all__ = ["KeyService"]

log = logging.getLogger(__name__)

_MIGRATE_RETRY_S: Final = 2.0


class KeyService:
    def __init__(self, settings: ApiSettings, database: DatabaseSettings) -> None:
        url = database_url_for(database, data_dir_for(settings))
        self.engine: AsyncEngine = create_engine_for(url, timeout_s=settings.database_timeout_s)
        self.store = KeyStore(self.engine, max_keys_per_user=settings.max_keys_per_user)
        self.verifier = KeyVerifier(self.store, ttl_s=settings.key_cache_ttl_s)
        self.usage = UsageRecorder(self.store, flush_interval_s=settings.key_usage_flush_s)
        self.invalidations: Invalidations
        if settings.redis_url:
            self.invalidations = RedisInvalidations(settings.redis_url, timeout_s=settings.redis_timeout_s)
        elif is_postgres(url):
            self.invalidations = PostgresInvalidations(url, timeout_s=settings.database_timeout_s)
        else:
            self.invalidations = Invalidations()
        self.store.on_revoke_in_transaction = self.invalidations.in_transaction
        self.schema_ready = False
        self._migrating: asyncio.Task[None] | None = None
        # Told of every revocation, from this replica or another (api-backend closes bridges on that key).
        self.on_revoked: Callable[[str], None] = lambda key_id: None

    async def start(self) -> None:
        await self.invalidations.start(self._revoked, self.verifier.invalidate_all)
        try:
            await migrate(self.engine)
            self.schema_ready = True
        except Exception as exc:
            log.warning("database unavailable at start; retrying", extra={"error": type(exc).__name__})
            self._migrating = asyncio.create_task(self._migrate_until_done())
        self.usage.start()

    async def _migrate_until_done(self) -> None:
        while not self.schema_ready:
            await asyncio.sleep(_MIGRATE_RETRY_S)
            with contextlib.suppress(Exception):
                await migrate(self.engine)
                self.schema_ready = True
                log.info("database reachable: schema current")

    def _revoked(self, key_id: str) -> None:
        self.verifier.invalidate(key_id)
        self.on_revoked(key_id)

    def _ready(self) -> None:
        if not self.schema_ready:
            raise DatabaseUnavailable("schema not migrated yet")

    async def create(self, user_id: str, name: str, scopes: list[str]) -> tuple[KeyRecord, str]:
        self._ready()
        return await self.store.create(user_id, name, scopes)

    async def list(self, user_id: str) -> list[KeyRecord]:
        self._ready()
        return await self.store.list(user_id)

    async def revoke(self, user_id: str, key_id: str) -> bool:
        self._ready()
        if not await self.store.revoke(user_id, key_id):
            return False
        self._revoked(key_id)  # here at once, whatever the broadcast does
        await self.invalidations.after_commit(key_id)
        return True

    async def database_reachable(self) -> bool:
        """For the readiness report."""
        if not self.schema_ready:
            raise DatabaseUnavailable("unreachable; retrying")
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    async def close(self) -> None:
        if self._migrating is not None:
            self._migrating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._migrating
        await self.usage.close()
        await self.invalidations.close()
        await self.engine.dispose()
