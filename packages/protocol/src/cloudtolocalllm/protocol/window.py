"""Receive-window auto-tuning: a stream that the window holds back gets a bigger one.

A fixed per-stream window W caps one stream at W / RTT whatever the link can do: 1 MiB over a 50 ms
round trip is 20 MB/s. The receiver grants credit as its window is consumed; when half the window was
consumed in less than two round trips, the sender must have been waiting for credit
rather than for data, so the window doubles (the rule QUIC implementations use). Growth stops at the
receiver's own ``max_window`` and at a connection-wide ``budget`` of extra bytes, so memory stays
bounded: the receiver buffers at most the windows it granted. Windows only grow while the application
consumes quickly; a consumer slow from the start never triggers growth, but one that was fast and then
stops keeps what it grew until its body ends and is consumed (then the growth returns to the budget).

The peer needs nothing new: a bigger window is just larger Credit frames, which every sender accepts.
"""

from __future__ import annotations

from collections.abc import Callable

from cloudtolocalllm.protocol.streams import Stream

__all__ = ["WindowTuner"]


class WindowTuner:
    """Per-connection policy for growing streams' receive windows (sans-IO; the Connection gives the clock)."""

    __slots__ = ("_clock", "budget", "grown", "max_window", "rtt_s")

    def __init__(self, *, max_window: int, budget: int, clock: Callable[[], float]) -> None:
        self.max_window = max_window
        """Largest window one stream may reach; at or below the initial window nothing grows."""
        self.budget = budget
        """Most extra bytes (beyond the initial windows) all streams together may be granted."""
        self.grown = 0
        """Extra bytes granted to the streams open now."""
        self.rtt_s = 0.0
        """Round-trip estimate (0: unknown, no growth); see :meth:`measured`."""
        self._clock = clock

    def start(self, stream: Stream) -> None:
        """A stream opened: its first measuring epoch starts now."""
        stream.epoch_start = self._clock()

    def extra_credit(self, stream: Stream, returned: int) -> int:
        """Bytes to add to a Credit that returns ``returned`` consumed bytes (0: the window stays).

        Credits may be smaller than half a window; the decision is made once per half window returned, so
        a burst of small Credits measures the link over that half window, not the burst."""
        stream.epoch_bytes += returned
        if stream.epoch_bytes < stream.recv_window // 2:
            return 0
        returned, stream.epoch_bytes = stream.epoch_bytes, 0
        now = self._clock()
        elapsed = now - stream.epoch_start
        stream.epoch_start = now
        if self.rtt_s <= 0 or stream.recv_window >= self.max_window:
            return 0
        if elapsed >= 4 * self.rtt_s * returned / stream.recv_window:
            return 0  # half a window took two round trips or more: the window is not what limits
        extra = min(stream.recv_window, self.max_window - stream.recv_window, self.budget - self.grown)
        if extra <= 0:
            return 0
        stream.recv_window += extra
        self.grown += extra
        return extra

    def release(self, stream: Stream, initial_window: int) -> None:
        """The stream receives nothing more: what its window had grown returns to the budget (once)."""
        if stream.recv_window > initial_window:
            self.grown -= stream.recv_window - initial_window
            stream.recv_window = initial_window

    def measured(self, sample_s: float) -> None:
        """A round trip was timed: keep the smallest (queueing only ever adds). A sample of 0 (a coarse
        clock) says nothing and is ignored: the estimate 0 means "unknown" and would stop all growth."""
        if sample_s > 0:
            self.rtt_s = sample_s if self.rtt_s == 0 else min(self.rtt_s, sample_s)
