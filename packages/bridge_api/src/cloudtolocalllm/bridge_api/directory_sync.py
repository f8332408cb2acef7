"""Keep this replica's records in the bridge directory current, and know whether the directory answers.

One task is the only writer for this replica, so a withdrawal can never be overtaken by a refresh of the
same bridge that started earlier. Changes (streams opened or closed, a new model list) are published at
most every ``_FLUSH_INTERVAL_S``; everything is re-published every refresh interval, which is also how a
restarted, empty Redis is repopulated. While the directory is down, lookups fail at once (no timeout per
request: callers fall back to this replica's own bridges) and the task retries every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from cloudtolocalllm.bridge_api.directory import BridgeDirectory, BridgeRecord, DirectoryUnavailable
from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
from cloudtolocalllm.bridge_api.session import BridgeSession

__all__ = ["DirectorySync"]

log = logging.getLogger(__name__)

_FLUSH_INTERVAL_S: Final = 0.05
_RETRY_INTERVAL_S: Final = 1.0


def record_of(session: BridgeSession, replica: str) -> BridgeRecord:
    return BridgeRecord(
        user=session.user,
        bridge_id=session.bridge_id,
        session_id=session.session_id,
        replica=replica,
        name=session.name,
        version=session.software_version,
        platform=session.platform,
        backend_kind=str(session.backend_kind),
        backend_reachable=session.backend_reachable,
        models=session.models,
        connected_since=session.connected_at,
        last_heartbeat=session.last_heartbeat,
        in_flight=session.in_flight,
    )


class DirectorySync:
    def __init__(
        self,
        directory: BridgeDirectory,
        sessions: Callable[[], list[BridgeSession]],
        metrics: TunnelMetrics,
        *,
        ttl_s: float,
        refresh_s: float,
    ) -> None:
        self.directory = directory
        self.replica_url = ""  # set before serving (cli.py), once the bound port is known
        self.available = True
        self._sessions = sessions
        # Told about this replica's sessions that a newer connection of the same bridge elsewhere replaced.
        self.on_superseded: Callable[[BridgeRecord], None] | None = None
        self._metrics = metrics
        self._ttl_s = ttl_s
        self._refresh_s = refresh_s
        self._dirty: dict[tuple[str, str], BridgeSession] = {}
        self._withdrawals: list[tuple[str, str, str]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        metrics.directory_up.set(1)

    # --- called by the registry and the request path --------------------------------------------------

    def changed(self, session: BridgeSession) -> None:
        self._dirty[(session.user, session.bridge_id)] = session
        self._wake.set()

    def withdraw(self, session: BridgeSession) -> None:
        if self._dirty.get((session.user, session.bridge_id)) is session:
            del self._dirty[(session.user, session.bridge_id)]
        self._withdrawals.append((session.user, session.bridge_id, session.session_id))
        self._wake.set()

    async def lookup(self, user: str) -> list[BridgeRecord]:
        """Every replica's unexpired records for ``user``; raises DirectoryUnavailable without waiting."""
        if not self.available:
            raise DirectoryUnavailable("the bridge directory is unavailable")
        try:
            return await self.directory.bridges_for(user)
        except DirectoryUnavailable as exc:
            self._lost("lookup", exc)
            raise

    # --- life -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self, *, withdraw: bool) -> None:
        """Stop publishing; with ``withdraw``, first remove every record of this replica (shutdown)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if withdraw and self.available:
            withdrawals = self._withdrawals + [(s.user, s.bridge_id, s.session_id) for s in self._sessions()]
            self._withdrawals = []
            with contextlib.suppress(DirectoryUnavailable):
                await asyncio.gather(*(self.directory.withdraw(*w) for w in withdrawals))

    async def close(self) -> None:
        await self.stop(withdraw=False)
        await self.directory.close()

    async def _run(self) -> None:
        while not self._stopped:
            try:
                await self._loop()
            except Exception:  # a bug here must not stop the publishing for good
                log.exception("bridge directory sync failed; restarting it")
                await asyncio.sleep(_RETRY_INTERVAL_S)

    async def _loop(self) -> None:
        next_refresh = 0.0
        while not self._stopped:
            now = time.monotonic()
            if not self.available or now >= next_refresh:
                if await self._refresh_all():
                    next_refresh = time.monotonic() + self._refresh_s
                    self._recovered()
                else:
                    next_refresh = time.monotonic() + _RETRY_INTERVAL_S
            elif self._withdrawals or self._dirty:
                await self._flush()
                await asyncio.sleep(_FLUSH_INTERVAL_S)  # later changes coalesce into the next flush
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_refresh - time.monotonic())):
                    await self._wake.wait()

    async def _refresh_all(self) -> bool:
        self._dirty.clear()
        try:
            await self.directory.ping()
            await self._withdraw_pending()
            records = [record_of(s, self.replica_url) for s in self._sessions() if s.accepting]
            self._superseded(await self.directory.publish(records, self._ttl_s))
        except DirectoryUnavailable as exc:
            self._lost("refresh", exc)
            return False
        return True

    async def _flush(self) -> None:
        dirty = [s for s in self._dirty.values() if s.accepting]
        self._dirty.clear()
        try:
            await self._withdraw_pending()
            records = [record_of(s, self.replica_url) for s in dirty]
            self._superseded(await self.directory.publish(records, self._ttl_s))
        except DirectoryUnavailable as exc:
            self._lost("publish", exc)

    def _superseded(self, refused: list[BridgeRecord]) -> None:
        if self.on_superseded is not None:
            for record in refused:
                self.on_superseded(record)

    async def _withdraw_pending(self) -> None:
        # A withdrawal that fails is not retried: the record lapses after the TTL, since nobody refreshes it.
        withdrawals, self._withdrawals = self._withdrawals, []
        for withdrawal in withdrawals:
            await self.directory.withdraw(*withdrawal)

    def _lost(self, operation: str, exc: DirectoryUnavailable) -> None:
        self._metrics.directory_errors.labels(operation).inc()
        if self.available:
            self.available = False
            self._metrics.directory_up.set(0)
            log.warning("bridge directory unavailable", extra={"operation": operation, "error": str(exc)})
            self._wake.set()

    def _recovered(self) -> None:
        if not self.available:
            self.available = True
            self._metrics.directory_up.set(1)
            log.info("bridge directory available again", extra={"bridges": len(self._sessions())})
