"""The async shell around the sans-IO :class:`~cloudtolocalllm.protocol.Connection`, for both ends.

A :class:`Tunnel` runs one WebSocket after its handshake (``handshake``). The caller's task is the
*reader*: :meth:`Tunnel.run` feeds every message to ``Connection.receive`` and never awaits the network
for sending, so it can always answer a Ping and take Credit while the write side is backed up. Every frame
goes out through ``Connection.send`` and the one :class:`~cloudtolocalllm.protocol.tunnel.writer.Writer`.

The runtime handles what both ends share:

- Ping is answered with Pong; Pong refreshes ``last_pong``; Credit was already applied by the Connection;
- Data, End and ResponseHead go to the :class:`TunnelStream` the application registered; Data for a
  stream the application has let go is consumed at once, so its credit returns to the peer;
- Cancel and StreamError fail the stream, as does a frame that broke a rule (its reply is sent);
- the heartbeat: a Ping every ``interval_s`` (if set) and the ``on_silence`` callback once nothing at
  all arrived for ``dead_after_s`` (half-open TCP). Both are loop timers, not tasks: an idle connection
  costs two TimerHandles.

Everything else (Open, BridgeStatus, Reauth, ReauthOk, GoAway) and every reset goes to ``on_frame``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cloudtolocalllm.protocol import (
    BATCH,
    Batch,
    Cancel,
    Connection,
    ConnectionProtocolError,
    Data,
    End,
    ErrorCode,
    Frame,
    LocalProtocolError,
    Open,
    Ping,
    Pong,
    ProtocolError,
    ResponseHead,
    StreamError,
    StreamProtocolError,
)
from cloudtolocalllm.protocol.tunnel.stream import TunnelStream
from cloudtolocalllm.protocol.tunnel.transport import MessageTransport, TransportClosed
from cloudtolocalllm.protocol.tunnel.writer import DEFAULT_HIGH_WATER, Writer

__all__ = ["Heartbeat", "Tunnel"]

logger = logging.getLogger(__name__)

OnFrame = Callable[[Frame], Awaitable[None] | None]
_CONTROL_ONLY = (Cancel, StreamError, Open, ResponseHead)
_FLUSH_S = 1.0
_RECENT_S = 5.0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """How a side watches its connection."""

    dead_after_s: float
    """Silence (nothing at all received) this long means the connection is dead."""
    interval_s: float | None = None
    """Send a Ping this often (None: only the peer pings)."""
    ping_back: bool = False
    """Answer each Ping with a Ping of our own too (when none is outstanding), so the Connection can time
    the round trip its receive windows grow with, without pinging on its own schedule."""


class Tunnel:
    """One tunnel connection's runtime: reader, writer, streams and heartbeat."""

    __slots__ = (
        "_closing",
        "_keep_writer",
        "_last_stream_at",
        "_on_closed",
        "_on_frame",
        "_on_protocol_error",
        "_on_silence",
        "_ping_nonce",
        "_timer",
        "_writer",
        "conn",
        "heartbeat",
        "last_pong",
        "last_received",
        "lost_reason",
        "protocol_error",
        "streams",
        "transport",
    )

    def __init__(
        self,
        transport: MessageTransport,
        conn: Connection,
        *,
        heartbeat: Heartbeat,
        on_frame: OnFrame | None = None,
        on_silence: Callable[[float], Awaitable[None] | None] | None = None,
        on_protocol_error: Callable[[ConnectionProtocolError], Awaitable[None] | None] | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        lost_reason: str = "connection closed",
        keep_writer: bool = False,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        """``lost_reason``: what streams end with when the connection closes under them (e.g. "bridge
        disconnected", which the cloud's clients read). ``keep_writer``: the writing task lives as long as
        the connection (the bridge: one connection); otherwise it waits for more only while streams are
        open or one ended less than ``_RECENT_S`` ago, so an idle connection (api-backend holds one per
        bridge) holds no task, and one request after another does not start a task each. ``on_closed``:
        called once :meth:`run` has ended everything."""
        self.transport = transport
        self.lost_reason = lost_reason
        self.conn = conn
        self.heartbeat = heartbeat
        self.streams: dict[int, TunnelStream] = {}
        """Streams the application holds; the runtime delivers their inbound frames."""
        limits = conn.limits
        self._writer = Writer(
            transport,
            high_water=high_water,
            on_lost=self._on_lost,
            keep_alive=self._busy,
            # Batches once the Welcome turned the feature on, each within the frame size both sides obey.
            batch_bytes=limits.max_frame_bytes if limits is not None and BATCH in conn.features else 0,
        )
        self._keep_writer = keep_writer
        self._on_closed = on_closed
        self._last_stream_at = 0.0
        self._on_frame = on_frame
        self._on_silence = on_silence
        self._on_protocol_error = on_protocol_error
        self.last_received = time.monotonic()
        self.last_pong = time.time()
        self._ping_nonce = 0
        self._timer: asyncio.TimerHandle | None = None  # the heartbeat's one timer
        self._closing: set[asyncio.Task[None]] | None = None  # an on_silence close in progress
        self.protocol_error: ConnectionProtocolError | None = None
        """The peer's fatal protocol error that ended the connection, if one did."""

    # --- sending ------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return not self.conn.is_closed and not self._writer.closed

    def send(self, frame: Frame) -> None:
        """Send a frame that never waits (control frames; Open/ResponseHead/resets keep their stream's order).

        Raises LocalProtocolError when the protocol forbids it (nothing is sent then).
        """
        self._writer.put_control(self.conn.send(frame), getattr(frame, "stream_id", 0))

    async def send_stream_frame(self, frame: Frame, stream_id: int) -> None:
        """Send a frame of a stream: body frames wait for room in the queue; raises StreamClosedError,
        LocalProtocolError, or TransportClosed once the connection is gone."""
        if isinstance(frame, _CONTROL_ONLY):
            self.send(frame)
            return
        await self._writer.wait_for_room()
        self._writer.put_body(self.conn.send(frame), stream_id)

    def consumed(self, stream_id: int, n: int) -> None:
        """Report ``n`` inbound bytes of ``stream_id`` consumed; sends Credit when the protocol says so."""
        credit = self.conn.consumed(stream_id, n)
        if credit is not None and self.is_open:
            self.send(credit)

    # --- streams ------------------------------------------------------------------------------------

    def open_stream(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], has_body: bool
    ) -> TunnelStream:
        """Cloud side: send an Open and return its stream (raises LocalProtocolError when refused)."""
        stream_id = self.conn.next_stream_id
        self.send(Open(stream_id, method, path, query, headers, has_body))
        stream = self.streams[stream_id] = TunnelStream(self, stream_id)
        return stream

    def accept_stream(self, stream_id: int) -> TunnelStream:
        """Bridge side: take the stream an Open started. Call it from ``on_frame`` (before the reader goes on):
        the stream's Data may be the very next message."""
        stream = self.streams[stream_id] = TunnelStream(self, stream_id)
        return stream

    def release(self, stream: TunnelStream) -> bool:
        """The application is done with ``stream``; inbound bytes that still come are credited back.
        False if it was already released."""
        self._last_stream_at = time.monotonic()
        return self.streams.pop(stream.stream_id, None) is not None

    def reset_stream(self, stream: TunnelStream, frame: Cancel | StreamError) -> None:
        """Reset ``stream`` towards the peer if it is still open there, and release it."""
        self.release(stream)
        if self.is_open and stream.stream_id in self.conn.stream_ids:
            with contextlib.suppress(LocalProtocolError):
                self.send(frame)

    def _busy(self) -> bool:
        if self._keep_writer or self.streams:
            return True
        return time.monotonic() - self._last_stream_at < _RECENT_S

    # --- the reader ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and dispatch until the connection closes; heartbeat timers run alongside."""
        self._arm_heartbeat()
        try:
            while True:
                try:
                    message = await self.transport.receive()
                except TransportClosed:
                    return
                self.last_received = time.monotonic()
                if isinstance(message, str):
                    await self._fatal(ConnectionProtocolError("text messages are not part of the protocol"))
                    return
                try:
                    frame = self.conn.receive(message)
                except ProtocolError as exc:
                    if not await self._refused(exc):
                        return
                    continue
                if type(frame) is Batch:
                    if not await self._receive_batch(frame):
                        return
                elif frame is not None:
                    await self._dispatch(frame)
        finally:
            await self.aclose()
            if self._on_closed is not None:
                self._on_closed()

    async def _receive_batch(self, batch: Batch) -> bool:
        """Each of a Batch's frames, in order, as if it had arrived alone; False once one ended the connection."""
        for inner in batch.frames:
            try:
                frame = self.conn.receive_frame(inner)
            except ProtocolError as exc:
                if not await self._refused(exc):
                    return False
                continue
            if frame is not None:
                await self._dispatch(frame)
        return True

    async def _refused(self, exc: ProtocolError) -> bool:
        """A received frame broke a rule: reset its stream (True: read on) or end the connection (False)."""
        if isinstance(exc, StreamProtocolError):
            logger.warning(
                "stream reset: the peer broke a protocol rule",
                extra={"stream_id": exc.stream_id, "code": exc.code.value, "reason": exc.reason},
            )
            self._fail_stream(exc.stream_id, exc.code, exc.reason)
            self.send(exc.reply)
            await self._deliver(exc.reply)  # the application hears of the reset like of a peer's
            return True
        if not isinstance(exc, ConnectionProtocolError):
            raise exc
        await self._fatal(exc)
        return False

    async def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, Data):
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                stream._on_data(frame.payload)
            else:  # the application let the stream go: keep the peer's window open until it hears so
                self.consumed(frame.stream_id, len(frame.payload))
            return
        if isinstance(frame, End):
            if (stream := self.streams.get(frame.stream_id)) is not None:
                stream._on_end()
            return
        if isinstance(frame, ResponseHead):
            if (stream := self.streams.get(frame.stream_id)) is not None:
                stream._on_head(frame)
            return
        if isinstance(frame, Ping):
            self.send(Pong(frame.nonce))
            if self.heartbeat.ping_back:
                self.probe_rtt()
            return
        if isinstance(frame, Pong):
            self.last_pong = time.time()  # (the Connection timed the round trip windows grow with)
            return
        if isinstance(frame, Cancel | StreamError):
            if isinstance(frame, StreamError):
                self._fail_stream(frame.stream_id, frame.error_code, frame.message)
            else:
                self._fail_stream(frame.stream_id, ErrorCode.CANCELLED, frame.reason or "cancelled by the peer")
        await self._deliver(frame)  # Credit needs nothing more: the Connection added it to the window

    async def _deliver(self, frame: Frame) -> None:
        if self._on_frame is not None:
            result = self._on_frame(frame)
            if result is not None:
                await result

    def _fail_stream(self, stream_id: int, code: ErrorCode, message: str) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.fail(code, message)

    def probe_rtt(self) -> None:
        """Ping the peer so the Connection times a round trip (one probe at a time)."""
        if self.is_open and not self.conn.awaiting_pong:
            self.send(Ping(int.from_bytes(os.urandom(4), "big")))

    # --- heartbeat ----------------------------------------------------------------------------------

    def _arm_heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        if self.heartbeat.interval_s is not None:  # one timer pings and watches (an idle bridge costs one)
            self._timer = loop.call_later(0, self._on_ping_timer)  # the first Ping times the round trip
        else:
            self._timer = loop.call_later(self.heartbeat.dead_after_s, self._on_silence_timer)

    def _on_ping_timer(self) -> None:
        if not self.is_open or self.heartbeat.interval_s is None:
            return
        silent = time.monotonic() - self.last_received
        if silent > self.heartbeat.dead_after_s:
            self._silence(silent)
            return
        self._ping_nonce += 1
        with contextlib.suppress(LocalProtocolError):
            self.send(Ping(self._ping_nonce))
        self._timer = asyncio.get_running_loop().call_later(self.heartbeat.interval_s, self._on_ping_timer)

    def _on_silence_timer(self) -> None:
        if not self.is_open:
            return
        silent = time.monotonic() - self.last_received
        if silent < self.heartbeat.dead_after_s:
            delay = self.heartbeat.dead_after_s - silent
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_silence_timer)
            return
        self._silence(silent)

    def _silence(self, silent: float) -> None:
        if self._on_silence is None:
            self.transport.abort()
            return
        result = self._on_silence(silent)
        if result is not None:
            self._spawn(result)

    def _spawn(self, awaitable: Awaitable[None]) -> None:
        async def _run() -> None:
            await awaitable

        task = asyncio.get_running_loop().create_task(_run())
        if self._closing is None:
            self._closing = set()
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # --- the end ------------------------------------------------------------------------------------

    def _on_lost(self) -> None:
        """A write failed: the socket is gone. End every stream now instead of waiting for the reader."""
        self.shutdown(ErrorCode.CANCELLED, self.lost_reason)

    async def _fatal(self, exc: ConnectionProtocolError) -> None:
        self.protocol_error = exc
        if self._on_protocol_error is not None:
            result = self._on_protocol_error(exc)
            if result is not None:
                await result
        await self.close(exc.close_code, exc.close_reason)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Write what is queued (a GoAway, a last Credit; at most ``_FLUSH_S``), end every stream and close
        the WebSocket with ``code``; idempotent."""
        await self._writer.flush(_FLUSH_S)
        self.shutdown(ErrorCode.CANCELLED, reason or self.lost_reason)
        await self.transport.close(code, reason)

    def shutdown(self, code: ErrorCode, reason: str) -> None:
        """End the protocol state and every stream now (the socket is gone or going); idempotent."""
        self.conn.close(code=code, reason=reason)
        self._writer.close()
        for stream in list(self.streams.values()):
            stream.fail(code, reason)
        self.streams.clear()

    async def aclose(self) -> None:
        """Stop the timers and the writer and end every stream (``run`` does this when it returns)."""
        if self._timer is not None:
            self._timer.cancel()
        self.shutdown(ErrorCode.CANCELLED, self.lost_reason)
        await self._writer.aclose()
        tasks = list(self._closing or ())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
