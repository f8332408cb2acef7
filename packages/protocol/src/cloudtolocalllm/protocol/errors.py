"""Error codes carried on the wire and the single exception hierarchy of the protocol package.

Every failure the protocol detects is a :class:`ProtocolError`; callers never see a msgspec or other raw
exception. The subclass says what the caller must do:

- :class:`ConnectionProtocolError` (``fatal``): close the WebSocket with ``close_code``/``close_reason``.
- :class:`StreamProtocolError`: only one stream is broken; it is already reset in the connection state
  and ``reply`` is the StreamError frame to send to the peer. The connection carries on.
- :class:`LocalProtocolError`: *this* side tried to send something the protocol forbids. Nothing was
  sent and no state changed; it is a bug or a lost race (see :class:`StreamClosedError`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from cloudtolocalllm.protocol.close import CloseCode, close_reason, version_mismatch_reason

if TYPE_CHECKING:
    from cloudtolocalllm.protocol.frames import StreamError

__all__ = [
    "ConnectionProtocolError",
    "ErrorCode",
    "FrameDecodeError",
    "FrameTooLargeError",
    "LocalProtocolError",
    "ProtocolError",
    "StreamClosedError",
    "StreamProtocolError",
    "VersionMismatchError",
]


class ErrorCode(StrEnum):
    """Machine-readable error codes: in StreamError frames and on every ProtocolError.

    New codes may appear in later releases of the same protocol version, so receivers read a frame's code
    through ``StreamError.error_code``, which maps unknown values to INTERNAL instead of failing.
    """

    BACKEND_UNREACHABLE = "backend_unreachable"
    """The bridge could not connect to its local LLM server."""
    BACKEND_ERROR = "backend_error"
    """The local LLM server failed mid-request (reset, malformed answer)."""
    PATH_NOT_ALLOWED = "path_not_allowed"
    """The bridge does not forward this method/path."""
    READ_ONLY = "read_only"
    """The bridge runs read-only and the request would change the backend (pull, delete, create...)."""
    TIMEOUT = "timeout"
    """An idle or first-byte timeout fired."""
    TOO_LARGE = "too_large"
    """A body, header block or frame exceeds a limit."""
    CANCELLED = "cancelled"
    """The other end gave up on the stream (browser went away)."""
    REFUSED = "refused"
    """The stream was refused before any work was done (stream limit, draining); safe to retry."""
    FLOW_CONTROL = "flow_control"
    """The peer sent more bytes than it had credit for, or overflowed a window."""
    PROTOCOL = "protocol"
    """A frame broke the protocol's ordering or shape rules."""
    INTERNAL = "internal"
    """Anything else; also what unknown codes from newer peers map to."""


class ProtocolError(Exception):
    """Base of every error raised by the protocol package.

    Attributes: ``code`` (machine code), ``reason`` (human text, never contains payload bytes or
    tokens), ``fatal`` (the whole connection must close), ``stream_id`` (the stream concerned, if any)
    and ``close_code`` (the WebSocket close code to use when fatal).
    """

    fatal: bool = False

    def __init__(
        self,
        reason: str,
        *,
        code: ErrorCode = ErrorCode.PROTOCOL,
        stream_id: int | None = None,
        close_code: CloseCode | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.stream_id = stream_id
        self.close_code = close_code


class ConnectionProtocolError(ProtocolError):
    """The connection is broken beyond repair: close the WebSocket with ``close_code``/``close_reason``."""

    fatal = True
    close_code: CloseCode

    def __init__(
        self,
        reason: str,
        *,
        code: ErrorCode = ErrorCode.PROTOCOL,
        close_code: CloseCode = CloseCode.PROTOCOL_VIOLATION,
        stream_id: int | None = None,
    ) -> None:
        super().__init__(reason, code=code, stream_id=stream_id, close_code=close_code)

    @property
    def close_reason(self) -> str:
        """The text for the WebSocket close frame (fits the 123-byte limit)."""
        return close_reason(self.close_code, self.reason)


class FrameDecodeError(ConnectionProtocolError):
    """The bytes are not a valid frame (garbage, truncated, unknown tag, wrong field types)."""


class FrameTooLargeError(ConnectionProtocolError):
    """A frame is larger than max_frame_bytes; refused before any decoding work."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"frame of {size} bytes exceeds max_frame_bytes={limit}",
            code=ErrorCode.TOO_LARGE,
            close_code=CloseCode.FRAME_TOO_LARGE,
        )
        self.size = size
        self.limit = limit


class VersionMismatchError(ConnectionProtocolError):
    """The peer speaks an incompatible protocol version."""

    def __init__(self, *, bridge_version: int, cloud_version: int) -> None:
        super().__init__(
            version_mismatch_reason(bridge_version, cloud_version),
            close_code=CloseCode.VERSION_INCOMPATIBLE,
        )
        self.bridge_version = bridge_version
        self.cloud_version = cloud_version

    @property
    def close_reason(self) -> str:
        # The reason already says everything (both versions, what to do); no generic prefix.
        return self.reason


class StreamProtocolError(ProtocolError):
    """One stream broke a rule. It is already reset in the state; send ``reply`` through ``Connection.send``."""

    stream_id: int

    def __init__(self, reason: str, *, stream_id: int, code: ErrorCode, reply: StreamError) -> None:
        super().__init__(reason, code=code, stream_id=stream_id)
        self.reply = reply


class LocalProtocolError(ProtocolError):
    """This side asked to send something the protocol forbids; nothing was sent, no state changed."""


class StreamClosedError(LocalProtocolError):
    """The stream ended (peer cancelled or errored, or the connection closed) before this send.

    This is the ordinary race of a peer cancelling while we still write; ``code`` says why it ended.
    """
