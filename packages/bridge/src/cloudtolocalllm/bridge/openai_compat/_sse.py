"""An incremental Server-Sent Events parser for OpenAI-style streams (``data: {...}`` ... ``data: [DONE]``).

It follows the WHATWG event-stream rules that matter for LLM servers: lines end with CRLF, LF or a lone
CR (and a CRLF may be split across two network chunks); ``:`` starts a comment (keep-alives); a blank line
dispatches the event; ``data`` lines of one event are joined with ``\\n``; ``event`` names the event. Two
leniencies on top: llama.cpp's server reports a failure mid-stream as an ``error: {...}`` line (not a
standard field), which becomes an event named ``error``; and an event not closed by a blank line at the
end of the stream is still dispatched (some servers end with ``data: [DONE]\\n`` only).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cloudtolocalllm.bridge.backend import BackendError
from cloudtolocalllm.protocol import ErrorCode

__all__ = ["MAX_EVENT_BYTES", "SseEvent", "SseParser", "sse_events"]

MAX_EVENT_BYTES = 16 * 1024 * 1024
"""One event (or one unterminated line) larger than this is a broken server, not a token."""

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    """The event name; "message" when the server named none."""
    data: str


class SseParser:
    """Feed it bytes as they arrive; it returns the events completed so far."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buffer = bytearray()
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF belongs to that CRLF
        self._event = ""
        self._data: list[str] = []
        self._data_bytes = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        self._buffer += chunk
        events: list[SseEvent] = []
        consumed = 0
        for match in _EOL.finditer(self._buffer):
            self._line(bytes(self._buffer[consumed : match.start()]), events)
            consumed = match.end()
        if consumed and self._buffer[consumed - 1 : consumed] == b"\r" and consumed == len(self._buffer):
            self._skip_lf = True
        del self._buffer[:consumed]
        if len(self._buffer) > self._max:
            raise _too_large()
        return events

    def close(self) -> list[SseEvent]:
        """The end of the stream: whatever is pending (an unterminated line or event) is dispatched."""
        events: list[SseEvent] = []
        if self._buffer:
            self._line(bytes(self._buffer), events)
            self._buffer.clear()
        self._dispatch(events)
        return events

    def _line(self, raw: bytes, events: list[SseEvent]) -> None:
        if not raw:
            self._dispatch(events)
            return
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return  # a comment: servers send these as keep-alives
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._append(value)
        elif name == "event":
            self._event = value
        elif name == "error":
            self._event = "error"
            self._append(value)
        # id, retry and unknown fields mean nothing for a one-shot completion stream.

    def _append(self, value: str) -> None:
        self._data_bytes += len(value) + 1
        if self._data_bytes > self._max:
            raise _too_large()
        self._data.append(value)

    def _dispatch(self, events: list[SseEvent]) -> None:
        if self._data:
            events.append(SseEvent(self._event or "message", "\n".join(self._data)))
        self._event = ""
        self._data = []
        self._data_bytes = 0


def _too_large() -> BackendError:
    return BackendError(
        ErrorCode.BACKEND_ERROR, f"the OpenAI-compatible server sent a stream event over {MAX_EVENT_BYTES} bytes"
    )


async def sse_events(chunks: AsyncIterator[bytes], parser: SseParser | None = None) -> AsyncIterator[SseEvent]:
    """The events of a byte stream, each yielded as soon as its terminating blank line has arrived."""
    parser = parser or SseParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event
