"""Frame definitions: one msgspec Struct per frame kind, together a tagged union encoded as MessagePack.

Each frame is a MessagePack array whose first element is a small integer tag (``array_like=True`` plus
integer tags): a 64-byte Data frame costs 4-8 bytes of framing instead of ~30 with field names. Tags are
grouped: 1-15 connection frames, 16-31 stream frames. Tags are never reused.

Direction (enforced by :class:`~cloudtolocalllm.protocol.connection.Connection`):

- bridge -> cloud: Hello, Reauth, BridgeStatus, ResponseHead
- cloud -> bridge: Welcome, ReauthOk, GoAway, Open
- either way: Ping, Pong, Data, End, Credit, Cancel, StreamError, and Batch (several of these in one
  message, once both sides announced the ``batch`` feature)

``__repr__`` of frames that may carry secrets or user content (tokens, query strings, header values,
prompt/answer bytes) shows sizes and names only, so a frame that ends up in a log leaks nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, TypeAlias

import msgspec

from cloudtolocalllm.protocol.errors import ErrorCode

__all__ = [
    "DATA_FRAME_OVERHEAD",
    "DEFAULT_FRAME_PAYLOAD",
    "DEFAULT_LIMITS",
    "HANDSHAKE_MAX_FRAME_BYTES",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "BackendKind",
    "Batch",
    "BatchedFrame",
    "BridgeStatus",
    "Cancel",
    "Credit",
    "Data",
    "End",
    "Frame",
    "GoAway",
    "Headers",
    "Hello",
    "Limits",
    "Open",
    "Ping",
    "Pong",
    "Reauth",
    "ReauthOk",
    "ResponseHead",
    "StreamError",
    "StreamFrame",
    "Welcome",
]

MAX_STREAM_ID = 2**31 - 1
"""Stream ids are positive and fit 31 bits (so they always pack into at most 5 bytes)."""
MAX_WINDOW = 2**31 - 1
"""No credit window may exceed this, like HTTP/2."""
MIN_FRAME_BYTES_LIMIT = 4096
MAX_FRAME_BYTES_LIMIT = 16 * 1024 * 1024
MAX_STREAMS_LIMIT = 65535
HANDSHAKE_MAX_FRAME_BYTES = 1024 * 1024
"""Frame size limit until the Welcome sets the real one (a Hello lists every model, so be generous)."""
DATA_FRAME_OVERHEAD = 12
"""Worst-case framing bytes around a Data payload: array(1) + tag(1) + stream id(5) + bin32 header(5)."""

StreamId = Annotated[int, msgspec.Meta(ge=1, le=MAX_STREAM_ID)]
UnixTime = Annotated[float, msgspec.Meta(ge=0, le=1e11)]
"""Seconds since the epoch; the bounds also refuse NaN and infinity, which would break every comparison."""
Seconds = Annotated[float, msgspec.Meta(ge=0, le=86400)]
"""A duration; finite and at most a day (NaN and infinity refused)."""
Headers: TypeAlias = list[tuple[str, str]]
"""HTTP header fields in order, as ``[name, value]`` pairs (names may repeat)."""


class BackendKind(StrEnum):
    """Which API the bridge's local backend speaks."""

    OLLAMA = "ollama"
    OPENAI = "openai"


