"""One connected bridge: its WebSocket, protocol state, heartbeats, reauth deadline and open streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from cloudtolocalllm.bridge_api.keys.scopes import BRIDGE, key_id_of, missing_scope
from cloudtolocalllm.bridge_api.stream import RelayStream
from cloudtolocalllm.core.auth import AuthError, Verifier
from cloudtolocalllm.core.protocol import (
    BridgeStatus,
    Cancel,
    CloseCode,
    Connection,
    ConnectionProtocolError,
    Data,
    End,
    ErrorCode,
    Frame,
    GoAway,
    Hello,
    LocalProtocolError,
    Open,
    Ping,
    Pong,
    Reauth,
    ReauthOk,
    ResponseHead,
    StreamError,
    StreamProtocolError,
    close_reason,
)

if TYPE_CHECKING:
    from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
    from cloudtolocalllm.bridge_api.settings import ApiSettings

__all__ = ["BridgeSession", "normalize_model"]

log = logging.getLogger(__name__)


def normalize_model(name: str) -> str:
    """Ollama treats ``llama3`` and ``llama3:latest`` as one model."""
    return name if ":" in name else f"{name}:latest"


class BridgeSession:
    """Lives as long as the bridge's WebSocket; the registry indexes it by (user, bridge id)."""

    def __init__(
        self,
        *,
        websocket: WebSocket,
        conn: Connection,
        hello: Hello,
        user: str,
        token_expires_at: float,
        settings: ApiSettings,
        verifier: Verifier,
        metrics: TunnelMetrics,
    ) -> None:
        self.websocket = websocket
        self.conn = conn
        self.user = user
        self.bridge_id = hello.bridge_id
        self.name = hello.name
        self.software_version = hello.software_version
        self.platform = hello.platform
        self.backend_kind = hello.backend_kind
        self.backend_reachable = hello.backend_reachable
        self.models = list(hello.models)
        self._model_set = {normalize_model(m) for m in hello.models}
        self.session_id = uuid.uuid4().hex
        self.connected_at = time.time()
        self.last_heartbeat = time.time()
        self.token_expires_at = token_expires_at
        self.settings = settings
        self.verifier = verifier
        self.metrics = metrics
        self.streams: dict[int, RelayStream] = {}
        self._send_lock = asyncio.Lock()
        self._last_seen = time.monotonic()
        self._ping_nonce = 0
        self._closed = asyncio.Event()
        self._idle: asyncio.Event | None = None  # created by wait_idle(); set while no stream is in flight
        # Heartbeat and reauth deadline are loop timers, not tasks: an idle bridge costs two TimerHandles.
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._reauth_timer: asyncio.TimerHandle | None = None
        self._timer_tasks: set[asyncio.Task[None]] = set()  # a Ping being sent, a close in progress
        self.close_code: int | None = None
        # The API key this bridge connected with (None: a signed-in user's token); its revocation closes us.
        self.key_id: str | None = None
        # Set by the registry: told when what the directory publishes about this bridge changed.
        self.on_change: Callable[[BridgeSession], None] | None = None

    # --- queries used by routing and status ---------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self.streams)

    @property
    def accepting(self) -> bool:
        return not self._closed.is_set() and not self.conn.going_away and not self.conn.is_closed

    def has_model(self, model: str) -> bool:
        return normalize_model(model) in self._model_set

    # --- sending ------------------------------------------------------------------------------------

    async def send_frame(self, frame: Frame) -> None:
        """Validate, record and send one frame; the lock keeps the wire order equal to the record order."""
        async with self._send_lock:
            data = self.conn.send(frame)
            await self._write(data)
        if isinstance(frame, Data):
            self.metrics.bytes_to_bridge.inc(len(frame.payload))

    async def _write(self, data: bytes) -> None:
        try:
            await self.websocket.send_bytes(data)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            # The socket is gone: end every stream now instead of waiting for the reader to notice.
            self._shutdown(ErrorCode.CANCELLED, "bridge disconnected")
            raise ConnectionError("bridge disconnected") from exc

    async def open_stream(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], has_body: bool
    ) -> RelayStream:
        async with self._send_lock:
            stream_id = self.conn.next_stream_id
            data = self.conn.send(Open(stream_id, method, path, query, headers, has_body))
            stream = RelayStream(self, stream_id)
            self.streams[stream_id] = stream
            if self._idle is not None:
                self._idle.clear()
            self.metrics.streams_active.inc()
            self._changed()
            try:
                await self._write(data)
            except ConnectionError:
                self._forget(stream_id)
                raise
        return stream

    async def cancel_stream(self, stream: RelayStream, reason: str) -> None:
        """The client went away (or timed out): tell the bridge, so it stops its local generation."""
        if self._forget(stream.stream_id) and not self.conn.is_closed:
            with contextlib.suppress(LocalProtocolError, ConnectionError):
                await self.send_frame(Cancel(stream.stream_id, reason))

    def release(self, stream: RelayStream) -> None:
        """The exchange completed normally."""
        self._forget(stream.stream_id)

    def _forget(self, stream_id: int) -> bool:
        if self.streams.pop(stream_id, None) is None:
            return False
        self.metrics.streams_active.dec()
        if not self.streams and self._idle is not None:
            self._idle.set()
        self._changed()
        return True

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    async def wait_idle(self) -> None:
        """Return once no stream is in flight (used when draining)."""
        if self._idle is None:
            self._idle = asyncio.Event()
            if not self.streams:
                self._idle.set()
        await self._idle.wait()

    # --- the connection's life ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the WebSocket closes; heartbeats and the reauth deadline run alongside.

        The first Ping goes out at once: its Pong gives the round trip that response windows grow with.
        """
        loop = asyncio.get_running_loop()
        self._heartbeat_timer = loop.call_later(0, self._on_heartbeat)
        self._schedule_reauth_deadline()
        try:
            await self._read_loop()
        finally:
            for timer in (self._heartbeat_timer, self._reauth_timer):
                if timer is not None:
                    timer.cancel()
            tasks = list(self._timer_tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._shutdown(ErrorCode.CANCELLED, "bridge disconnected")

    async def _read_loop(self) -> None:
        while not self._closed.is_set():
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                self.close_code = message.get("code")
                return
            data = message.get("bytes")
            if data is None:
                await self.close(CloseCode.PROTOCOL_VIOLATION, "text frames are not part of the protocol")
                return
            self._last_seen = time.monotonic()
            try:
                frame = self.conn.receive(data)
            except StreamProtocolError as exc:
                self._fail_stream(exc.stream_id, exc.code, str(exc))
                with contextlib.suppress(ConnectionError, LocalProtocolError):
                    await self.send_frame(exc.reply)
                continue
            except ConnectionProtocolError as exc:
                self.metrics.errors.labels("protocol").inc()
                await self.close(exc.close_code, exc.close_reason)
                return
            if frame is not None:
                await self._dispatch(frame)

    async def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, Data):
            stream = self.streams.get(frame.stream_id)
            self.metrics.bytes_from_bridge.inc(len(frame.payload))
            if stream is not None:
                stream.on_data(frame.payload)
            else:  # the client is gone; keep the bridge's window open until its Cancel arrives
                credit = self.conn.consumed(frame.stream_id, len(frame.payload))
                if credit is not None:
                    await self.send_frame(credit)
        elif isinstance(frame, ResponseHead):
            if (stream := self.streams.get(frame.stream_id)) is not None:
                stream.on_head(frame)
        elif isinstance(frame, End):
            if (stream := self.streams.get(frame.stream_id)) is not None:
                stream.on_end()
        elif isinstance(frame, (StreamError, Cancel)):
            code = frame.error_code if isinstance(frame, StreamError) else ErrorCode.CANCELLED
            message = frame.message if isinstance(frame, StreamError) else (frame.reason or "cancelled by the bridge")
            self._fail_stream(frame.stream_id, code, message)
        elif isinstance(frame, Ping):
            # Not awaited here: behind queued upload Data it would stop this reader (Credit, responses).
            self._spawn_timer_task(self._send_quietly(Pong(frame.nonce)))
        elif isinstance(frame, Pong):
            self.last_heartbeat = time.time()  # (the Connection timed the round trip windows grow with)
        elif isinstance(frame, BridgeStatus):
            self.backend_reachable = frame.backend_reachable
            self.models = list(frame.models)
            self._model_set = {normalize_model(m) for m in frame.models}
            self._changed()
        elif isinstance(frame, Reauth):
            await self._reauth(frame.token)

    def _fail_stream(self, stream_id: int | None, code: ErrorCode, message: str) -> None:
        if stream_id is None:
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.fail(code, message)

    async def _reauth(self, token: str) -> None:
        try:
            principal = await self.verifier.verify(token)
        except AuthError as exc:
            await self.close(CloseCode.UNAUTHORIZED, close_reason(CloseCode.UNAUTHORIZED, str(exc)))
            return
        if principal.subject != self.user:
            # A bridge may refresh its token, never change whose bridge it is.
            await self.close(CloseCode.UNAUTHORIZED, close_reason(CloseCode.UNAUTHORIZED, "token is for another user"))
            return
        if refusal := missing_scope(principal, BRIDGE):
            await self.close(CloseCode.UNAUTHORIZED, close_reason(CloseCode.UNAUTHORIZED, str(refusal)))
            return
        self.key_id = key_id_of(principal)  # a bridge may move between its sign-in and an API key
        self.token_expires_at = principal.expires_at
        self._schedule_reauth_deadline()
        await self.send_frame(ReauthOk(expires_at=principal.expires_at))

    def _spawn_timer_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._timer_tasks.add(task)
        task.add_done_callback(self._timer_tasks.discard)

    def _on_heartbeat(self) -> None:
        """Every heartbeat interval: drop a silent bridge, else send a Ping."""
        self._heartbeat_timer = None
        if self._closed.is_set():
            return
        if time.monotonic() - self._last_seen > self.settings.heartbeat_timeout_s:
            self.metrics.errors.labels("heartbeat_timeout").inc()
            reason = close_reason(CloseCode.HEARTBEAT_TIMEOUT)
            self._spawn_timer_task(self.close(CloseCode.HEARTBEAT_TIMEOUT, reason))
            return
        self._ping_nonce += 1
        self._spawn_timer_task(self._send_quietly(Ping(self._ping_nonce)))
        loop = asyncio.get_running_loop()
        self._heartbeat_timer = loop.call_later(self.settings.heartbeat_interval_s, self._on_heartbeat)

    async def _send_quietly(self, frame: Ping | Pong) -> None:
        """Send a heartbeat frame; a connection closing meanwhile is the reader's business, not ours."""
        with contextlib.suppress(ConnectionError, LocalProtocolError):
            await self.send_frame(frame)

    def _schedule_reauth_deadline(self) -> None:
        """(Re)arm the timer that closes the connection once the token expired ``reauth_grace_s`` ago."""
        if self._reauth_timer is not None:
            self._reauth_timer.cancel()
        deadline = self.token_expires_at + self.settings.reauth_grace_s
        loop = asyncio.get_running_loop()
        self._reauth_timer = loop.call_later(max(0.0, deadline - time.time()), self._on_reauth_deadline)

    def _on_reauth_deadline(self) -> None:
        self._reauth_timer = None
        if self._closed.is_set():
            return
        if time.time() >= self.token_expires_at + self.settings.reauth_grace_s:
            self._spawn_timer_task(self.close(CloseCode.REAUTH_DEADLINE, close_reason(CloseCode.REAUTH_DEADLINE)))
        else:  # woke early (the loop clock and the wall clock drift apart): wait the rest
            self._schedule_reauth_deadline()

    async def go_away(self, reason: str, retry_after_s: float) -> None:
        """Ask the bridge to reconnect elsewhere; streams in flight may finish here."""
        if self.accepting:
            with contextlib.suppress(ConnectionError, LocalProtocolError):
                await self.send_frame(GoAway(reason, retry_after_s))

    async def close(self, code: int, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_code = code
        self._shutdown(ErrorCode.CANCELLED, reason)
        with contextlib.suppress(Exception):
            await self.websocket.close(code=code, reason=reason)

    def _shutdown(self, code: ErrorCode, reason: str) -> None:
        """End every stream with a terminal error; idempotent."""
        self._closed.set()
        self.conn.close(code=code, reason=reason)
        for stream_id in list(self.streams):
            self.streams[stream_id].fail(code, reason)
            self._forget(stream_id)

    async def wait_closed(self) -> None:
        await self._closed.wait()
