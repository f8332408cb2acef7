"""A client's transport on uvloop, fed a piece at a time once the client stops reading.

asyncio's transport copies the bytes it could not send into its own buffer and lets the written object
go. uvloop keeps each written object whole until its last byte is sent, while its write-buffer size (which
pauses the writer) counts only the unsent bytes. A relayed chunk is up to 256 KiB, so each client that
stops reading made the server hold a whole chunk, most of it already sent: 100 slow readers held 26 MB in
their transports against 11 MB unsent (measured; see docs/performance.md).

:class:`PiecewiseTransport` hands uvloop at most ``PIECE`` bytes of a large write at a time, each a copy, and
stops at the first piece the socket did not take: the rest waits here in one ``bytearray`` (as in asyncio's
transport) and goes on, piece by piece, as the socket drains. The transport pauses the protocol as soon as
a byte is unsent (write-buffer limits of 0), so the protocol's ``resume_writing`` is the moment to feed
the next piece (:meth:`PiecewiseTransport.feed`). A write the socket takes at once costs one copy of a large
chunk and no wait.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

__all__ = ["PIECE", "PiecewiseTransport", "is_uvloop_transport"]

PIECE: Final = 32 * 1024
"""The most bytes handed to uvloop in one write: what a stalled client's transport may hold beyond unsent."""


def is_uvloop_transport(transport: asyncio.BaseTransport) -> bool:
    return type(transport).__module__.startswith("uvloop")


class PiecewiseTransport:
    """Wraps a uvloop stream transport for a protocol that calls :meth:`feed` from ``resume_writing``."""

    __slots__ = ("_close_when_fed", "_kept", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        transport.set_write_buffer_limits(high=0)  # pause at the first unsent byte, resume once all is sent
        self.transport = transport
        self._kept = bytearray()
        self._close_when_fed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._close_when_fed:
            return  # closing: as a closed transport, take nothing more
        if self._kept:
            self._kept += data  # the socket is still behind: keep order, and a copy rather than the object
            return
        if len(data) <= PIECE:
            self.transport.write(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), PIECE):
            self.transport.write(bytes(view[start : start + PIECE]))  # a copy: uvloop keeps what it is given
            if self.transport.get_write_buffer_size():
                self._kept += view[start + PIECE :]
                return

    def feed(self) -> bool:
        """The socket has sent everything: give it the next pieces. True once nothing is kept here."""
        kept = self._kept
        while kept:
            piece = bytes(kept[:PIECE])
            del kept[:PIECE]
            self.transport.write(piece)
            if self.transport.get_write_buffer_size():
                return False
        if self._close_when_fed:
            self._close_when_fed = False
            self.transport.close()
        return True

    def unwrap(self) -> asyncio.Transport:
        """The transport itself, with anything still kept here handed to it whole (for a protocol switch)."""
        if self._kept:
            self.transport.write(bytes(self._kept))
            self._kept.clear()
        return self.transport

    def get_write_buffer_size(self) -> int:
        return len(self._kept) + self.transport.get_write_buffer_size()

    def close(self) -> None:
        if self._kept:
            self._close_when_fed = True  # uvloop sends what it holds before closing; what is kept here, too
        else:
            self.transport.close()

    def abort(self) -> None:
        self._kept.clear()
        self.transport.abort()

    def is_closing(self) -> bool:
        return self._close_when_fed or self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # get_extra_info, pause_reading, resume_reading, set_protocol...: the transport's own.
        return getattr(self.transport, name)
