"""One tunnel connection: the WebSocket to the cloud, the protocol state, and the streams it carries.

:func:`open_websocket` performs the HTTP upgrade (the token goes in the Authorization header) and turns a
refusal into :class:`HandshakeRefused` / :class:`CloudUnreachable`. :class:`Session` then runs the
protocol on the open socket until it closes and returns a :class:`SessionEnd` saying why, which the
supervisor (``runner``) turns into "reconnect after a delay", "wait for a new token" or "stop".

Inside a session the runtime (``protocol.tunnel``) does what both ends share: it reads and dispatches, answers
Pings (and Pings back, which times the round trip upload windows grow with), writes through one writer whose
control lane never waits behind body bytes, turns consumed request bytes into Credit and ends the session
when nothing arrived for 3 heartbeat intervals (half-open TCP). What is the bridge's own:

- each Open is checked (``paths``) and runs in its own task: the request goes to the Backend and the answer
  streams back within the cloud's credit, so neither a slow browser nor a multi-GB upload makes the bridge
  buffer more than one window per stream (an upload the window holds back gets a bigger one, up to
  ``max_receive_window``; core's ``window``);
- BridgeStatus when the backend changes, and a reauth task that sends a fresh token before it expires.

Logs carry stream ids, methods, paths, statuses and byte counts only: never tokens, query strings,
header values, prompts or answers.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from cloudtolocalllm.bridge.backend import Backend, BackendError, BackendState
from cloudtolocalllm.bridge.paths import check_request
from cloudtolocalllm.bridge.token import TokenError, TokenSource, fingerprint
from cloudtolocalllm.bridge.version import __version__
from cloudtolocalllm.protocol import (
    FEATURES,
    PROTOCOL_VERSION,
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
    Open,
    ProtocolError,
    Reauth,
    ReauthOk,
    ResponseHead,
    Role,
    StreamClosedError,
    StreamError,
    VersionMismatchError,
    Welcome,
)
from cloudtolocalllm.protocol.checks import check_headers
from cloudtolocalllm.protocol.frames import MAX_FRAME_BYTES_LIMIT
from cloudtolocalllm.protocol.routes import route_at
from cloudtolocalllm.protocol.tunnel import (
    HandshakeFailed,
    Heartbeat,
    StreamFailed,
    TransportClosed,
    Tunnel,
    TunnelStream,
    greet,
)
from cloudtolocalllm.protocol.tunnel.websockets_transport import WebsocketsTransport

__all__ = [
    "CloudUnreachable",
    "HandshakeRefused",
    "Session",
    "SessionEnd",
    "SessionOptions",
    "open_websocket",
    "platform_tag",
    "reauth_delay",
]

logger = logging.getLogger(__name__)

DEAD_AFTER_HEARTBEATS = 3
"""Silence of this many heartbeat intervals means the connection is dead."""
REAUTH_MARGIN_S = 30.0
_CLOSE_TIMEOUT_S = 2.0


# --- the WebSocket handshake ----------------------------------------------------------------------


class HandshakeRefused(Exception):
    """The cloud answered the upgrade with an HTTP error (401: bad token; 503: draining...)."""

    def __init__(self, status: int, error: str, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status}: {error}" if error else f"HTTP {status}")
        self.status = status
        self.error = error
        self.retry_after_s = retry_after_s


class CloudUnreachable(Exception):
    """No WebSocket could be opened (DNS, refused, TLS, timeout, not a WebSocket endpoint)."""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(body: bytes | bytearray | None) -> str:
    if not body:
        return ""
    try:
        document = msgspec.json.decode(body[:4096])
    except msgspec.DecodeError:
        return ""
    error = document.get("error") if isinstance(document, dict) else None
    return error[:200] if isinstance(error, str) else ""


async def open_websocket(url: str, token: str, *, open_timeout_s: float) -> ClientConnection:
    """Open the tunnel WebSocket at ``url`` with ``token`` as bearer token (never in the URL)."""
    try:
        return await connect(
            url,
            additional_headers=[("Authorization", f"Bearer {token}")],
            user_agent_header=f"cloudtolocalllm-bridge/{__version__}",
            open_timeout=open_timeout_s,
            close_timeout=_CLOSE_TIMEOUT_S,
            ping_interval=None,  # the protocol's own Ping/Pong and the watchdog do this job
            compression=None,  # bodies are model blobs and token streams; deflate only costs CPU
            max_size=MAX_FRAME_BYTES_LIMIT,
            max_queue=64,
        )
    except InvalidStatus as exc:
        response = exc.response
        raise HandshakeRefused(
            response.status_code, _error_text(response.body), _retry_after(response.headers.get("Retry-After"))
        ) from None
    except InvalidURI as exc:
        raise CloudUnreachable(f"invalid cloud URL: {exc}") from None
    except InvalidHandshake as exc:
        raise CloudUnreachable(f"the cloud did not accept a WebSocket: {exc}") from None
    except TimeoutError:
        raise CloudUnreachable(f"no answer within {open_timeout_s:g} s") from None
    except OSError as exc:
        raise CloudUnreachable(exc.strerror or str(exc) or type(exc).__name__) from None


# --- session ----------------------------------------------------------------------------------------


def platform_tag() -> str:
    return f"{sys.platform}-{platform.machine().lower() or 'unknown'}"


def reauth_delay(remaining_s: float, margin_s: float = REAUTH_MARGIN_S) -> float:
    """Seconds to wait before renewing a token that expires in ``remaining_s``.

    At 80 % of the remaining lifetime, but at least ``margin_s`` (REAUTH_MARGIN_S) before expiry (at
    once if that has passed).
    """
    return max(0.0, min(0.8 * remaining_s, remaining_s - margin_s))


@dataclass
class SessionOptions:
    bridge_id: str
    name: str
    read_only: bool = False
    handshake_timeout_s: float = 20.0
    idle_timeout_s: float = 300.0
    """Longest wait for the next request-body chunk from the cloud."""
    token_recheck_s: float = 10.0
    """How often an unchanged, expiring token is looked at again."""
    reauth_margin_s: float = REAUTH_MARGIN_S
    """Renew the token at least this long before it expires."""
    max_receive_window: int = 16 * 1024 * 1024
    """Largest window an upload may grow to (0: the cloud's initial window, fixed)."""


@dataclass
class SessionEnd:
    """Why a session ended, for the supervisor."""

    close_code: int | None = None
    reason: str = ""
    welcomed: bool = False
    uptime_s: float = 0.0
    """Seconds between the Welcome and the end (0 if there was no Welcome)."""
    retry_after_s: float | None = None
    """A GoAway's retry hint, if one arrived."""
    fatal: str | None = None
    """Set when redialling cannot help (version mismatch, replaced): the message for the user."""


@dataclass
class SessionStats:
    """Counters a test (or the status file) can read."""

    max_buffered_bytes: int = 0
    max_receive_window: int = 0
    """The largest window an upload reached."""
    streams_started: int = 0
    streams_done: int = 0


@dataclass
class _Stream:
    open: Open
    tunnel_stream: TunnelStream
    task: asyncio.Task[None] | None = None
    receive_window: int = 0
    """The largest window the request body reached (it grows for fast uploads)."""


class _BodyStalled(Exception):
    pass


class Session:
    """Runs the protocol over one open WebSocket until it closes: Open -> Backend -> answer."""

    def __init__(
        self,
        ws: ClientConnection,
        *,
        backend: Backend,
        token_source: TokenSource,
        token: str,
        options: SessionOptions,
        backend_state: BackendState,
        on_go_away: Callable[[GoAway], None] | None = None,
        on_streams_changed: Callable[[], None] | None = None,
        on_models_changed: Callable[[], None] | None = None,
        on_welcome: Callable[[Welcome], None] | None = None,
    ) -> None:
        self.ws = ws
        self.transport = WebsocketsTransport(ws)
        self.backend = backend
        self.conn = Connection(Role.BRIDGE, max_recv_window=options.max_receive_window)
        self.options = options
        self.token_source = token_source
        self._token = token
        self._token_expires_at: float | None = None
        self._reauth_ok = asyncio.Event()
        self._backend_state = backend_state
        self._reported = (backend_state.reachable, tuple(backend_state.models))
        self._on_go_away = on_go_away
        self._on_streams_changed = on_streams_changed
        self._on_models_changed = on_models_changed
        self._on_welcome = on_welcome
        self._tunnel: Tunnel | None = None  # from the Welcome on
        self._streams: dict[int, _Stream] = {}
        self._streams_idle = asyncio.Event()
        self._streams_idle.set()
        self._refusing = False
        self._welcomed_at: float | None = None
        self._aux: list[asyncio.Task[None]] = []
        self._end = SessionEnd()
        self.stats = SessionStats()
        self.welcome: Welcome | None = None
        self.go_away: GoAway | None = None

    # --- public ---------------------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        return self.welcome.session_id if self.welcome else None

    @property
    def token(self) -> str:
        """The token this session authenticated with last (its Reauth token, if it sent one)."""
        return self._token

    @property
    def streams_in_flight(self) -> int:
        return len(self._streams)

    def report(self, state: BackendState) -> None:
        """Tell the cloud about a backend change (a BridgeStatus), if it differs from the last report."""
        self._backend_state = state
        current = (state.reachable, tuple(state.models))
        if self._tunnel is None or not self._tunnel.is_open or current == self._reported:
            return
        self._reported = current
        self._send_status(self._tunnel, state.reachable, list(state.models))

    def stop_accepting(self) -> None:
        """Refuse every Open from now on (REFUSED: the cloud may retry it on another bridge)."""
        self._refusing = True

    async def shutdown(self, deadline_s: float, hurry: asyncio.Event | None = None) -> None:
        """Refuse new streams, let in-flight ones finish for up to ``deadline_s``, then close with 1000.

        Setting ``hurry`` (a second Ctrl-C) ends the wait early.
        """
        self._refusing = True
        if self._streams:
            logger.info("draining in-flight streams", extra={"streams": len(self._streams), "deadline_s": deadline_s})
            waits = [asyncio.ensure_future(self._streams_idle.wait())]
            if hurry is not None:
                waits.append(asyncio.ensure_future(hurry.wait()))
            try:
                await asyncio.wait(waits, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
        for stream in list(self._streams.values()):
            if stream.task is not None:
                stream.task.cancel()
        if self._tunnel is not None:
            await self._tunnel.close(1000, "bridge shutting down")  # after what is queued
        else:
            await self.transport.close(1000, "bridge shutting down")

    async def close_when_idle(self) -> None:
        """After a GoAway: close the old connection ourselves once its last stream has finished."""
        await self._streams_idle.wait()
        await self.transport.close(1000, "going away: reconnected")

    # --- run --------------------------------------------------------------------------------------

    async def run(self) -> SessionEnd:
        try:
            tunnel = await self._handshake()
            if tunnel is not None:
                self._aux = [asyncio.create_task(self._reauth_loop(), name="bridge-reauth")]
                await tunnel.run()
        finally:
            await self._teardown()
        self._record_close()
        return self._end

    def _hello(self) -> Hello:
        state = self._backend_state
        return Hello(
            PROTOCOL_VERSION,
            self.options.bridge_id,
            self.options.name,
            __version__,
            platform_tag(),
            self.backend.kind,
            state.reachable,
            list(state.models),
            list(FEATURES),
        )

    async def _handshake(self) -> Tunnel | None:
        """Hello -> Welcome, then the runtime. None when the session ended here (closed, GoAway, timeout)."""
        timeout_s = self.options.handshake_timeout_s
        try:
            frame = await greet(self.transport, self.conn, self._hello(), timeout_s=timeout_s)
        except HandshakeFailed as exc:
            if isinstance(exc.error, ConnectionProtocolError):
                self._protocol_failure(exc.error)
            elif exc.close_code is not None:
                self._end.reason = f"no Welcome from the cloud within {timeout_s:g} s"
            if exc.close_code is not None:
                await self.transport.close(exc.close_code, exc.close_reason)
            return None
        if isinstance(frame, GoAway):
            self._handle_go_away(frame)
            await self.transport.close(1000, "cloud is draining")
            return None
        self.welcome = frame
        self._welcomed_at = time.monotonic()
        self._end.welcomed = True
        self._token_expires_at = frame.token_expires_at
        logger.info(
            "connected to the cloud",
            extra={
                "session_id": frame.session_id,
                "heartbeat_interval_s": frame.heartbeat_interval_s,
                "max_frame_bytes": frame.limits.max_frame_bytes,
                "initial_window": frame.limits.initial_window,
                "max_concurrent_streams": frame.limits.max_concurrent_streams,
            },
        )
        # The cloud pings on its schedule; each Ping is answered with one of ours, which times the round
        # trip upload windows grow with. Silence of DEAD_AFTER_HEARTBEATS intervals means half-open TCP.
        heartbeat = Heartbeat(dead_after_s=DEAD_AFTER_HEARTBEATS * frame.heartbeat_interval_s, ping_back=True)
        self._tunnel = tunnel = Tunnel(
            self.transport,
            self.conn,
            heartbeat=heartbeat,
            on_frame=self._dispatch,
            on_silence=self._on_silence,
            on_protocol_error=self._protocol_failure,
            keep_writer=True,
        )
        tunnel.probe_rtt()
        # The backend may have changed between the Hello and the Welcome.
        self.report(self._backend_state)
        if self._on_welcome is not None:
            self._on_welcome(frame)
        return tunnel

    def _dispatch(self, frame: Frame) -> None:
        """What the runtime leaves to the bridge: Opens, resets, ReauthOk and GoAway."""
        if isinstance(frame, Open):
            self._start_stream(frame)
        elif isinstance(frame, Cancel | StreamError):
            self._cancel_stream(frame.stream_id)
        elif isinstance(frame, ReauthOk):
            self._token_expires_at = frame.expires_at
            self._reauth_ok.set()
            logger.info("token renewed", extra={"expires_at": frame.expires_at})
        elif isinstance(frame, GoAway):
            self._handle_go_away(frame)

    def _handle_go_away(self, frame: GoAway) -> None:
        self.go_away = frame
        self._end.retry_after_s = frame.retry_after_s
        logger.info(
            "the cloud is going away; reconnecting",
            extra={"reason": frame.reason[:200], "retry_after_s": frame.retry_after_s},
        )
        if self._on_go_away is not None:
            self._on_go_away(frame)

    def _protocol_failure(self, exc: ConnectionProtocolError) -> None:
        if isinstance(exc, VersionMismatchError):
            self._end.fatal = f"protocol version mismatch: {exc.reason}"
        self._end.reason = exc.reason
        logger.error("protocol error; closing the connection", extra={"reason": exc.reason})

    def _on_silence(self, silent: float) -> None:
        self._end.reason = f"nothing received from the cloud for {silent:.0f} s"
        logger.warning("the connection to the cloud is dead; reconnecting", extra={"silent_s": silent})
        self.transport.abort()  # half-open TCP: a close handshake would only wait

    def _record_close(self) -> None:
        end = self._end
        end.close_code = self.ws.close_code
        if not end.reason:
            end.reason = self.ws.close_reason or ""
        if self._welcomed_at is not None:
            end.uptime_s = time.monotonic() - self._welcomed_at
        if end.fatal is None and end.close_code == CloseCode.VERSION_INCOMPATIBLE:
            end.fatal = f"protocol version mismatch: {end.reason or 'upgrade the bridge'}"
        elif end.fatal is None and end.close_code == CloseCode.REPLACED and self.go_away is None:
            end.fatal = (
                "another bridge with the same id connected and replaced this one; "
                "run only one bridge per state dir (or give each its own --state-dir)"
            )

    async def _teardown(self) -> None:
        if self._tunnel is not None:
            self._tunnel.shutdown(ErrorCode.CANCELLED, "connection closed")
        else:
            self.conn.close(code=ErrorCode.CANCELLED, reason="connection closed")
        tasks = [s.task for s in self._streams.values() if s.task is not None] + self._aux
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._tunnel is not None:
            await self._tunnel.aclose()
        await self.transport.close(1000, "")

    # --- reauth -------------------------------------------------------------------------------------

    async def _reauth_loop(self) -> None:
        while True:
            expires_at = self._token_expires_at
            if expires_at is None:
                self._reauth_ok.clear()
                await self._reauth_ok.wait()
                continue
            await asyncio.sleep(reauth_delay(expires_at - time.time(), self.options.reauth_margin_s))
            try:
                token = await self.token_source.fresh()
            except TokenError as exc:
                logger.error("cannot renew the token: %s", exc)
                await asyncio.sleep(self.options.token_recheck_s)
                continue
            if token == self._token:
                remaining = expires_at - time.time()
                logger.error(
                    "the token from %s expires in %.0f s and has not been renewed: %s",
                    self.token_source.describe(),
                    max(remaining, 0.0),
                    renew_hint(self.token_source),
                )
                await asyncio.sleep(self.options.token_recheck_s)
                continue
            self._reauth_ok.clear()
            assert self._tunnel is not None  # the loop starts after the Welcome
            self._tunnel.send(Reauth(token))
            self._token = token
            logger.info("sent a renewed token", extra={"token_fp": fingerprint(token)})
            try:
                async with asyncio.timeout(60):
                    await self._reauth_ok.wait()
            except TimeoutError:
                logger.warning("no ReauthOk from the cloud within 60 s")

    # --- streams: Open -> Backend -----------------------------------------------------------------

    def _start_stream(self, frame: Open) -> None:
        assert self._tunnel is not None
        sid = frame.stream_id
        refusal = None
        if self._refusing:
            refusal = (ErrorCode.REFUSED, "the bridge is shutting down")
        else:
            found = check_request(frame.method, frame.path, read_only=self.options.read_only)
            if found is not None:
                refusal = (found.code, found.message)
        if refusal is not None:
            logger.info(
                "stream refused",
                extra={"stream_id": sid, "method": frame.method, "path": frame.path, "code": refusal[0].value},
            )
            self._tunnel.send(StreamError(sid, refusal[0].value, refusal[1]))
            return
        stream = _Stream(frame, self._tunnel.accept_stream(sid))
        self._streams[sid] = stream
        self._streams_idle.clear()
        self.stats.streams_started += 1
        stream.task = asyncio.create_task(self._run_stream(stream), name=f"bridge-stream-{sid}")
        if self._on_streams_changed is not None:
            self._on_streams_changed()

    def _cancel_stream(self, sid: int) -> None:
        stream = self._streams.get(sid)
        if stream is not None and stream.task is not None:
            stream.task.cancel()

    async def _request_body(self, stream: _Stream) -> AsyncIterator[bytes]:
        body = stream.tunnel_stream
        sid = body.stream_id
        while True:
            try:
                async with asyncio.timeout(self.options.idle_timeout_s):
                    chunk = await body.read(coalesce=0)  # frame by frame: the backend client writes as it gets
            except TimeoutError:
                raise _BodyStalled from None
            if chunk is None:
                return
            self.stats.max_buffered_bytes = max(self.stats.max_buffered_bytes, self.conn.buffered_bytes)
            yield chunk
            # The backend client asked for the next chunk: this one has been written to the backend.
            body.consumed(len(chunk))
            stream.receive_window = max(stream.receive_window, self.conn.recv_window(sid))
            self.stats.max_receive_window = max(self.stats.max_receive_window, stream.receive_window)

    async def _run_stream(self, stream: _Stream) -> None:
        frame = stream.open
        out = stream.tunnel_stream
        sid = frame.stream_id
        started = time.monotonic()
        status: int | None = None
        outcome = "ok"
        try:
            body = self._request_body(stream) if frame.has_body else None
            try:
                response = await self.backend.request(frame.method, frame.path, frame.query, frame.headers, body)
            except _BodyStalled:
                raise BackendError(
                    ErrorCode.TIMEOUT,
                    f"the request body stalled for {self.options.idle_timeout_s:g} s",
                ) from None
            async with response:
                status = response.status
                await out.send(ResponseHead(sid, response.status, _relayable_headers(response.headers)))
                async for chunk in response.body:
                    await out.send_body(chunk)
            await out.end_body()
            if sid in self.conn.stream_ids:
                # The backend answered before the request body was complete: stop the upload.
                out.reset(Cancel(sid, "response complete"))
        except BackendError as exc:
            outcome = exc.code.value
            out.reset(StreamError(sid, exc.code.value, exc.message))
        except (StreamClosedError, StreamFailed, TransportClosed):
            outcome = "cancelled"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ProtocolError as exc:
            outcome = "internal"
            logger.warning("stream failed", extra={"stream_id": sid, "reason": exc.reason})
            out.reset(StreamError(sid, ErrorCode.INTERNAL.value, "the bridge could not relay this response"))
        except Exception:
            outcome = "internal"
            logger.exception("stream failed unexpectedly", extra={"stream_id": sid})
            out.reset(StreamError(sid, ErrorCode.INTERNAL.value, "the bridge failed while relaying this response"))
        finally:
            if self._tunnel is not None:
                self._tunnel.release(out)
            self._streams.pop(sid, None)
            self.stats.streams_done += 1
            changed = (route := route_at(frame.path)) is not None and route.model_changing
            if changed and status is not None and status < 400 and self._on_models_changed:
                self._on_models_changed()  # tell the cloud about the new model list now, not next poll
            if not self._streams:
                self._streams_idle.set()
            logger.info(
                "stream done",
                extra={
                    "stream_id": sid,
                    "method": frame.method,
                    "path": frame.path,
                    "status": status,
                    "outcome": outcome,
                    "bytes_in": out.bytes_in,
                    "bytes_out": out.bytes_out,
                    "receive_window": stream.receive_window,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
            if self._on_streams_changed is not None:
                self._on_streams_changed()

    def _send_status(self, tunnel: Tunnel, reachable: bool, models: list[str]) -> None:
        """Send a BridgeStatus, dropping models from the end until it fits max_frame_bytes."""
        while True:
            try:
                tunnel.send(BridgeStatus(reachable, models))
                return
            except LocalProtocolError as exc:
                if exc.code is not ErrorCode.TOO_LARGE or not models:
                    logger.warning("cannot send BridgeStatus", extra={"reason": exc.reason})
                    return
                logger.warning("model list too long for one frame; truncated", extra={"models": len(models)})
                models = models[: len(models) // 2]


def _relayable_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop header fields the protocol cannot carry (it refuses the whole head otherwise)."""
    if check_headers(headers) is None:
        return headers
    kept = [pair for pair in headers if check_headers([pair]) is None]
    return kept[:256]


def renew_hint(source: TokenSource) -> str:
    """What the user should do to get a working token, for this token source."""
    if (own := source.renew_hint()) is not None:
        return own
    if source.token_file is not None:
        return (
            f"write a new bridge key (one with the 'bridge' scope) or token to {source.token_file}; the running "
            "bridge picks it up"
        )
    return (
        "create a new bridge key (one with the 'bridge' scope) and restart the bridge with it in "
        "CLOUDTOLOCALLLM_BRIDGE_KEY or --key-file (a file can be renewed without a restart)"
    )
