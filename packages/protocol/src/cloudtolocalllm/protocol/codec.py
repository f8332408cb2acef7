"""Encode and decode frames: one frame, or one Batch of frames, per binary WebSocket message.

The msgspec Encoder/Decoder instances are built once at import; creating them per call would cost more
than encoding a small frame. Decoding validates types and ranges (msgspec does it in C while parsing), so
a decoded frame is well-typed; ordering and credit rules are the Connection's job.
"""

from __future__ import annotations

import msgspec

from cloudtolocalllm.protocol.errors import FrameDecodeError, FrameTooLargeError, LocalProtocolError
from cloudtolocalllm.protocol.frames import Frame

__all__ = ["BATCH_OVERHEAD", "decode", "encode", "encode_batch", "peek_version"]

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Frame] = msgspec.msgpack.Decoder(Frame)


class _HelloVersion(msgspec.Struct, array_like=True, tag=1):
    version: int


class _WelcomeVersion(msgspec.Struct, array_like=True, tag=2):
    version: int


# Reads only the tag and the version of a Hello/Welcome of *any* protocol version (extra trailing
# elements are ignored), so an incompatible peer gets a clear "upgrade" message, not "malformed frame".
_version_decoder: msgspec.msgpack.Decoder[_HelloVersion | _WelcomeVersion] = msgspec.msgpack.Decoder(
    _HelloVersion | _WelcomeVersion
)

_MAX_DETAIL = 80


def encode(frame: Frame) -> bytes:
    """Serialise ``frame`` to the bytes of one binary WebSocket message.

    Raises LocalProtocolError if the frame holds values MessagePack cannot carry (e.g. a non-bytes
    payload object, an int beyond 64 bits).
    """
    try:
        return _encoder.encode(frame)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise LocalProtocolError(f"cannot encode {type(frame).__name__}: {exc}") from None


BATCH_OVERHEAD = 7
"""Bytes a Batch adds around its frames: array(1) + tag(1) + the frame list's header (at most 5)."""
_BATCH_PREFIX = b"\x92\x09"  # a Batch is the MessagePack array [9, [frame, ...]]


def encode_batch(frames: list[bytes]) -> bytes:
    """One message carrying ``frames``, each already encoded by :func:`encode` (``Connection.send``).

    A Batch is an array of its tag and the array of its frames, and an array is its header followed by its
    elements: the encoded frames are joined as they are, never decoded and encoded again.
    """
    count = len(frames)
    if count < 16:
        header = bytes((0x90 | count,))
    elif count < 1 << 16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return b"".join((_BATCH_PREFIX, header, *frames))


def decode(data: bytes | bytearray | memoryview, *, max_frame_bytes: int) -> Frame:
    """Parse one binary WebSocket message into a frame.

    ``data`` longer than ``max_frame_bytes`` is refused before any parsing (FrameTooLargeError). Anything
    that is not exactly one valid frame raises FrameDecodeError. Both are fatal for the connection.
    """
    size = len(data)
    if size > max_frame_bytes:
        raise FrameTooLargeError(size, max_frame_bytes)
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        # msgspec's messages name the offending path and types, never the input bytes themselves.
        raise FrameDecodeError(f"malformed frame: {str(exc)[:_MAX_DETAIL]}") from None
    except (TypeError, ValueError, RecursionError):
        raise FrameDecodeError("malformed frame: not a binary message") from None


def peek_version(data: bytes | bytearray | memoryview) -> int | None:
    """The protocol version in a Hello or Welcome of any version, or None if ``data`` is neither.

    Meant for the handshake only, after :func:`decode` failed: it tells a peer of another protocol
    version apart from one that sends garbage.
    """
    try:
        return _version_decoder.decode(data).version
    except (msgspec.DecodeError, TypeError, ValueError, RecursionError):
        return None