class Limits(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Connection limits chosen by the cloud and sent in the Welcome; both ends obey them afterwards."""

    max_frame_bytes: Annotated[int, msgspec.Meta(ge=MIN_FRAME_BYTES_LIMIT, le=MAX_FRAME_BYTES_LIMIT)]
    """Largest encoded frame either side may send."""
    initial_window: Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW)]
    """Credit, in payload bytes, each side starts with for each direction of every stream."""
    max_concurrent_streams: Annotated[int, msgspec.Meta(ge=1, le=MAX_STREAMS_LIMIT)]
    """Most streams that may be open at once."""


DEFAULT_FRAME_PAYLOAD = 256 * 1024
"""What one default Data frame carries: asyncio reads at most 256 KiB at a time, so a body read travels
whole. (With frames of 256 KiB *including* the header, each read was split into a full frame and a 12-byte
one, which cost a wake-up at every hop: 15-30 % of a bulk upload's CPU in the backend and api-backend.)"""

DEFAULT_LIMITS = Limits(
    max_frame_bytes=DEFAULT_FRAME_PAYLOAD + DATA_FRAME_OVERHEAD,
    # 100 slow readers hold at most 50 MiB; fast streams grow their windows (see ``window``).
    initial_window=512 * 1024,
    max_concurrent_streams=64,
)


class _Frame(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Base of every frame. gc=False: frames hold only scalars, bytes and lists of str, never cycles.

    Subclasses repeat ``frozen=True`` only for type checkers, which do not inherit it (msgspec does).
    """


# --- connection frames (tags 1-15) ------------------------------------------------------------------


class Hello(_Frame, tag=1, frozen=True):
    """bridge -> cloud, the first frame: who is connecting and what it can reach.

    The bridge sends nothing else until the Welcome (or a GoAway) arrives.
    """

    version: int
    bridge_id: str
    name: str
    software_version: str
    platform: str
    backend_kind: BackendKind
    backend_reachable: bool
    models: list[str]
    features: list[str] = []
    """Optional protocol features this bridge can use (``version.FEATURES``); the Welcome says which are on."""


class Welcome(_Frame, tag=2, frozen=True):
    """cloud -> bridge, the answer to Hello: the session and the limits both sides obey from now on."""

    version: int
    session_id: str
    heartbeat_interval_s: Annotated[float, msgspec.Meta(gt=0, le=86400)]
    limits: Limits
    token_expires_at: UnixTime | None = None
    """Unix time at which the bridge's token expires; it must send a Reauth before then."""
    features: list[str] = []
    """The features of the Hello's list that both sides use from now on."""


class Ping(_Frame, tag=3, frozen=True):
    """Heartbeat request (either way); the receiver answers with a Pong carrying the same nonce."""

    nonce: int


class Pong(_Frame, tag=4, frozen=True):
    """Heartbeat answer."""

    nonce: int


class Reauth(_Frame, tag=5, frozen=True):
    """bridge -> cloud: a fresh bearer token, so the connection outlives the token it started with."""

    token: str

    def __repr__(self) -> str:
        return f"Reauth(token=<{len(self.token)} chars>)"


class ReauthOk(_Frame, tag=6, frozen=True):
    """cloud -> bridge: the Reauth's token is accepted (a refused one closes with UNAUTHORIZED)."""

    expires_at: UnixTime | None = None


class BridgeStatus(_Frame, tag=7, frozen=True):
    """bridge -> cloud: the backend's reachability and models, re-sent whenever either changes."""

    backend_reachable: bool
    models: list[str]


class GoAway(_Frame, tag=8, frozen=True):
    """cloud -> bridge: no new streams will open here; reconnect after ``retry_after_s`` (deploys, drain).

    Streams already open may finish; the cloud then closes with GOING_AWAY.
    """

    reason: str
    retry_after_s: Seconds = 0.0


# --- stream frames (tags 16-31) ---------------------------------------------------------------------


class Open(_Frame, tag=16, frozen=True):
    """cloud -> bridge: start a stream carrying one HTTP request. Only the cloud opens streams (odd ids)."""

    stream_id: StreamId
    method: str
    path: str
    query: str
    headers: Headers
    has_body: bool
    """True if Data/End frames with the request body follow; False means the request is complete."""

    def __repr__(self) -> str:
        names = [name for name, _ in self.headers]
        return (
            f"Open(stream_id={self.stream_id}, method={self.method!r}, path={self.path!r}, "
            f"query=<{len(self.query)} chars>, header_names={names!r}, has_body={self.has_body})"
        )


class ResponseHead(_Frame, tag=17, frozen=True):
    """bridge -> cloud: status and headers of the response; Data frames with the body follow."""

    stream_id: StreamId
    status: int
    headers: Headers

    def __repr__(self) -> str:
        names = [name for name, _ in self.headers]
        return f"ResponseHead(stream_id={self.stream_id}, status={self.status}, header_names={names!r})"


class Data(_Frame, tag=18, frozen=True):
    """Body bytes of one direction of a stream; costs ``len(payload)`` credit."""

    stream_id: StreamId
    payload: bytes

    def __repr__(self) -> str:
        return f"Data(stream_id={self.stream_id}, payload=<{len(self.payload)} bytes>)"


class End(_Frame, tag=19, frozen=True):
    """The sender's body for this stream is complete (half-close)."""

    stream_id: StreamId


class Credit(_Frame, tag=20, frozen=True):
    """The sender may receive ``increment`` more payload bytes on this stream (a window update)."""

    stream_id: StreamId
    increment: Annotated[int, msgspec.Meta(ge=0, le=MAX_WINDOW)]


class Cancel(_Frame, tag=21, frozen=True):
    """Abandon the stream in both directions (e.g. the browser disconnected); no reply is expected."""

    stream_id: StreamId
    reason: str = ""


class StreamError(_Frame, tag=22, frozen=True):
    """End the stream in both directions because of an error; ``code`` is an ErrorCode value."""

    stream_id: StreamId
    code: str
    message: str = ""

    @property
    def error_code(self) -> ErrorCode:
        """``code`` as an ErrorCode; codes from a newer peer that this side does not know map to INTERNAL."""
        try:
            return ErrorCode(self.code)
        except ValueError:
            return ErrorCode.INTERNAL


BatchedFrame: TypeAlias = (
    Ping
    | Pong
    | Reauth
    | ReauthOk
    | BridgeStatus
    | GoAway
    | Open
    | ResponseHead
    | Data
    | End
    | Credit
    | Cancel
    | StreamError
)
"""A frame a Batch may carry: any but Hello, Welcome and Batch."""


class Batch(_Frame, tag=9, frozen=True):
    """Several frames in one WebSocket message (either way), once the Welcome turned the ``batch`` feature on.

    Each is handled as if it had arrived in a message of its own, in order. Writers batch what is queued at
    the same moment (a short answer's ResponseHead, Data and End; many streams' chunks), so each message,
    and its trip through both WebSocket stacks, carries more. A Batch never holds a Batch, Hello or Welcome.
    """

    frames: list[BatchedFrame]


Frame: TypeAlias = Hello | Welcome | BatchedFrame | Batch
"""Any frame."""

StreamFrame: TypeAlias = Open | ResponseHead | Data | End | Credit | Cancel | StreamError
"""Frames that belong to one stream (they have a ``stream_id``)."""
