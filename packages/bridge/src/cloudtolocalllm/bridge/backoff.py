"""Reconnect delays: exponential backoff with full jitter, reset only after a stable connection.

Full jitter (``random(0, min(cap, base * 2**attempt))``) spreads thousands of bridges that lost the cloud
at the same moment (a deploy, a network blip) over the whole window instead of having them redial in
waves. The attempt counter is reset only once a connection has stayed up for ``stable_after_s``: a cloud
that accepts the handshake and then drops every connection at once must not turn into a tight loop.

A server's retry hint (GoAway ``retry_after_s``, a ``Retry-After`` header on a refused handshake) is a
floor: the bridge waits at least that long, plus jitter so the bridges it applies to do not come back
in lock-step.
"""

from __future__ import annotations

import random

__all__ = ["MAX_HINT_S", "Backoff"]

MAX_HINT_S = 3600.0
"""Retry hints above this are clipped: a buggy or hostile hint must not park the bridge for days."""


class Backoff:
    """Delays before each reconnect attempt. Deterministic with a seeded ``rng`` (tests)."""

    def __init__(
        self,
        *,
        base_s: float = 1.0,
        cap_s: float = 60.0,
        stable_after_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if base_s <= 0 or cap_s < base_s or stable_after_s < 0:
            raise ValueError("need 0 < base_s <= cap_s and stable_after_s >= 0")
        self.base_s = base_s
        self.cap_s = cap_s
        self.stable_after_s = stable_after_s
        self.attempt = 0
        self._rng = rng or random.SystemRandom()

    def ceiling(self) -> float:
        """Upper bound of the next jittered delay (before any hint)."""
        # min() before the power would overflow for absurd attempt counts; the exponent is clamped.
        return min(self.cap_s, self.base_s * 2.0 ** min(self.attempt, 64))

    def next_delay(self, hint_s: float | None = None) -> float:
        """The delay before the next attempt; counts the attempt.

        With ``hint_s`` the delay is at least the hint plus a little jitter (:meth:`hint_delay`).
        """
        delay = self._rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        if hint_s is not None:
            delay = max(delay, self.hint_delay(hint_s))
        return delay

    def hint_delay(self, hint_s: float) -> float:
        """``hint_s`` (clipped to MAX_HINT_S) plus jitter of up to max(1 s, half the hint)."""
        hint = min(max(hint_s, 0.0), MAX_HINT_S)
        return hint + self._rng.uniform(0.0, max(1.0, hint / 2))

    def connection_ended(self, uptime_s: float) -> None:
        """Record that a connection which had completed its handshake ended after ``uptime_s``.

        The counter is reset only if it stayed up for ``stable_after_s``; otherwise the next delay keeps
        growing as if the handshake had failed.
        """
        if uptime_s >= self.stable_after_s:
            self.attempt = 0
