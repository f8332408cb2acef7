"""Which bridges are connected, per user: this replica's live sessions, and (through the directory) the
records of the bridges other replicas hold."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cloudtolocalllm.bridge_api.directory import (
    BridgeDirectory,
    BridgeRecord,
    DirectoryUnavailable,
    InMemoryDirectory,
    RemoteBridge,
)
from cloudtolocalllm.bridge_api.directory_sync import DirectorySync
from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
from cloudtolocalllm.bridge_api.session import BridgeSession
from cloudtolocalllm.protocol import CloseCode, close_reason

__all__ = ["Bridge", "BridgeRegistry"]

Bridge = BridgeSession | RemoteBridge

log = logging.getLogger(__name__)


class BridgeRegistry:
    def __init__(
        self,
        metrics: TunnelMetrics,
        directory: BridgeDirectory | None = None,
        *,
        ttl_s: float = 10.0,
        refresh_s: float = 3.0,
    ) -> None:
        self._by_user: dict[str, dict[str, BridgeSession]] = {}
        self.metrics = metrics
        self.draining = False
        self.sync = DirectorySync(
            directory or InMemoryDirectory(), self.all_sessions, metrics, ttl_s=ttl_s, refresh_s=refresh_s
        )
        self.sync.on_superseded = self._superseded
        self._closing: set[asyncio.Task[None]] = set()
        self._suspects: dict[str, float] = {}  # replica URL -> until when (monotonic) it is skipped
        self._ttl_s = ttl_s
        self._started = time.monotonic()
        # user -> (set when one of their bridges connects here, how many requests wait for it)
        self._arrivals: dict[str, tuple[asyncio.Event, int]] = {}

    def startup_grace_left(self, grace_s: float) -> float:
        """Seconds left of the window after start-up in which bridges are still reconnecting here."""
        return max(0.0, grace_s - (time.monotonic() - self._started))

    async def wait_for_bridge(self, user: str, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for one of ``user``'s bridges to connect to this replica."""
        if self.bridges_for(user):
            return True
        event, waiters = self._arrivals.get(user) or (asyncio.Event(), 0)
        self._arrivals[user] = (event, waiters + 1)
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            return False
        finally:
            entry = self._arrivals.get(user)
            if entry is not None and entry[0] is event:  # not yet popped by a connecting bridge
                self._arrivals[user] = (event, entry[1] - 1)
                if entry[1] == 1:
                    del self._arrivals[user]  # the last waiter leaves: nothing kept per unknown account
        return True

    @property
    def replica_url(self) -> str:
        return self.sync.replica_url

    @replica_url.setter
    def replica_url(self, url: str) -> None:
        self.sync.replica_url = url

    async def candidates(
        self, user: str, *, local_only: bool = False, reconnect_grace_s: float = 0.0
    ) -> tuple[list[Bridge], bool]:
        """The user's bridges that accept requests, here and on other replicas, and whether that list is
        complete (False: the directory is down and only this replica's bridges are known).

        Within ``reconnect_grace_s`` of start-up the user's bridge is probably reconnecting: when none is
        known, wait (for what is left of that window) for one to connect here rather than answer "none"."""
        found = await self._candidates(user, local_only)
        grace = self.startup_grace_left(reconnect_grace_s)
        if not found[0] and found[1] and grace > 0 and await self.wait_for_bridge(user, grace):
            found = await self._candidates(user, local_only)
        return found

    async def _candidates(self, user: str, local_only: bool) -> tuple[list[Bridge], bool]:
        local: list[Bridge] = [b for b in self.bridges_for(user) if b.accepting]
        if local_only:
            return local, True
        try:
            records = await self.sync.lookup(user)
        except DirectoryUnavailable:
            return local, False
        return local + [RemoteBridge(r) for r in self._remote(user, records)], True

    async def records_for(self, user: str) -> list[BridgeRecord]:
        """Records of the user's bridges held by other replicas; raises DirectoryUnavailable."""
        return self._remote(user, await self.sync.lookup(user))

    async def count_everywhere(self, user: str, *, other_than: str) -> int:
        """The user's bridges on every replica, ``other_than`` not counted (a bridge reconnecting is not an
        extra one). Only this replica's while the directory is down."""
        ids = set(self._by_user.get(user, {}))
        with contextlib.suppress(DirectoryUnavailable):
            ids.update(r.bridge_id for r in await self.records_for(user))
        ids.discard(other_than)
        return len(ids)

    def suspect(self, replica: str) -> None:
        """``replica`` refused a connection: skip its records until they would have lapsed anyway."""
        self._suspects[replica] = time.monotonic() + self._ttl_s

    def _remote(self, user: str, records: list[BridgeRecord]) -> list[BridgeRecord]:
        local = self._by_user.get(user, {})
        if self._suspects:
            now = time.monotonic()
            self._suspects = {replica: until for replica, until in self._suspects.items() if until > now}
        # A record naming a bridge held here is stale (the bridge moved here): the live session wins.
        return [
            r
            for r in records
            if r.replica != self.replica_url and r.bridge_id not in local and r.replica not in self._suspects
        ]

    def bridges_for(self, user: str) -> list[BridgeSession]:
        return list(self._by_user.get(user, {}).values())

    def has_bridge(self, user: str, bridge_id: str) -> bool:
        return bridge_id in self._by_user.get(user, {})

    def count_for(self, user: str) -> int:
        return len(self._by_user.get(user, {}))

    def all_sessions(self) -> list[BridgeSession]:
        return [session for bridges in self._by_user.values() for session in bridges.values()]

    async def add(self, session: BridgeSession) -> None:
        """Register ``session``; an older connection of the same bridge is closed (it is stale)."""
        bridges = self._by_user.setdefault(session.user, {})
        previous = bridges.get(session.bridge_id)
        bridges[session.bridge_id] = session
        session.on_change = self.sync.changed
        self.sync.changed(session)
        arrived = self._arrivals.pop(session.user, None)
        if arrived is not None:
            arrived[0].set()
        if previous is None:
            self.metrics.bridges_connected.inc()
        else:
            previous.on_change = None  # its closing streams must not republish the stale record
            await previous.close(CloseCode.REPLACED, close_reason(CloseCode.REPLACED))
        log.info(
            "bridge connected",
            extra={
                "bridge_id": session.bridge_id,
                "session_id": session.session_id,
                "features": sorted(session.conn.features),  # the protocol features this session uses
            },
        )

    def _superseded(self, record: BridgeRecord) -> None:
        """The bridge reconnected to another replica while this one still held it: this session is stale."""
        session = self._by_user.get(record.user, {}).get(record.bridge_id)
        if session is None or session.session_id != record.session_id:
            return
        session.on_change = None
        task = asyncio.create_task(session.close(CloseCode.REPLACED, close_reason(CloseCode.REPLACED)))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def remove(self, session: BridgeSession) -> None:
        bridges = self._by_user.get(session.user, {})
        if bridges.get(session.bridge_id) is session:
            del bridges[session.bridge_id]
            session.on_change = None
            self.sync.withdraw(session)
            self.metrics.bridges_connected.dec()
            if not bridges:
                del self._by_user[session.user]
        log.info(
            "bridge disconnected",
            extra={
                "bridge_id": session.bridge_id,
                "session_id": session.session_id,
                "code": session.close_code,
            },
        )

    async def drain(self, retry_after_s: float, deadline_s: float) -> None:
        """Shutdown: ask every bridge to reconnect elsewhere, let streams finish, then close the rest."""
        self.draining = True
        await self.sync.stop(withdraw=True)  # peers stop sending us requests for these bridges
        sessions = self.all_sessions()
        await asyncio.gather(*(s.go_away("server shutting down", retry_after_s) for s in sessions))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await asyncio.gather(*(s.wait_idle() for s in sessions))
        reason = close_reason(CloseCode.GOING_AWAY)
        await asyncio.gather(*(s.close(CloseCode.GOING_AWAY, reason) for s in sessions))
