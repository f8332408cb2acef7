"""Per-stream state: the two half-streams and their credit windows.

A stream carries one HTTP exchange. The *request* half flows cloud -> bridge (Open, then Data*/End when
``has_body``), the *response* half flows bridge -> cloud (ResponseHead, Data*, End). Each side sees one
half as "send" and the other as "recv". Credit is per half: the receiver of a half grants it, the sender
spends it, both start at ``Limits.initial_window``; a receiver may grow its window later (``window``).

This module is sans-IO; the only asyncio object is an optional Event, created lazily when somebody waits
for credit, so code that never awaits never touches an event loop.
"""

from __future__ import annotations

import asyncio

from cloudtolocalllm.protocol.errors import ErrorCode

__all__ = ["Stream"]


class Stream:
    """Bookkeeping for one live stream, as seen from one side of the connection."""

    __slots__ = (
        "_credit_event",
        "close_code",
        "close_reason",
        "closed",
        "credit_unsent",
        "epoch_bytes",
        "epoch_start",
        "head_pending",
        "recv_buffered",
        "recv_credit",
        "recv_open",
        "recv_unreturned",
        "recv_window",
        "send_credit",
        "send_open",
        "stream_id",
    )

    def __init__(self, stream_id: int, *, window: int, send_open: bool, recv_open: bool) -> None:
        self.stream_id = stream_id
        self.send_open = send_open
        """This side may still send body Data/End."""
        self.recv_open = recv_open
        """The peer may still send body Data/End."""
        self.head_pending = True
        """The response half has not had its ResponseHead yet."""
        self.send_credit = window
        """Payload bytes this side may still send before the peer grants more."""
        self.recv_credit = window
        """Payload bytes the peer may still send before this side grants more."""
        self.recv_buffered = 0
        """Bytes received and handed to the application but not yet reported consumed."""
        self.recv_unreturned = 0
        """Bytes the application consumed that have not been granted back to the peer yet."""
        self.credit_unsent = 0
        """Credit granted by ``consumed()`` whose frame has not gone through ``send()`` yet."""
        self.recv_window = window
        """This side's receive window for the stream: starts at the initial window, may grow (``window``)."""
        self.epoch_start = 0.0
        """When the window's current measuring epoch began (``window.WindowTuner``)."""
        self.epoch_bytes = 0
        """Bytes granted back in the current measuring epoch (it ends at half a window)."""
        self.closed = False
        self.close_code = ErrorCode.INTERNAL
        self.close_reason = ""
        self._credit_event: asyncio.Event | None = None

    def spend(self, n: int) -> None:
        """Use ``n`` bytes of send credit (the caller checked it is available)."""
        self.send_credit -= n
        if self._credit_event is not None and self.send_credit == 0:
            self._credit_event.clear()

    def grant(self, n: int) -> None:
        """Add ``n`` bytes of send credit (the peer sent a Credit)."""
        self.send_credit += n
        if self._credit_event is not None and self.send_credit > 0:
            self._credit_event.set()

    def close(self, code: ErrorCode, reason: str) -> None:
        """Mark the stream ended; wakes every waiter so it can see why."""
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        self.send_open = self.recv_open = False
        if self._credit_event is not None:
            self._credit_event.set()

    def credit_event(self) -> asyncio.Event:
        """An Event set while there is send credit or once the stream has ended."""
        if self._credit_event is None:
            self._credit_event = asyncio.Event()
            if self.send_credit > 0 or self.closed:
                self._credit_event.set()
        return self._credit_event
