"""The sans-IO connection state machine used by both ends of the tunnel.

Feed every received WebSocket message to :meth:`Connection.receive` and pass every frame you want to
send through :meth:`Connection.send`, then write the bytes it returns. The connection does no IO; it
validates ordering, direction, stream ids, limits and credit, and says what went wrong with a
ProtocolError (see ``errors``)::

    try:
        frame = conn.receive(message)
    except StreamProtocolError as exc:      # one stream broke a rule; it is already reset
        await ws.send_bytes(conn.send(exc.reply))
    except ConnectionProtocolError as exc:  # the connection is unusable; every stream has ended
        await ws.close(exc.close_code, exc.close_reason)
    else:
        if frame is not None:               # None: a late frame for a stream we reset, dropped
            dispatch(frame)

Stream ids: only the cloud opens streams, with odd, strictly increasing ids (even ids are reserved for
bridge-initiated streams in a later version). Frames arrive in order over one WebSocket, so e.g. a
Cancel the cloud sent before an Open always reaches the bridge first; both ends can therefore count
concurrent streams exactly.

Every frame this side sends goes through :meth:`Connection.send`, Credit and the replies to broken
streams included, so the bytes on the wire are always the frames the state machine recorded.

Credit: see :meth:`Connection.consumed` (receiving side) and :meth:`Connection.send_window` /
:meth:`Connection.wait_for_credit` (sending side). A receiver given ``max_recv_window`` grows the window of
a stream the window holds back (see ``window``); the round trip it needs is timed here, from a Ping this side
sends to the Pong that answers it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from cloudtolocalllm.protocol.checks import check_headers, check_request_line, check_status
from cloudtolocalllm.protocol.close import CloseCode
from cloudtolocalllm.protocol.codec import decode, encode, peek_version
from cloudtolocalllm.protocol.errors import (
    ConnectionProtocolError,
    ErrorCode,
    FrameDecodeError,
    LocalProtocolError,
    StreamClosedError,
    StreamProtocolError,
)
from cloudtolocalllm.protocol.frames import (
    DATA_FRAME_OVERHEAD,
    HANDSHAKE_MAX_FRAME_BYTES,
    MAX_FRAME_BYTES_LIMIT,
    MAX_STREAM_ID,
    MAX_STREAMS_LIMIT,
    MAX_WINDOW,
    MIN_FRAME_BYTES_LIMIT,
    Batch,
    BridgeStatus,
    Cancel,
    Credit,
    Data,
    End,
    Frame,
    GoAway,
    Hello,
    Limits,
    Open,
    Ping,
    Pong,
    Reauth,
    ReauthOk,
    ResponseHead,
    StreamError,
    Welcome,
)
from cloudtolocalllm.protocol.streams import Stream
from cloudtolocalllm.protocol.version import (
    BATCH,
    FEATURES,
    PROTOCOL_VERSION,
    check_compatible,
    is_compatible,
    mismatch_error,
)
from cloudtolocalllm.protocol.window import WindowTuner

__all__ = ["Connection", "Role"]

_Handler = Callable[[Any], bool]

CREDIT_STEP = 64 * 1024
"""Consumed bytes that earn a Credit even before half the window has been consumed. Bytes held back cost
the sender that much of its window each round trip (Data frames rarely divide half a window evenly: 256,000-byte
frames into 1 MiB left 280,576 held back each time), so on a long link the hold-back is kept small."""


class Role(StrEnum):
    """Which end of the tunnel a Connection represents."""

    CLOUD = "cloud"
    BRIDGE = "bridge"


_COMMON: frozenset[type[Any]] = frozenset({Ping, Pong, Data, End, Credit, Cancel, StreamError})
_SENT_BY: dict[Role, frozenset[type[Any]]] = {
    Role.BRIDGE: _COMMON | {Hello, Reauth, BridgeStatus, ResponseHead},
    Role.CLOUD: _COMMON | {Welcome, ReauthOk, GoAway, Open},
}
# Frames a side may send before the handshake has completed (GoAway: a draining cloud may refuse a
# bridge straight away instead of welcoming it).
_HANDSHAKE: dict[Role, frozenset[type[Any]]] = {
    Role.BRIDGE: frozenset({Hello}),
    Role.CLOUD: frozenset({Welcome, GoAway}),
}


def _limits_problem(limits: Limits) -> str | None:
    """Range-check Limits built in code (decoded ones were range-checked by msgspec already)."""
    if not MIN_FRAME_BYTES_LIMIT <= limits.max_frame_bytes <= MAX_FRAME_BYTES_LIMIT:
        return f"max_frame_bytes must be within {MIN_FRAME_BYTES_LIMIT}..{MAX_FRAME_BYTES_LIMIT}"
    if not 1 <= limits.initial_window <= MAX_WINDOW:
        return f"initial_window must be within 1..{MAX_WINDOW}"
    if not 1 <= limits.max_concurrent_streams <= MAX_STREAMS_LIMIT:
        return f"max_concurrent_streams must be within 1..{MAX_STREAMS_LIMIT}"
    return None


class Connection:
    """Protocol state of one tunnel WebSocket, from the point of view of ``role``."""

    def __init__(
        self,
        role: Role,
        *,
        max_recv_window: int = 0,
        recv_window_budget: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``max_recv_window``: the largest window this side grants one stream (0 or at most the initial
        window: windows never grow); ``recv_window_budget``: the most extra bytes all streams together may
        be granted beyond their initial windows (default: four times ``max_recv_window``); ``clock``: what
        round trips and window epochs are timed with (perf_counter: Windows' monotonic ticks every ~15.6 ms)."""
        self.role = role
        self._peer = Role.BRIDGE if role is Role.CLOUD else Role.CLOUD
        self._greeted = False  # Hello received (cloud) / sent (bridge)
        self._ready = False  # Welcome sent (cloud) / received (bridge)
        self._closed = False
        self._going_away = False
        self._reauth_pending = 0
        self._max_frame_bytes = HANDSHAKE_MAX_FRAME_BYTES
        self._limits: Limits | None = None
        self._window = 0
        self._streams: dict[int, Stream] = {}
        self._last_stream_id = 0
        # Streams this side reset (Cancel/StreamError sent): frames the peer sent before it saw the
        # reset are still in flight and are dropped silently. Bounded; oldest entries go first.
        self._reset: dict[int, None] = {}
        self._reset_cap = 256
        self._buffered = 0
        self._clock = clock
        self._tuner = WindowTuner(
            max_window=max_recv_window, budget=recv_window_budget or 4 * max_recv_window, clock=clock
        )
        self._offered: tuple[str, ...] = ()  # the features the bridge's Hello listed (bridge side)
        self.features: frozenset[str] = frozenset()
        """The protocol features the Welcome turned on (empty during the handshake)."""
        self._ping_out: tuple[int, float] | None = None  # (nonce, sent at) of the last Ping not yet answered
        self.peer_hello: Hello | None = None
        """The bridge's Hello (cloud side), once received."""
        self.welcome: Welcome | None = None
        """The Welcome sent (cloud side) or received (bridge side)."""
        self._recv: dict[type[Any], _Handler] = {
            t: h for t, h in self._all_recv_handlers().items() if t in _SENT_BY[self._peer]
        }
        self._send_handlers: dict[type[Any], _Handler] = {
            t: h for t, h in self._all_send_handlers().items() if t in _SENT_BY[role]
        }

    # --- introspection ------------------------------------------------------------------------------

    @property
    def limits(self) -> Limits | None:
        """The limits in force (from the Welcome), or None during the handshake."""
        return self._limits

    @property
    def is_ready(self) -> bool:
        """The handshake has completed; streams may open."""
        return self._ready

    @property
    def is_closed(self) -> bool:
        """The connection has ended (close() was called or a fatal error occurred)."""
        return self._closed

    @property
    def going_away(self) -> bool:
        """A GoAway was sent (cloud) or received (bridge): no new streams on this connection."""
        return self._going_away

    @property
    def max_frame_bytes(self) -> int:
        """Largest frame either side may send now."""
        return self._max_frame_bytes

    @property
    def max_data_payload(self) -> int:
        """Largest payload one Data frame may carry."""
        return self._max_frame_bytes - DATA_FRAME_OVERHEAD

    @property
    def stream_ids(self) -> tuple[int, ...]:
        """Ids of the streams open now."""
        return tuple(self._streams)

    @property
    def buffered_bytes(self) -> int:
        """Data bytes received on open streams that the application has not reported consumed.

        Never exceeds the windows granted: ``max_concurrent_streams * initial_window`` plus what auto-tuning
        added (at most ``recv_window_budget``). That is the memory bound credit buys.
        """
        return self._buffered

    @property
    def rtt_s(self) -> float:
        """The round-trip estimate receive-window growth uses: the shortest Ping -> Pong seen (seconds; 0
        until one was answered). Settable, to pretend a network in tests."""
        return self._tuner.rtt_s

    @rtt_s.setter
    def rtt_s(self, value: float) -> None:
        self._tuner.rtt_s = max(0.0, value)

    @property
    def awaiting_pong(self) -> bool:
        """A Ping this side sent has not been answered yet."""
        return self._ping_out is not None

    def recv_window(self, stream_id: int) -> int:
        """This side's current receive window for ``stream_id`` (0 when the stream is not open)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.recv_window

    @property
    def next_stream_id(self) -> int:
        """The id the cloud should use for its next Open."""
        if self.role is not Role.CLOUD:
            raise LocalProtocolError("only the cloud opens streams")
        return 1 if self._last_stream_id == 0 else self._last_stream_id + 2

    # --- receiving ----------------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> Frame | None:
        """Decode and validate one received WebSocket message.

        Returns the frame for the application to act on, or None when the frame is a harmless late
        arrival that was dropped (e.g. Data for a stream this side has already cancelled). A Batch (only
        once the Welcome turned the feature on) is returned as it is: the caller hands each of its frames to
        :meth:`receive_frame`, in order.
        Raises StreamProtocolError or ConnectionProtocolError (then the connection is closed).
        """
        self._check_open_for_receive()
        try:
            frame = decode(data, max_frame_bytes=self._max_frame_bytes)
            if type(frame) is Batch:
                if BATCH not in self.features:
                    raise self._fatal("a Batch frame, but the Welcome did not turn the batch feature on")
                return frame  # the caller passes each of its frames to receive_frame()
        except FrameDecodeError:
            if self._awaiting_greeting():
                # A peer of another protocol version may fail to decode: say "upgrade", not "garbage".
                version = peek_version(data)
                if version is not None and not is_compatible(version):
                    self._fail()
                    raise mismatch_error(version, peer=self._peer.value) from None
            self._fail()
            raise
        except ConnectionProtocolError:
            self._fail()
            raise
        return self.receive_frame(frame)

    def receive_frame(self, frame: Frame) -> Frame | None:
        """Validate an already-decoded frame (as returned by decode()); see :meth:`receive`."""
        self._check_open_for_receive()
        try:
            handler = self._recv.get(type(frame))
            if handler is None:
                raise self._fatal(f"{type(frame).__name__} frames are not sent by the {self._peer}")
            if not self._ready and type(frame) not in _HANDSHAKE[self._peer]:
                raise self._fatal(self._handshake_complaint(frame))
            deliver = handler(frame)
        except ConnectionProtocolError:
            self._fail()
            raise
        return frame if deliver else None

    def _awaiting_greeting(self) -> bool:
        return not self._greeted if self.role is Role.CLOUD else not self._ready

    def _handshake_complaint(self, frame: Frame) -> str:
        name = type(frame).__name__
        if self.role is Role.CLOUD and not self._greeted:
            return f"expected Hello as the first frame, got {name}"
        if self.role is Role.CLOUD:
            return f"{name} frame before the Welcome was sent"
        return f"expected Welcome as the first frame, got {name}"

    def _check_open_for_receive(self) -> None:
        if self._closed:
            raise ConnectionProtocolError("the connection is closed")

    def _fatal(self, reason: str, code: ErrorCode = ErrorCode.PROTOCOL) -> ConnectionProtocolError:
        return ConnectionProtocolError(reason, code=code, close_code=CloseCode.PROTOCOL_VIOLATION)

    def _fail(self) -> None:
        if not self._closed:
            self.close(code=ErrorCode.PROTOCOL, reason="connection failed")

    def _was_opened(self, stream_id: int) -> bool:
        return stream_id % 2 == 1 and 0 < stream_id <= self._last_stream_id

    def _recv_stream(self, stream_id: int, kind: str) -> Stream | None:
        """The live stream a body frame refers to, None to drop the frame, or a raised error."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if stream_id in self._reset:
            return None
        if not self._was_opened(stream_id):
            raise self._fatal(f"{kind} for stream {stream_id}, which was never opened")
        reason = f"{kind} for stream {stream_id}, which is closed"
        raise self._stream_violation(stream_id, ErrorCode.PROTOCOL, reason)

    def _stream_violation(self, stream_id: int, code: ErrorCode, reason: str) -> StreamProtocolError:
        """Reset ``stream_id`` and build the error whose ``reply`` tells the peer why."""
        self._drop_stream(stream_id, code, reason)
        self._remember_reset(stream_id)
        reply = StreamError(stream_id, code.value, reason)
        return StreamProtocolError(reason, stream_id=stream_id, code=code, reply=reply)

    def _all_recv_handlers(self) -> dict[type[Any], _Handler]:
        return {
            Hello: self._recv_hello,
            Welcome: self._recv_welcome,
            Ping: _deliver,
            Pong: self._recv_pong,
            Reauth: _deliver,
            ReauthOk: self._recv_reauth_ok,
            BridgeStatus: _deliver,
            GoAway: self._recv_go_away,
            Open: self._recv_open,
            ResponseHead: self._recv_response_head,
            Data: self._recv_data,
            End: self._recv_end,
            Credit: self._recv_credit,
            Cancel: self._recv_reset,
            StreamError: self._recv_reset,
        }

    def _recv_hello(self, frame: Hello) -> bool:
        if self._greeted:
            raise self._fatal("duplicate Hello")
        check_compatible(frame.version, peer="bridge")
        self._greeted = True
        self.peer_hello = frame
        return True

    def _recv_welcome(self, frame: Welcome) -> bool:
        if self._ready:
            raise self._fatal("duplicate Welcome")
        check_compatible(frame.version, peer="cloud")
        problem = _limits_problem(frame.limits)
        if problem is not None:
            raise self._fatal(f"Welcome limits: {problem}")
        if unknown := set(frame.features) - set(self._offered):
            raise self._fatal(f"Welcome turns on features the Hello did not offer: {sorted(unknown)}")
        self._adopt(frame)
        return True

    def _recv_reauth_ok(self, frame: ReauthOk) -> bool:
        if self._reauth_pending == 0:
            raise self._fatal("ReauthOk without a pending Reauth")
        self._reauth_pending -= 1
        return True

    def _recv_pong(self, frame: Pong) -> bool:
        if self._ping_out is not None and self._ping_out[0] == frame.nonce:
            self._tuner.measured(self._clock() - self._ping_out[1])
            self._ping_out = None
        return True

    def _recv_go_away(self, frame: GoAway) -> bool:
        self._going_away = True
        return True

    def _recv_open(self, frame: Open) -> bool:
        sid = frame.stream_id
        if self._going_away:
            raise self._fatal(f"Open for stream {sid} after GoAway")
        if sid in self._streams:
            raise self._fatal(f"Open for stream {sid}, which is already open")
        if sid % 2 == 0:
            raise self._fatal(f"Open with even stream id {sid}; the cloud opens odd ids")
        if sid <= self._last_stream_id:
            raise self._fatal(f"Open with stream id {sid}, not above the previous {self._last_stream_id}")
        self._last_stream_id = sid
        problem = check_request_line(frame.method, frame.path, frame.query) or check_headers(frame.headers)
        if problem is not None:
            raise self._stream_violation(sid, ErrorCode.PROTOCOL, f"Open for stream {sid}: {problem}")
        assert self._limits is not None  # Open is refused before the handshake completes
        if len(self._streams) >= self._limits.max_concurrent_streams:
            reason = f"too many concurrent streams (limit {self._limits.max_concurrent_streams})"
            raise self._stream_violation(sid, ErrorCode.REFUSED, reason)
        self._open_stream(Stream(sid, window=self._window, send_open=True, recv_open=frame.has_body))
        return True

    def _recv_response_head(self, frame: ResponseHead) -> bool:
        sid = frame.stream_id
        stream = self._recv_stream(sid, "ResponseHead")
        if stream is None:
            return False
        if not stream.head_pending:
            raise self._stream_violation(sid, ErrorCode.PROTOCOL, f"second ResponseHead on stream {sid}")
        problem = check_status(frame.status) or check_headers(frame.headers)
        if problem is not None:
            raise self._stream_violation(sid, ErrorCode.PROTOCOL, f"ResponseHead on stream {sid}: {problem}")
        stream.head_pending = False
        return True

    def _check_recv_body(self, stream: Stream, kind: str) -> None:
        sid = stream.stream_id
        if not stream.recv_open:
            reason = f"{kind} after the end of the body on stream {sid}"
            raise self._stream_violation(sid, ErrorCode.PROTOCOL, reason)
        if self.role is Role.CLOUD and stream.head_pending:
            reason = f"{kind} before ResponseHead on stream {sid}"
            raise self._stream_violation(sid, ErrorCode.PROTOCOL, reason)

    def _recv_data(self, frame: Data) -> bool:
        stream = self._recv_stream(frame.stream_id, "Data")
        if stream is None:
            return False
        self._check_recv_body(stream, "Data")
        n = len(frame.payload)
        if n > stream.recv_credit:
            credit = stream.recv_credit
            reason = f"{n} bytes of Data on stream {stream.stream_id} exceed its credit of {credit}"
            raise self._stream_violation(stream.stream_id, ErrorCode.FLOW_CONTROL, reason)
        stream.recv_credit -= n
        stream.recv_buffered += n
        self._buffered += n
        return True

    def _recv_end(self, frame: End) -> bool:
        stream = self._recv_stream(frame.stream_id, "End")
        if stream is None:
            return False
        self._check_recv_body(stream, "End")
        stream.recv_open = False
        self._release_growth_if_drained(stream)
        self._finish_if_done(stream)
        return True

    def _recv_credit(self, frame: Credit) -> bool:
        sid = frame.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            if not self._was_opened(sid):
                raise self._fatal(f"Credit for stream {sid}, which was never opened")
            return False  # credit for a stream that just ended: harmless, nothing to do
        if frame.increment == 0:
            raise self._stream_violation(sid, ErrorCode.PROTOCOL, f"Credit of 0 bytes on stream {sid}")
        if stream.send_credit + frame.increment > MAX_WINDOW:
            reason = f"Credit on stream {sid} overflows the window beyond {MAX_WINDOW}"
            raise self._stream_violation(sid, ErrorCode.FLOW_CONTROL, reason)
        stream.grant(frame.increment)
        return True

    def _recv_reset(self, frame: Cancel | StreamError) -> bool:
        sid = frame.stream_id
        if sid not in self._streams:
            if not self._was_opened(sid):
                raise self._fatal(f"{type(frame).__name__} for stream {sid}, which was never opened")
            return False  # never answer a reset, and a reset of an ended stream changes nothing
        if isinstance(frame, Cancel):
            self._drop_stream(sid, ErrorCode.CANCELLED, frame.reason or "cancelled by the peer")
        else:
            self._drop_stream(sid, frame.error_code, frame.message)
        return True

    # --- sending ------------------------------------------------------------------------------------

    def send(self, frame: Frame) -> bytes:
        """Validate ``frame`` as the next frame this side sends, record it, and return its bytes.

        Raises LocalProtocolError (StreamClosedError for a stream that has ended) and then nothing was
        recorded: the frame must not be sent. A Credit must be one :meth:`consumed` returned (the grant is
        recorded there, when the bytes are consumed); a StreamProtocolError's ``reply`` is sent here too.
        """
        if self._closed:
            raise LocalProtocolError("the connection is closed")
        kind = type(frame)
        handler = self._send_handlers.get(kind)
        if handler is None:
            raise LocalProtocolError(f"{kind.__name__} frames are not sent by the {self.role}")
        if not self._ready and kind not in _HANDSHAKE[self.role]:
            raise LocalProtocolError(f"cannot send {kind.__name__} before the handshake has completed")
        data = encode(frame)
        if len(data) > self._max_frame_bytes:
            raise LocalProtocolError(
                f"{kind.__name__} frame of {len(data)} bytes exceeds max_frame_bytes={self._max_frame_bytes}",
                code=ErrorCode.TOO_LARGE,
            )
        handler(frame)
        return data

    def send_window(self, stream_id: int) -> int:
        """Bytes of Data this side may send on ``stream_id`` now (its credit; 0 when exhausted).

        One Data frame carries at most :attr:`max_data_payload` of them.
        """
        return self._send_stream(stream_id, "Data").send_credit

    async def wait_for_credit(self, stream_id: int) -> int:
        """Wait until Data may be sent on ``stream_id``; return how many bytes fit in the next frame.

        Raises StreamClosedError if the stream ends while waiting (peer cancel, connection closed). The
        only asyncio in this module: a lazily created per-stream Event that Credit frames set.
        """
        stream = self._send_stream(stream_id, "Data")
        while True:
            if stream.closed:
                raise StreamClosedError(
                    f"stream {stream_id} ended: {stream.close_reason}",
                    code=stream.close_code,
                    stream_id=stream_id,
                )
            if not stream.send_open:
                reason = f"stream {stream_id}: this side already sent End"
                raise LocalProtocolError(reason, stream_id=stream_id)
            if stream.send_credit > 0:
                return min(stream.send_credit, self.max_data_payload)
            await stream.credit_event().wait()

    def consumed(self, stream_id: int, n: int) -> Credit | None:
        """Report that the application has processed ``n`` received body bytes of ``stream_id``.

        Returns a Credit frame to pass to :meth:`send` once half of the stream's window or ``CREDIT_STEP``
        bytes, whichever is less, have been consumed since the last grant, so the peer never stalls while
        memory per stream stays within one window (which may have grown: the Credit then also carries the
        growth). The grant is recorded here already. Returns None when there is nothing to grant.
        """
        if n < 0:
            raise LocalProtocolError(f"consumed a negative number of bytes ({n})", stream_id=stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            return None  # the stream ended; its bytes no longer count and the peer sends no more
        if n > stream.recv_buffered:
            raise LocalProtocolError(
                f"consumed {n} bytes on stream {stream_id} but only {stream.recv_buffered} are unconsumed",
                stream_id=stream_id,
            )
        stream.recv_buffered -= n
        self._buffered -= n
        if not stream.recv_open:
            self._release_growth_if_drained(stream)
            return None  # the peer's body is complete: no more credit needed
        stream.recv_unreturned += n
        if stream.recv_unreturned < min(max(1, stream.recv_window // 2), CREDIT_STEP):
            return None
        increment = stream.recv_unreturned + self._tuner.extra_credit(stream, stream.recv_unreturned)
        stream.recv_unreturned = 0
        stream.recv_credit += increment
        stream.credit_unsent += increment
        return Credit(stream_id, increment)

    def close(self, *, code: ErrorCode = ErrorCode.CANCELLED, reason: str = "connection closed") -> list[int]:
        """End the connection: every open stream ends with ``code``, waiters wake. Returns their ids.

        Call it when the WebSocket closes for any reason, then fail each returned stream (e.g. answer
        502 to its HTTP client). Idempotent.
        """
        self._closed = True
        ended = list(self._streams)
        for stream in self._streams.values():
            stream.close(code, reason)
        self._streams.clear()
        self._buffered = 0
        return ended

    def _send_stream(self, stream_id: int, kind: str) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if self._was_opened(stream_id):
            raise StreamClosedError(
                f"{kind} on stream {stream_id}, which has ended",
                code=ErrorCode.CANCELLED,
                stream_id=stream_id,
            )
        raise LocalProtocolError(f"{kind} on stream {stream_id}, which was never opened", stream_id=stream_id)

    def _all_send_handlers(self) -> dict[type[Any], _Handler]:
        return {
            Hello: self._send_hello,
            Welcome: self._send_welcome,
            Ping: self._send_ping,
            Pong: _deliver,
            Reauth: self._send_reauth,
            ReauthOk: _deliver,
            BridgeStatus: _deliver,
            GoAway: self._send_go_away,
            Open: self._send_open,
            ResponseHead: self._send_response_head,
            Data: self._send_data,
            End: self._send_end,
            Credit: self._send_credit,
            Cancel: self._send_reset,
            StreamError: self._send_reset,
        }

    def _send_ping(self, frame: Ping) -> bool:
        self._ping_out = (frame.nonce, self._clock())  # a newer Ping replaces one never answered
        return True

    def _send_hello(self, frame: Hello) -> bool:
        if self._greeted:
            raise LocalProtocolError("Hello was already sent")
        if frame.version != PROTOCOL_VERSION:
            raise LocalProtocolError(f"Hello must carry version {PROTOCOL_VERSION}")
        self._offered = tuple(frame.features)
        self._greeted = True
        return True

    def _send_welcome(self, frame: Welcome) -> bool:
        if not self._greeted:
            raise LocalProtocolError("cannot send Welcome before receiving Hello")
        if self._ready:
            raise LocalProtocolError("Welcome was already sent")
        if frame.version != PROTOCOL_VERSION:
            raise LocalProtocolError(f"Welcome must carry version {PROTOCOL_VERSION}")
        problem = _limits_problem(frame.limits)
        if problem is not None:
            raise LocalProtocolError(f"Welcome limits: {problem}")
        offered = self.peer_hello.features if self.peer_hello is not None else []
        if unknown := set(frame.features) - (set(offered) & set(FEATURES)):
            raise LocalProtocolError(f"Welcome turns on features not both offered and known: {sorted(unknown)}")
        self._adopt(frame)
        return True

    def _send_reauth(self, frame: Reauth) -> bool:
        self._reauth_pending += 1
        return True

    def _send_go_away(self, frame: GoAway) -> bool:
        self._going_away = True
        return True

    def _send_open(self, frame: Open) -> bool:
        sid = frame.stream_id
        if self._going_away:
            raise LocalProtocolError("cannot open streams after GoAway", code=ErrorCode.REFUSED)
        if sid % 2 == 0 or sid <= self._last_stream_id or sid > MAX_STREAM_ID:
            raise LocalProtocolError(f"stream id {sid} is not valid here; use next_stream_id", stream_id=sid)
        problem = check_request_line(frame.method, frame.path, frame.query) or check_headers(frame.headers)
        if problem is not None:
            raise LocalProtocolError(f"Open: {problem}", stream_id=sid)
        assert self._limits is not None  # sending Open before the handshake is refused in send()
        if len(self._streams) >= self._limits.max_concurrent_streams:
            raise LocalProtocolError(
                f"too many concurrent streams (limit {self._limits.max_concurrent_streams})",
                code=ErrorCode.REFUSED,
                stream_id=sid,
            )
        self._last_stream_id = sid
        self._open_stream(Stream(sid, window=self._window, send_open=frame.has_body, recv_open=True))
        return True

    def _send_response_head(self, frame: ResponseHead) -> bool:
        sid = frame.stream_id
        stream = self._send_stream(sid, "ResponseHead")
        if not stream.head_pending:
            raise LocalProtocolError(f"ResponseHead was already sent on stream {sid}", stream_id=sid)
        problem = check_status(frame.status) or check_headers(frame.headers)
        if problem is not None:
            raise LocalProtocolError(f"ResponseHead: {problem}", stream_id=sid)
        stream.head_pending = False
        return True

    def _check_send_body(self, stream: Stream, kind: str) -> None:
        sid = stream.stream_id
        if not stream.send_open:
            raise LocalProtocolError(f"{kind} after the end of the body on stream {sid}", stream_id=sid)
        if self.role is Role.BRIDGE and stream.head_pending:
            raise LocalProtocolError(f"{kind} before ResponseHead on stream {sid}", stream_id=sid)

    def _send_data(self, frame: Data) -> bool:
        stream = self._send_stream(frame.stream_id, "Data")
        self._check_send_body(stream, "Data")
        n = len(frame.payload)
        if n > stream.send_credit:
            raise LocalProtocolError(
                f"{n} bytes of Data on stream {stream.stream_id} exceed the credit of {stream.send_credit}",
                code=ErrorCode.FLOW_CONTROL,
                stream_id=stream.stream_id,
            )
        stream.spend(n)
        return True

    def _send_end(self, frame: End) -> bool:
        stream = self._send_stream(frame.stream_id, "End")
        self._check_send_body(stream, "End")
        stream.send_open = False
        self._finish_if_done(stream)
        return True

    def _send_credit(self, frame: Credit) -> bool:
        sid = frame.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            if not self._was_opened(sid):
                raise LocalProtocolError(f"Credit for stream {sid}, which was never opened", stream_id=sid)
            return True  # granted before the stream ended: harmless, the peer ignores it
        if not 0 < frame.increment <= stream.credit_unsent:
            # The grant is recorded by consumed(); a Credit made up by hand would let the peer overrun.
            raise LocalProtocolError(
                f"Credit of {frame.increment} bytes on stream {sid} was not granted by consumed()", stream_id=sid
            )
        stream.credit_unsent -= frame.increment
        return True

    def _send_reset(self, frame: Cancel | StreamError) -> bool:
        sid = frame.stream_id
        if sid not in self._streams:
            if not self._was_opened(sid):
                raise LocalProtocolError(f"{type(frame).__name__} for stream {sid}, which was never opened")
            return True  # resetting an ended stream is harmless; the peer ignores it
        if isinstance(frame, Cancel):
            self._drop_stream(sid, ErrorCode.CANCELLED, frame.reason or "cancelled")
        else:
            self._drop_stream(sid, frame.error_code, frame.message)
        self._remember_reset(sid)
        return True

    # --- shared bookkeeping -------------------------------------------------------------------------

    def _adopt(self, welcome: Welcome) -> None:
        """The Welcome's limits are in force from the moment it is sent or received."""
        limits = welcome.limits
        self.welcome = welcome
        self.features = frozenset(welcome.features)  # read for every Batch received: built once
        self._limits = limits
        self._max_frame_bytes = limits.max_frame_bytes
        self._window = limits.initial_window
        self._reset_cap = max(256, 4 * limits.max_concurrent_streams)
        self._ready = True

    def _finish_if_done(self, stream: Stream) -> None:
        if not stream.send_open and not stream.recv_open:
            self._drop_stream(stream.stream_id, ErrorCode.CANCELLED, "stream finished")

    def _release_growth_if_drained(self, stream: Stream) -> None:
        """A body that ended and was consumed needs no window: what it grew goes back to the budget now, not
        when the whole exchange ends (a long answer after a big prompt would hold it for minutes)."""
        if stream.recv_buffered == 0:
            self._tuner.release(stream, self._window)

    def _open_stream(self, stream: Stream) -> None:
        self._streams[stream.stream_id] = stream
        self._tuner.start(stream)

    def _drop_stream(self, stream_id: int, code: ErrorCode, reason: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._buffered -= stream.recv_buffered
            self._tuner.release(stream, self._window)
            stream.close(code, reason)

    def _remember_reset(self, stream_id: int) -> None:
        self._reset[stream_id] = None
        if len(self._reset) > self._reset_cap:
            del self._reset[next(iter(self._reset))]


def _deliver(frame: Frame) -> bool:
    """Handler for frames that need no bookkeeping: hand them to the application."""
    return True
