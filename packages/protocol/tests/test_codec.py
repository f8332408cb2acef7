"""Encoding and decoding of every frame kind, and how the decoder refuses bad input."""

from __future__ import annotations

from typing import get_args

import msgspec
import pytest

from cloudtolocalllm.protocol import (
    DATA_FRAME_OVERHEAD,
    DEFAULT_LIMITS,
    MAX_STREAM_ID,
    PROTOCOL_VERSION,
    BackendKind,
    Batch,
    BridgeStatus,
    Cancel,
    CloseCode,
    Credit,
    Data,
    End,
    ErrorCode,
    Frame,
    FrameDecodeError,
    FrameTooLargeError,
    GoAway,
    Hello,
    LocalProtocolError,
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
    peek_version,
)
from cloudtolocalllm.protocol.codec import BATCH_OVERHEAD, encode_batch

BIG = 16 * 1024 * 1024

ALL_FRAMES: list[Frame] = [
    Hello(PROTOCOL_VERSION, "b-1", "desk", "1.2.3", "linux-arm", BackendKind.OPENAI, False, ["a", "b:7b"]),
    Welcome(PROTOCOL_VERSION, "s-1", 25.0, DEFAULT_LIMITS, token_expires_at=1_800_000_000.5),
    Welcome(PROTOCOL_VERSION, "s-2", 0.5, DEFAULT_LIMITS),
    Ping(2**63 - 1),
    Pong(0),
    Reauth("eyJhbGciOi.secret.sig"),
    ReauthOk(1_800_000_900.0),
    ReauthOk(),
    BridgeStatus(True, ["llama3:8b", "qwen2.5"]),
    GoAway("deploy", 3.5),
    Open(1, "POST", "/api/generate", "a=1&b=%20", [("content-type", "application/json"), ("x", "")], True),
    ResponseHead(MAX_STREAM_ID, 200, [("content-type", "application/x-ndjson")]),
    Data(3, b""),
    Data(3, bytes(range(256)) * 300),
    End(5),
    Credit(7, 2**31 - 1),
    Cancel(9, "browser went away"),
    Cancel(9),
    StreamError(11, ErrorCode.BACKEND_UNREACHABLE, "connection refused on 127.0.0.1:11434"),
    Batch([ResponseHead(1, 200, []), Data(1, b"x"), End(1), Credit(2, 5)]),
]


@pytest.mark.parametrize("frame", ALL_FRAMES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: Frame) -> None:
    data = encode(frame)
    back = decode(data, max_frame_bytes=BIG)
    assert back == frame
    assert type(back) is type(frame)


def test_every_frame_kind_is_covered() -> None:
    kinds = {type(f) for f in ALL_FRAMES}
    assert kinds == set(get_args(Frame))


def test_small_data_frame_is_compact() -> None:
    assert len(encode(Data(1, b"x" * 64))) == 64 + 5  # array, tag, id, bin8 length
    assert len(encode(End(1))) == 3


def test_data_overhead_is_worst_case() -> None:
    payload = b"x" * 70_000
    assert len(encode(Data(MAX_STREAM_ID, payload))) == len(payload) + DATA_FRAME_OVERHEAD


def test_stream_error_keeps_unknown_codes_readable() -> None:
    frame = decode(encode(StreamError(1, "brand_new_code", "from a newer bridge")), max_frame_bytes=BIG)
    assert isinstance(frame, StreamError)
    assert frame.code == "brand_new_code"
    assert frame.error_code is ErrorCode.INTERNAL
    assert StreamError(1, ErrorCode.READ_ONLY).error_code is ErrorCode.READ_ONLY


def test_trailing_fields_from_a_newer_minor_release_are_ignored() -> None:
    data = msgspec.msgpack.encode([19, 5, "a field added later", 42])
    assert decode(data, max_frame_bytes=BIG) == End(5)


def test_missing_optional_trailing_fields_take_defaults() -> None:
    assert decode(msgspec.msgpack.encode([21, 3]), max_frame_bytes=BIG) == Cancel(3, "")


