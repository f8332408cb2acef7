"""Per-key use counts and last-used times, counted in memory and written in batches (never per request).

Only the key id, a count and a time are kept: nothing about the request. When the database is down the
counts stay here and are added on the next successful write, so an outage loses none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from cloudtolocalllm.bridge_api.database import DatabaseUnavailable
from cloudtolocalllm.bridge_api.keys.store import KeyStore

__all__ = ["UsageRecorder"]

log = logging.getLogger(__name__)


class UsageRecorder:
    def __init__(self, store: KeyStore, *, flush_interval_s: float) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self._pending: dict[str, tuple[int, datetime]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Uses counted but not yet written."""
        return sum(n for n, _ in self._pending.values())

    def record(self, key_id: str) -> None:
        count, _ = self._pending.get(key_id, (0, None))
        self._pending[key_id] = (count + 1, datetime.now(UTC))

    async def flush(self) -> bool:
        """Write what is pending; False (and everything kept) when the database is unavailable."""
        batch, self._pending = self._pending, {}
        try:
            await self.store.add_usage(batch)
        except DatabaseUnavailable:
            for key_id, (n, at) in batch.items():  # merge back with uses counted meanwhile
                count, latest = self._pending.get(key_id, (0, at))
                self._pending[key_id] = (count + n, max(latest, at))
            return False
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            if not await self.flush():
                log.warning("key usage not written: database unavailable; kept for the next try")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending and not await self.flush():
            log.warning("key usage lost at shutdown: database unavailable", extra={"uses": self.pending})
