"""The bridge directory: which replica holds which bridge, shared by every api-backend replica.

Live sessions (WebSockets, streams) stay in the process that holds them (see registry.py); the directory
only holds *records* describing them, each with an expiry its replica keeps pushing forward. A replica that
dies stops refreshing, so its records lapse after the TTL; a clean disconnect withdraws a record at once.

Two implementations share one contract (tests/test_directory.py runs it against both): in memory, the
embedded default for a single replica, and Redis (redis_directory.py) for several.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence

import msgspec

from cloudtolocalllm.protocol.models import normalize_model

__all__ = ["BridgeDirectory", "BridgeRecord", "DirectoryUnavailable", "InMemoryDirectory", "RemoteBridge"]


class DirectoryUnavailable(Exception):
    """The shared directory cannot be reached; only this replica's own bridges are known."""


class BridgeRecord(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    bridge_id: str
    session_id: str
    replica: str  # base URL of the replica holding the WebSocket
    name: str
    version: str
    platform: str
    backend_kind: str
    backend_reachable: bool
    models: list[str]
    connected_since: float
    last_heartbeat: float
    in_flight: int
    expires_at: float = 0.0  # wall clock: replicas' clocks are assumed NTP-synced (well within the TTL)


class RemoteBridge:
    """A bridge held by another replica, as routing sees it (the same queries as a BridgeSession)."""

    accepting = True  # a draining replica withdraws its records first

    def __init__(self, record: BridgeRecord) -> None:
        self.record = record
        self.bridge_id = record.bridge_id
        self.in_flight = record.in_flight
        self.backend_reachable = record.backend_reachable
        self._model_set = {normalize_model(m) for m in record.models}

    def has_model(self, model: str) -> bool:
        return normalize_model(model) in self._model_set


class BridgeDirectory(abc.ABC):
    @abc.abstractmethod
    async def publish(self, records: Sequence[BridgeRecord], ttl_s: float) -> list[BridgeRecord]:
        """Create or refresh ``records``; each lapses ``ttl_s`` from now unless published again.

        Returns the records refused because a newer connection of the same bridge is published (by another
        replica): those sessions are stale.
        """

    @abc.abstractmethod
    async def withdraw(self, user: str, bridge_id: str, session_id: str) -> None:
        """Remove the record, unless it now describes a newer session of that bridge (it moved)."""

    @abc.abstractmethod
    async def bridges_for(self, user: str) -> list[BridgeRecord]:
        """The user's unexpired records, on every replica."""

    async def ping(self) -> None:  # noqa: B027 (optional hook: the in-memory directory always answers)
        """Raise DirectoryUnavailable unless the directory answers."""

    async def close(self) -> None:  # noqa: B027
        """Release connections."""


class InMemoryDirectory(BridgeDirectory):
    """One process's directory: the single-replica default, and a shared fake for in-process tests."""

    def __init__(self) -> None:
        self._by_user: dict[str, dict[str, BridgeRecord]] = {}

    async def publish(self, records: Sequence[BridgeRecord], ttl_s: float) -> list[BridgeRecord]:
        now = time.time()
        refused = []
        for record in records:
            bridges = self._by_user.setdefault(record.user, {})
            other = bridges.get(record.bridge_id)
            if (
                other is not None
                and other.session_id != record.session_id
                and other.expires_at > now
                and other.connected_since > record.connected_since
            ):
                refused.append(record)
                continue
            bridges[record.bridge_id] = msgspec.structs.replace(record, expires_at=now + ttl_s)
        return refused

    async def withdraw(self, user: str, bridge_id: str, session_id: str) -> None:
        bridges = self._by_user.get(user, {})
        current = bridges.get(bridge_id)
        if current is not None and current.session_id == session_id:
            del bridges[bridge_id]
            if not bridges:
                del self._by_user[user]

    async def bridges_for(self, user: str) -> list[BridgeRecord]:
        bridges = self._by_user.get(user)
        if not bridges:
            return []
        now = time.time()
        for bridge_id in [b for b, r in bridges.items() if r.expires_at <= now]:
            del bridges[bridge_id]
        return list(bridges.values())
