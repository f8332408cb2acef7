"""The SSE parser: every way a server or the network can cut and end lines."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cloudtolocalllm.bridge.backend import BackendError
from cloudtolocalllm.bridge.openai_compat._sse import SseEvent, SseParser, sse_events

STREAM = (
    b": keep-alive comment\n"
    b'data: {"a":1}\n\n'
    b"event: ping\ndata: x\n\n"
    b"data: line one\ndata: line two\n\n"
    b"id: 7\nretry: 100\nunknown: y\ndata:no-space\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SseEvent("message", '{"a":1}'),
    SseEvent("ping", "x"),
    SseEvent("message", "line one\nline two"),
    SseEvent("message", "no-space"),
    SseEvent("message", "[DONE]"),
]


def parse(*chunks: bytes) -> list[SseEvent]:
    parser = SseParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events + parser.close()


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol: bytes) -> None:
    assert parse(STREAM.replace(b"\n", eol)) == EXPECTED


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_split_at_every_byte(eol: bytes) -> None:
    stream = STREAM.replace(b"\n", eol)
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == EXPECTED
    for cut in range(len(stream)):
        assert parse(stream[:cut], stream[cut:]) == EXPECTED, cut


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    # "\r" ends one chunk and "\n" starts the next: one line end, not an empty line (which would
    # dispatch an event early, cutting "a" from "b").
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [SseEvent("message", "a\nb")]


def test_multibyte_utf8_split_across_chunks() -> None:
    payload = "data: héllo 👋\n\n".encode()
    assert parse(*(payload[i : i + 1] for i in range(len(payload)))) == [SseEvent("message", "héllo 👋")]


def test_llama_cpp_error_line_is_an_error_event() -> None:
    assert parse(b'error: {"code":500,"message":"boom"}\n\n') == [SseEvent("error", '{"code":500,"message":"boom"}')]


def test_unterminated_event_at_end_of_stream_is_dispatched() -> None:
    assert parse(b"data: [DONE]") == [SseEvent("message", "[DONE]")]
    assert parse(b"data: [DONE]\n") == [SseEvent("message", "[DONE]")]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert parse(b"\n\n\nevent: x\n\n\n") == []


def test_oversized_line_is_refused() -> None:
    parser = SseParser(max_event_bytes=100)
    with pytest.raises(BackendError, match="stream event"):
        parser.feed(b"data: " + b"x" * 200)


def test_oversized_event_is_refused() -> None:
    parser = SseParser(max_event_bytes=100)
    with pytest.raises(BackendError, match="stream event"):
        parser.feed(b"data: aaaaaaaaaa\n" * 20)


async def test_events_are_yielded_as_soon_as_complete() -> None:
    fed: list[bytes] = []

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"data: 1\n", b"\ndata: 2\n\n"):
            fed.append(chunk)
            yield chunk

    seen = []
    async for event in sse_events(chunks()):
        seen.append((event.data, len(fed)))
    # "1" came out after the second chunk (its blank line), before anything else was read.
    assert seen == [("1", 2), ("2", 2)]
