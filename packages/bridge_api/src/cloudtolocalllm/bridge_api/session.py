"""One connected bridge: who it is, its models, its token's deadline, and the tunnel runtime carrying its streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from cloudtolocalllm.bridge_api.keys.scopes import BRIDGE, key_id_of, missing_scope
from cloudtolocalllm.core.auth import AuthError, Verifier
from cloudtolocalllm.protocol import (
    BridgeStatus,
    Cancel,
    CloseCode,
    Connection,
    ConnectionProtocolError,
    ErrorCode,
    Frame,
    GoAway,
    Hello,
    LocalProtocolError,
    Reauth,
    ReauthOk,
    close_reason,
)
from cloudtolocalllm.protocol.models import normalize_model
from cloudtolocalllm.protocol.tunnel import Heartbeat, MessageTransport, Tunnel, TunnelStream

if TYPE_CHECKING:
    from cloudtolocalllm.bridge_api.metrics import TunnelMetrics
    from cloudtolocalllm.bridge_api.settings import ApiSettings

__all__ = ["BridgeSession"]

log = logging.getLogger(__name__)


class BridgeSession:
    """Lives as long as the bridge's WebSocket; the registry indexes it by (user, bridge id).

    The tunnel runtime (``protocol.tunnel``) does the protocol work: reading, writing, credit, Ping/Pong, the
    heartbeat. This object is the bridge as the cloud knows it: who it is, what models it has, its token's
    deadline, and how many streams it carries (each stream has one owner, ``exchange.Exchange``).
    """

    # Slots: api-backend holds one of these per connected bridge, most of them idle (bench key
    # tunnel.idle_bridge_kb); an instance dict of ~26 entries would be most of what an idle bridge costs here.
    __slots__ = (
        "_closed",
        "_closing",
        "_idle",
        "_in_flight",
        "_model_set",
        "_reauth_timer",
        "backend_kind",
        "backend_reachable",
        "bridge_id",
        "close_code",
        "conn",
        "connected_at",
        "key_id",
        "metrics",
        "models",
        "name",
        "on_change",
        "platform",
        "session_id",
        "settings",
        "software_version",
        "token_expires_at",
        "transport",
        "tunnel",
        "user",
        "verifier",
    )

    def __init__(
        self,
        *,
        transport: MessageTransport,
        conn: Connection,
        hello: Hello,
        user: str,
        token_expires_at: float,
        settings: ApiSettings,
        verifier: Verifier,
        metrics: TunnelMetrics,
    ) -> None:
        self.transport = transport
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
        self.token_expires_at = token_expires_at
        self.settings = settings
        self.verifier = verifier
        self.metrics = metrics
        # The first Ping goes out at once: its Pong gives the round trip that response windows grow with.
        heartbeat = Heartbeat(dead_after_s=settings.heartbeat_timeout_s, interval_s=settings.heartbeat_interval_s)
        self.tunnel = Tunnel(
            transport,
            conn,
            heartbeat=heartbeat,
            on_frame=self._on_frame,
            on_silence=self._on_silence,
            on_protocol_error=self._on_protocol_error,
            lost_reason="bridge disconnected",
            on_closed=self._on_closed,
        )
        self._in_flight = 0  # streams opened whose owner has not ended them yet
        self._closed = asyncio.Event()
        self._idle: asyncio.Event | None = None  # created by wait_idle(); set while no stream is in flight
        # The reauth deadline is a loop timer, not a task (the heartbeat's are the runtime's, timers too).
        self._reauth_timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()  # a close in progress
        self.close_code: int | None = None
        # The API key this bridge connected with (None: a signed-in user's token); its revocation closes us.
        self.key_id: str | None = None
        # Set by the registry: told when what the directory publishes about this bridge changed.
        self.on_change: Callable[[BridgeSession], None] | None = None

    # --- queries used by routing and status ---------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def last_heartbeat(self) -> float:
        """When the bridge last answered a Ping (wall clock)."""
        return self.tunnel.last_pong

    @property
    def accepting(self) -> bool:
        return not self._closed.is_set() and not self.conn.going_away and not self.conn.is_closed

    def has_model(self, model: str) -> bool:
        return normalize_model(model) in self._model_set

    # --- streams ------------------------------------------------------------------------------------

    def open_stream(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], has_body: bool
    ) -> TunnelStream:
        """Send an Open; raises LocalProtocolError (refused: limits, GoAway) or ConnectionError (closed).
        Its owner calls :meth:`end_stream` once, however it ends."""
        if not self.tunnel.is_open:
            raise ConnectionError("bridge disconnected")
        stream = self.tunnel.open_stream(method, path, query, headers, has_body)
        self._in_flight += 1
        if self._idle is not None:
            self._idle.clear()
        self.metrics.streams_active.inc()
        self._changed()
        return stream

    def end_stream(self, stream: TunnelStream, cancel: str | None = None) -> None:
        """The stream's owner is done with it; ``cancel``: why the bridge should stop it (it did not finish)."""
        if cancel is not None:
            stream.reset(Cancel(stream.stream_id, cancel))  # the bridge stops its local generation
        else:
            self.tunnel.release(stream)
        self._in_flight -= 1
        self.metrics.streams_active.dec()
        if not self._in_flight and self._idle is not None:
            self._idle.set()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    async def wait_idle(self) -> None:
        """Return once no stream is in flight (used when draining)."""
        if self._idle is None:
            self._idle = asyncio.Event()
            if not self._in_flight:
                self._idle.set()
        await self._idle.wait()

    # --- the connection's life ----------------------------------------------------------------------

    def run(self) -> Coroutine[Any, Any, None]:
        """The tunnel's reader, to await until the WebSocket closes; the reauth deadline runs alongside.

        Not a coroutine of its own: api-backend holds one reader per connected bridge, and each level of
        awaiting coroutine is memory an idle bridge costs (``_on_closed`` does what a ``finally`` would).
        """
        self._schedule_reauth_deadline()
        return self.tunnel.run()

    def _on_closed(self) -> None:
        if self._reauth_timer is not None:
            self._reauth_timer.cancel()
        if self.close_code is None:
            self.close_code = self.transport.close_code
        self._shutdown(ErrorCode.CANCELLED, "bridge disconnected")

    async def _on_frame(self, frame: Frame) -> None:
        """What the runtime leaves to the cloud: the bridge's status and token; resets end no stream here
        (the runtime failed it; its owner sees that and ends it)."""
        if isinstance(frame, BridgeStatus):
            self.backend_reachable = frame.backend_reachable
            self.models = list(frame.models)
            self._model_set = {normalize_model(m) for m in frame.models}
            self._changed()
        elif isinstance(frame, Reauth):
            await self._reauth(frame.token)

    def _on_protocol_error(self, exc: ConnectionProtocolError) -> None:
        self.metrics.errors.labels("protocol").inc()
        self.close_code = exc.close_code
        self._closed.set()

    def _on_silence(self, silent: float) -> Coroutine[Any, Any, None]:
        self.metrics.errors.labels("heartbeat_timeout").inc()
        return self.close(CloseCode.HEARTBEAT_TIMEOUT, close_reason(CloseCode.HEARTBEAT_TIMEOUT))

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
        with contextlib.suppress(LocalProtocolError):
            self.tunnel.send(ReauthOk(expires_at=principal.expires_at))

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
            task = asyncio.create_task(self.close(CloseCode.REAUTH_DEADLINE, close_reason(CloseCode.REAUTH_DEADLINE)))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:  # woke early (the loop clock and the wall clock drift apart): wait the rest
            self._schedule_reauth_deadline()

    async def go_away(self, reason: str, retry_after_s: float) -> None:
        """Ask the bridge to reconnect elsewhere; streams in flight may finish here."""
        if self.accepting:
            with contextlib.suppress(LocalProtocolError):
                self.tunnel.send(GoAway(reason, retry_after_s))

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` after what is queued (a GoAway) has been written; every stream ends."""
        if self._closed.is_set():
            return
        self.close_code = code
        self._closed.set()
        await self.tunnel.close(code, reason)

    def _shutdown(self, code: ErrorCode, reason: str) -> None:
        """End every stream with a terminal error (their owners see it and end them); idempotent."""
        self._closed.set()
        self.tunnel.shutdown(code, reason)

    async def wait_closed(self) -> None:
        await self._closed.wait()
