"""Which bridges are connected, per user. In memory: the embedded default for a single replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
from cloudtolocalllm.bridge_api.session import BridgeSession
from cloudtolocalllm.core.protocol import CloseCode, close_reason

__all__ = ["BridgeRegistry"]

log = logging.getLogger(__name__)


class BridgeRegistry:
    def __init__(self, metrics: TunnelMetrics) -> None:
        self._by_user: dict[str, dict[str, BridgeSession]] = {}
        self.metrics = metrics
        self.draining = False

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
        if previous is None:
            self.metrics.bridges_connected.inc()
        else:
            await previous.close(CloseCode.REPLACED, close_reason(CloseCode.REPLACED))
        log.info("bridge connected", extra={"bridge_id": session.bridge_id, "session_id": session.session_id})

    def remove(self, session: BridgeSession) -> None:
        bridges = self._by_user.get(session.user, {})
        if bridges.get(session.bridge_id) is session:
            del bridges[session.bridge_id]
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
        sessions = self.all_sessions()
        await asyncio.gather(*(s.go_away("server shutting down", retry_after_s) for s in sessions))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await asyncio.gather(*(s.wait_idle() for s in sessions))
        reason = close_reason(CloseCode.GOING_AWAY)
        await asyncio.gather(*(s.close(CloseCode.GOING_AWAY, reason) for s in sessions))
