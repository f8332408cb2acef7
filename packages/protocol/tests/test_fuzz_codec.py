"""Hypothesis fuzzing of the codec: whatever arrives, decode() yields a frame or a ProtocolError."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudtolocalllm.protocol import (
    MAX_STREAM_ID,
    BackendKind,
    BridgeStatus,
    Cancel,
    Credit,
    Data,
    End,
    ErrorCode,
    Frame,
    FrameDecodeError,
    FrameTooLargeError,
    GoAway,
    Hello,
    Limits,
    Open,
    Ping,
    Pong,
    ProtocolError,
    Reauth,
    ReauthOk,
    ResponseHead,
    StreamError,
    Welcome,
    decode,
    encode,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG = 1 << 24

texts = st.text(max_size=40)
ids = st.integers(1, MAX_STREAM_ID)
u63 = st.integers(0, 2**63 - 1)
floats = st.floats(min_value=0.001, max_value=1e9, allow_nan=False, allow_infinity=False)
seconds = st.floats(min_value=0.001, max_value=86400, allow_nan=False, allow_infinity=False)
headers = st.lists(st.tuples(texts, texts), max_size=5)
limits = st.builds(Limits, st.integers(4096, 1 << 24), st.integers(1, 2**31 - 1), st.integers(1, 65535))

frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(
        Hello,
        st.integers(0, 2**31),
        texts,
        texts,
        texts,
        texts,
        st.sampled_from(BackendKind),
        st.booleans(),
        st.lists(texts, max_size=5),
    ),
    st.builds(Welcome, st.integers(0, 10), texts, seconds, limits, st.none() | floats),
    st.builds(Ping, u63),
    st.builds(Pong, u63),
    st.builds(Reauth, texts),
    st.builds(ReauthOk, st.none() | floats),
    st.builds(BridgeStatus, st.booleans(), st.lists(texts, max_size=5)),
    st.builds(GoAway, texts, seconds),
    st.builds(Open, ids, texts, texts, texts, headers, st.booleans()),
    st.builds(ResponseHead, ids, st.integers(-(2**40), 2**40), headers),
    st.builds(Data, ids, st.binary(max_size=300)),
    st.builds(End, ids),
    st.builds(Credit, ids, st.integers(0, 2**31 - 1)),
    st.builds(Cancel, ids, texts),
    st.builds(StreamError, ids, st.sampled_from(ErrorCode).map(str) | texts, texts),
)

# Values of every MessagePack type, to put where they do not belong.
any_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | texts | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)


def decode_or_protocol_error(data: bytes, max_frame_bytes: int = BIG) -> Frame | None:
    """Decode, allowing only ProtocolError; a decoded frame must survive a re-encode."""
    error: ProtocolError | None = None
    try:
        frame = decode(data, max_frame_bytes=max_frame_bytes)
    except ProtocolError as exc:
        error = exc
    if error is not None:
        assert error.fatal
        assert error.close_code is not None
        return None
    assert decode(encode(frame), max_frame_bytes=BIG) == frame
    return frame


@FUZZ
@given(frames)
def test_round_trip(frame: Frame) -> None:
    assert decode(encode(frame), max_frame_bytes=BIG) == frame


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    decode_or_protocol_error(data)


@FUZZ
@given(frames, st.data())
def test_truncated_frames_are_decode_errors(frame: Frame, data: st.DataObject) -> None:
    raw = encode(frame)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(FrameDecodeError):
        decode(raw[:cut], max_frame_bytes=BIG)


@FUZZ
@given(frames, st.data())
def test_oversized_frames_are_refused(frame: Frame, data: st.DataObject) -> None:
    raw = encode(frame)
    limit = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(FrameTooLargeError) as info:
        decode(raw, max_frame_bytes=limit)
    assert (info.value.size, info.value.limit) == (len(raw), limit)


@FUZZ
@given(st.integers(-(2**63), 2**64 - 1).filter(lambda t: t not in {*range(1, 9), *range(16, 23)}), any_value)
def test_unknown_tags(tag: int, tail: Any) -> None:
    with pytest.raises(FrameDecodeError):
        decode(msgspec.msgpack.encode([tag, tail]), max_frame_bytes=BIG)


@FUZZ
@given(frames, st.data())
def test_fields_replaced_by_values_of_any_type(frame: Frame, data: st.DataObject) -> None:
    fields: list[Any] = msgspec.msgpack.decode(encode(frame))
    index = data.draw(st.integers(0, len(fields) - 1))
    fields[index] = data.draw(any_value)
    decode_or_protocol_error(msgspec.msgpack.encode(fields))


@FUZZ
@given(frames, st.data())
def test_flipped_bytes(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    decode_or_protocol_error(bytes(raw))


@FUZZ
@given(st.lists(any_value, max_size=10))
def test_arbitrary_arrays(values: list[Any]) -> None:
    decode_or_protocol_error(msgspec.msgpack.encode(values))