def test_oversized_frame_is_refused_before_decoding() -> None:
    data = encode(Data(1, b"x" * 5000))
    with pytest.raises(FrameTooLargeError) as info:
        decode(data, max_frame_bytes=5000)
    err = info.value
    assert err.fatal
    assert err.close_code is CloseCode.FRAME_TOO_LARGE
    assert err.code is ErrorCode.TOO_LARGE
    assert err.reason == f"frame of {len(data)} bytes exceeds max_frame_bytes=5000"
    # Exactly at the limit is fine.
    assert decode(data, max_frame_bytes=len(data)) == Data(1, b"x" * 5000)


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"", "truncated"),
        (b"\xc1", "malformed"),
        (msgspec.msgpack.encode([99, 1]), "Invalid value 99 - at `$[0]`"),
        (msgspec.msgpack.encode(["Data", 1, b""]), "Expected `int`, got `str` - at `$[0]`"),
        (msgspec.msgpack.encode([18, "1", b""]), "Expected `int`, got `str` - at `$[1]`"),
        (msgspec.msgpack.encode([18, 0, b""]), "Expected `int` >= 1 - at `$[1]`"),
        (msgspec.msgpack.encode([18, 2**31, b""]), "Expected `int` <= 2147483647 - at `$[1]`"),
        (msgspec.msgpack.encode([18, 1, "text"]), "Expected `bytes`, got `str` - at `$[2]`"),
        (msgspec.msgpack.encode([18, 1]), "Expected `array` of at least length 3, got 2"),
        (msgspec.msgpack.encode({"t": 18}), "Expected `array`, got `object`"),
        (encode(End(1)) + b"\x00", "trailing characters"),
    ],
)
def test_malformed_input_raises_frame_decode_error(data: bytes, detail: str) -> None:
    with pytest.raises(FrameDecodeError) as info:
        decode(data, max_frame_bytes=BIG)
    # The detail is msgspec's wording (it names the path and types, never the input bytes).
    assert info.value.reason.startswith("malformed frame: ")
    assert detail in info.value.reason
    assert info.value.fatal
    assert info.value.close_code is CloseCode.PROTOCOL_VIOLATION


def test_text_message_is_a_decode_error() -> None:
    with pytest.raises(FrameDecodeError, match="not a binary message"):
        decode("hello", max_frame_bytes=BIG)  # type: ignore[arg-type]


def test_bad_welcome_limits_are_refused_at_decode() -> None:
    data = msgspec.msgpack.encode([2, PROTOCOL_VERSION, "s", 20.0, [100, 1, 1]])
    with pytest.raises(FrameDecodeError, match="Expected `int` >= 4096"):
        decode(data, max_frame_bytes=BIG)


@pytest.mark.parametrize(
    "frame",
    [
        ReauthOk(expires_at=float("nan")),
        ReauthOk(expires_at=float("inf")),
        ReauthOk(expires_at=-1.0),
        GoAway("deploy", retry_after_s=float("nan")),
        GoAway("deploy", retry_after_s=float("inf")),
        Welcome(PROTOCOL_VERSION, "s", float("inf"), DEFAULT_LIMITS),
        Welcome(PROTOCOL_VERSION, "s", 20.0, DEFAULT_LIMITS, token_expires_at=float("nan")),
    ],
)
def test_times_that_are_not_finite_are_refused_at_decode(frame: Frame) -> None:
    # NaN compares false with everything: a bridge told "expires at NaN" would never renew its token.
    with pytest.raises(FrameDecodeError):
        decode(msgspec.msgpack.encode(frame), max_frame_bytes=BIG)


def test_decode_accepts_any_buffer() -> None:
    data = encode(Ping(7))
    assert decode(bytearray(data), max_frame_bytes=BIG) == Ping(7)
    assert decode(memoryview(data), max_frame_bytes=BIG) == Ping(7)


def test_encode_failure_is_a_protocol_error() -> None:
    with pytest.raises(LocalProtocolError, match="cannot encode Data"):
        encode(Data(1, object()))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="cannot encode Ping"):
        encode(Ping(2**64))


def test_peek_version_reads_hellos_of_any_layout() -> None:
    assert peek_version(encode(ALL_FRAMES[0])) == PROTOCOL_VERSION
    assert peek_version(encode(ALL_FRAMES[1])) == PROTOCOL_VERSION
    assert peek_version(msgspec.msgpack.encode([1, 7, {"totally": "different"}])) == 7
    assert peek_version(encode(Ping(1))) is None
    assert peek_version(b"\xff\x00") is None


def test_repr_hides_secrets_and_content() -> None:
    assert repr(Reauth("super-secret")) == "Reauth(token=<12 chars>)"
    assert repr(Data(1, b"my prompt")) == "Data(stream_id=1, payload=<9 bytes>)"
    opened = Open(1, "GET", "/api/tags", "token=abc", [("authorization", "Bearer abc")], False)
    assert "abc" not in repr(opened)
    assert "authorization" in repr(opened)
    assert "Bearer" not in repr(ResponseHead(1, 200, [("set-cookie", "Bearer x")]))


@pytest.mark.parametrize("count", [1, 2, 15, 16, 300, 70_000])
def test_encode_batch_joins_encoded_frames_into_one_batch(count: int) -> None:
    frames = [
        Data(1 + 2 * (i % 3), bytes([i % 256]) * (i % 5)) if i % 2 else End(1 + 2 * (i % 3)) for i in range(count)
    ]
    data = encode_batch([encode(frame) for frame in frames])
    assert data == encode(Batch(frames))  # the hand-joined bytes are exactly what msgspec would write
    assert decode(data, max_frame_bytes=len(data)) == Batch(frames)
    assert len(data) - sum(len(encode(frame)) for frame in frames) <= BATCH_OVERHEAD


def test_a_batch_inside_a_batch_is_refused() -> None:
    nested = encode_batch([encode_batch([encode(End(1))])])
    with pytest.raises(FrameDecodeError):
        decode(nested, max_frame_bytes=BIG)
