"""The supervisor: keeps one tunnel session up, reconnects, watches the backend, drains on shutdown.

Decisions after a session or a dial attempt ends:

==========================================  ==========================================================
what happened                               what the bridge does
==========================================  ==========================================================
cloud unreachable, 5xx, closed with 1006..  redial after ``Backoff.next_delay()`` (full jitter)
refused with ``Retry-After`` / GoAway       wait at least the hint (plus jitter)
GoAway on a live session                    dial a NEW session after the hint; the old one keeps
                                            serving its streams and closes once idle (or when the
                                            cloud closes it with GOING_AWAY)
HTTP 401/403, or close UNAUTHORIZED         stored login: renew it once; if the issuer refuses, or the
                                            cloud refuses the renewed token too, say "sign in again
                                            with: cloudtolocalllm-bridge login <cloud>" and exit 3.
                                            Token file: wait until it holds a different token. Key or
                                            token from the environment: say so and exit 3
close VERSION_INCOMPATIBLE / REPLACED       print the reason and stop (exit 1): redialling cannot help
SIGTERM / SIGINT                            refuse new streams, drain in-flight ones up to
                                            ``drain_timeout_s``, close with 1000, exit 0
==========================================  ==========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal

from websockets.asyncio.client import ClientConnection

from cloudtolocalllm.bridge.backend import Backend, BackendState, detect_kind, make_backend
from cloudtolocalllm.bridge.backoff import Backoff
from cloudtolocalllm.bridge.cloud import cloud_origin_or_empty
from cloudtolocalllm.bridge.config import (
    BackendKindSetting,
    BridgeSettings,
    backend_base_url,
    is_loopback_host,
    tunnel_url,
)
from cloudtolocalllm.bridge.credentials import sign_in_hint
from cloudtolocalllm.bridge.exits import EXIT_FATAL, EXIT_OK, EXIT_SIGN_IN
from cloudtolocalllm.bridge.state import BridgeStatusFile, load_or_create_bridge_id
from cloudtolocalllm.bridge.token import SignInRefused, TokenError, TokenSource, fingerprint, unverified_expiry
from cloudtolocalllm.bridge.tunnel import (
    CloudUnreachable,
    HandshakeRefused,
    Session,
    SessionEnd,
    SessionOptions,
    open_websocket,
    renew_hint,
)
from cloudtolocalllm.bridge.version import __version__
from cloudtolocalllm.protocol import BackendKind, CloseCode, Welcome, should_reconnect

__all__ = ["EXIT_FATAL", "EXIT_OK", "EXIT_SIGN_IN", "Bridge"]

logger = logging.getLogger(__name__)

_Next = Literal["redial", "await_token"] | int
_TOKEN_POLL_S = 2.0


class Bridge:
    """Runs until stopped (``request_stop``) or until a condition redialling cannot fix."""

    def __init__(
        self,
        settings: BridgeSettings,
        token_source: TokenSource,
        *,
        backoff: Backoff | None = None,
        backend: Backend | None = None,
        token_poll_s: float = _TOKEN_POLL_S,
    ) -> None:
        self.settings = settings
        self.token_source = token_source
        self.url = tunnel_url(settings.cloud_url)
        self.backend_url = backend_base_url(settings.backend_url)
        self.state_dir = settings.state_path()
        self.backoff = backoff or Backoff(
            base_s=settings.backoff_base_s, cap_s=settings.backoff_cap_s, stable_after_s=settings.stable_after_s
        )
        self.status = BridgeStatusFile(self.state_dir)
        self.backend: Backend | None = backend
        self.backend_state = BackendState(False, (), "not probed yet")
        self._probe_now = asyncio.Event()
        self.active: Session | None = None
        self.sessions: list[Session] = []
        """Every session opened, oldest first (tests look at them)."""
        self.exit_message: str | None = None
        """Why the bridge stopped on its own, for the CLI to print."""
        self.bridge_id = ""
        self._last_token: str | None = None
        self._welcomed_at: float | None = None
        self._token_poll_s = token_poll_s
        self._kind_pending = False
        self._draining: dict[asyncio.Task[SessionEnd], Session] = {}
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._restart = asyncio.Event()

    # --- control ------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: drain and stop. A second call cuts the drain short."""
        if self._stop.is_set():
            self._hurry.set()
            return
        logger.info("stopping: finishing in-flight streams", extra={"deadline_s": self.settings.drain_timeout_s})
        self._stop.set()
        for session in (self.active, *self._draining.values()):
            if session is not None:
                session.stop_accepting()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- main ---------------------------------------------------------------------------------------

    async def run(self) -> int:
        self.bridge_id = load_or_create_bridge_id(self.state_dir)
        host = self.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        if self.url.startswith("ws://") and not is_loopback_host(host):
            logger.warning("the cloud URL is not encrypted (ws://): the token travels in clear text")
        self.status.update(
            state="starting",
            cloud_url=self.url,
            bridge_id=self.bridge_id,
            name=self.settings.bridge_name(),
            backend_url=self.backend_url,
            read_only=self.settings.read_only,
            software_version=__version__,
            force=True,
        )
        if self.backend is None:
            self.backend = await self._make_backend()
        self.status.update(backend_kind=self.backend.kind.value)
        await self._poll_backend(initial=True)
        helpers = [
            asyncio.create_task(self._monitor(), name="bridge-backend-monitor"),
            asyncio.create_task(self._flush_status(), name="bridge-status-file"),
        ]
        try:
            return await self._connect_loop()
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._drain_old_sessions()
            await self.backend.aclose()
            self.status.update(state="stopped", session_id=None, streams_in_flight=0, force=True)

    async def _make_backend(self) -> Backend:
        kind_setting = BackendKindSetting(self.settings.backend_kind)
        if kind_setting is BackendKindSetting.AUTO:
            kind = await detect_kind(self.backend_url, connect_timeout_s=self.settings.backend_connect_timeout_s)
            if kind is None:
                self._kind_pending = True
                kind = BackendKind.OLLAMA
                logger.warning(
                    "could not detect the backend kind at %s (not running?); assuming ollama until it answers",
                    self.backend_url,
                )
            else:
                logger.info("detected the backend kind", extra={"backend_kind": kind.value})
        else:
            kind = BackendKind(kind_setting.value)
        return self._backend_for(kind)

    def _backend_for(self, kind: BackendKind) -> Backend:
        return make_backend(
            self.backend_url,
            kind,
            connect_timeout_s=self.settings.backend_connect_timeout_s,
            idle_timeout_s=self.settings.backend_idle_timeout_s,
        )

    async def _connect_loop(self) -> int:
        rejected: str | None = None  # a token the cloud refused; redial only with another one
        while not self.stopping:
            try:
                token = await self.token_source.fresh()
            except SignInRefused as exc:
                return self._sign_in_over(str(exc))
            except TokenError as exc:
                logger.error("no usable token: %s", exc)
                self.status.update(state="disconnected", last_error=str(exc))
                if not self.token_source.can_change:
                    self.exit_message = str(exc)
                    return EXIT_FATAL
                await self._wait_for_token_change(None)
                continue
            if token == rejected:
                await self._wait_for_token_change(token)
                continue
            self._warn_if_expired(token)
            self.status.update(state="connecting")
            logger.info("connecting to the cloud", extra={"url": self.url, "attempt": self.backoff.attempt})
            try:
                ws = await open_websocket(self.url, token, open_timeout_s=self.settings.handshake_timeout_s)
            except HandshakeRefused as exc:
                if exc.status in (401, 403):
                    rejected = token
                    refused = await self._token_refused(token, f"the cloud answered HTTP {exc.status}", exc.error)
                    if isinstance(refused, int):
                        return refused
                    if refused == "redial":
                        rejected = None
                    continue
                delay = self.backoff.next_delay(exc.retry_after_s)
                self._disconnected(f"the cloud refused the connection ({exc}); retrying in {delay:.1f} s")
                await self._sleep(delay)
                continue
            except CloudUnreachable as exc:
                delay = self.backoff.next_delay()
                self._disconnected(f"cannot reach the cloud at {self.url}: {exc}; retrying in {delay:.1f} s")
                await self._sleep(delay)
                continue
            outcome = await self._run_session(ws, token)
            if outcome == "await_token":
                rejected = self._last_token
            elif outcome != "redial":
                return outcome
        return EXIT_OK

    async def _run_session(self, ws: ClientConnection, token: str) -> _Next:
        """Run one session; say whether to redial, wait for a new token, or exit (with a status)."""
        assert self.backend is not None
        go_away = asyncio.Event()
        session = Session(
            ws,
            backend=self.backend,
            token_source=self.token_source,
            token=token,
            options=SessionOptions(
                bridge_id=self.bridge_id,
                name=self.settings.bridge_name(),
                read_only=self.settings.read_only,
                handshake_timeout_s=self.settings.handshake_timeout_s,
                idle_timeout_s=self.settings.backend_idle_timeout_s,
                reauth_margin_s=self.settings.reauth_margin_s,
                max_receive_window=self.settings.max_receive_window_bytes,
            ),
            backend_state=self.backend_state,
            on_go_away=lambda _frame: go_away.set(),
            on_streams_changed=self._streams_changed,
            on_models_changed=self._probe_now.set,
            on_welcome=self._welcomed,
        )
        self.sessions.append(session)
        self.active = session
        self._restart.clear()
        task = asyncio.create_task(session.run(), name="bridge-session")
        waiters = {
            asyncio.create_task(go_away.wait()),
            asyncio.create_task(self._stop.wait()),
            asyncio.create_task(self._restart.wait()),
        }
        try:
            await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not task.done() and (go_away.is_set() or self._restart.is_set()):
            return await self._hand_over(session, task, go_away.is_set())
        if not task.done():  # stopping
            await session.shutdown(self.settings.drain_timeout_s, self._hurry)
            await task
            self.active = None
            return EXIT_OK
        self.active = None
        self._last_token = session.token
        try:
            end = task.result()
        except Exception:  # a bug must not kill a desktop daemon: log it and redial with backoff
            logger.exception("the tunnel session failed unexpectedly")
            end = SessionEnd(reason="internal error in the bridge")
        return await self._after_session(end)

    async def _hand_over(self, session: Session, task: asyncio.Task[SessionEnd], by_cloud: bool) -> _Next:
        """GoAway (or a backend kind change): keep the old session for its streams, dial a new one."""
        self.active = None
        self._draining[task] = session
        task.add_done_callback(lambda done: self._draining.pop(done, None))
        closer = asyncio.create_task(session.close_when_idle())
        task.add_done_callback(lambda _done: closer.cancel())
        uptime = time.monotonic() - (self._welcomed_at or time.monotonic())
        self.backoff.connection_ended(uptime)
        hint = session.go_away.retry_after_s if (by_cloud and session.go_away) else 0.0
        delay = self.backoff.hint_delay(hint)
        self._disconnected(f"reconnecting in {delay:.1f} s (the cloud asked the bridge to move)", error=False)
        await self._sleep(delay)
        return "redial"

    async def _after_session(self, end: SessionEnd) -> _Next:
        code = end.close_code
        if end.welcomed:
            self.backoff.connection_ended(end.uptime_s)
        if end.fatal is not None:
            self.exit_message = end.fatal
            logger.error(end.fatal)
            self.status.update(state="stopped", last_error=end.fatal, force=True)
            return EXIT_FATAL
        if self.stopping:
            return EXIT_OK
        if code is not None and not should_reconnect(code):
            if code == CloseCode.UNAUTHORIZED:
                what = f"the cloud closed the connection ({code})"
                return await self._token_refused(self._last_token, what, end.reason)
            message = f"the cloud closed the connection for good ({code}): {end.reason}"
            self.exit_message = message
            logger.error(message)
            return EXIT_FATAL
        delay = self.backoff.next_delay(end.retry_after_s)
        self._disconnected(
            f"disconnected from the cloud (code {code}{': ' + end.reason if end.reason else ''}); "
            f"reconnecting in {delay:.1f} s"
        )
        await self._sleep(delay)
        return "redial"

    # --- token handling ------------------------------------------------------------------------------

    async def _token_refused(self, token: str | None, what: str, detail: str) -> _Next:
        """The cloud refused ``token``. Redial with a renewed login, wait for a new token file, or stop with
        EXIT_SIGN_IN: never redial with a token the cloud refused (no loop of refusals)."""
        why = f"{what}{': ' + detail if detail else ''}"
        source = self.token_source
        if source.renews_itself:
            try:
                renewed = await source.fresh(rejected=token)
            except SignInRefused as exc:
                return self._sign_in_over(f"the cloud refused the sign-in ({why}) and {exc}")
            except TokenError as exc:  # the issuer is unreachable: wait for it, without dialling the cloud
                self._record_refusal(f"the cloud refused the sign-in ({why}); cannot renew it yet: {exc}")
                return "await_token"
            if renewed != token:
                logger.info("renewed the sign-in after the cloud refused it", extra={"token_fp": fingerprint(renewed)})
                return "redial"
            return self._sign_in_over(f"the cloud refused the sign-in, renewed just before ({why})")
        message = f"token invalid or expired ({why}): {renew_hint(source)}"
        if not source.can_change:
            return self._sign_in_over(message)
        self._record_refusal(message)
        return "await_token"

    def _record_refusal(self, message: str) -> None:
        logger.error(message)
        self.status.update(state="disconnected", session_id=None, last_error=message, force=True)

    def _sign_in_over(self, reason: str) -> int:
        """Stop for good: only the user can fix this. The last line says how (exit status 3)."""
        hint = sign_in_hint(cloud_origin_or_empty(self.settings.cloud_url))
        message = f"{reason.removesuffix(': ' + hint)}\n{hint}"  # the advice alone on the last line
        self.exit_message = message
        logger.error(reason)
        self.status.update(state="stopped", session_id=None, last_error=reason, force=True)
        return EXIT_SIGN_IN

    def _warn_if_expired(self, token: str) -> None:
        expiry = unverified_expiry(token)
        if expiry is not None and expiry < time.time():
            logger.warning(
                "the token from %s expired %.0f s ago; the cloud will refuse it: %s",
                self.token_source.describe(),
                time.time() - expiry,
                renew_hint(self.token_source),
            )

    async def _wait_for_token_change(self, old: str | None) -> None:
        """Poll the token source until it yields a token other than ``old`` (or the bridge stops)."""
        logger.info("waiting for a new token in %s", self.token_source.describe())
        while not self.stopping:
            await self._sleep(self._token_poll_s)
            with contextlib.suppress(TokenError):
                token = await self.token_source.fresh(rejected=old)
                if token != old:
                    logger.info("found a new token", extra={"token_fp": fingerprint(token)})
                    return

    # --- backend monitor -----------------------------------------------------------------------------

    async def _monitor(self) -> None:
        while True:
            # Poll every status interval, or at once after a request that changed the models.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.status_interval_s):
                    await self._probe_now.wait()
            self._probe_now.clear()
            try:
                await self._poll_backend()
            except Exception:
                logger.exception("backend poll failed")

    async def _poll_backend(self, *, initial: bool = False) -> None:
        assert self.backend is not None
        if self._kind_pending:
            kind = await detect_kind(self.backend_url, connect_timeout_s=self.settings.backend_connect_timeout_s)
            if kind is not None:
                self._kind_pending = False
                logger.info("detected the backend kind", extra={"backend_kind": kind.value})
                if kind is not self.backend.kind:
                    old = self.backend
                    self.backend = self._backend_for(kind)
                    self.status.update(backend_kind=kind.value)
                    self._restart.set()  # a new Hello must announce the right kind
                    asyncio.get_running_loop().call_later(600, lambda: asyncio.ensure_future(old.aclose()))
        state = await self.backend.probe()
        if state == self.backend_state and not initial:
            return
        self.backend_state = state
        if state.reachable:
            logger.info("the local backend answers", extra={"models": len(state.models)})
        else:
            logger.warning(
                "%s; the bridge stays connected and checks again every %g s",
                state.detail,
                self.settings.status_interval_s,
            )
        self.status.update(backend_reachable=state.reachable, models=list(state.models))
        if self.active is not None:
            self.active.report(state)

    # --- status --------------------------------------------------------------------------------------

    def _welcomed(self, welcome: Welcome) -> None:
        self._welcomed_at = time.monotonic()
        self.status.update(state="connected", session_id=welcome.session_id, last_error=None, force=True)

    def _streams_changed(self) -> None:
        total = sum(s.streams_in_flight for s in (self.active, *self._draining.values()) if s is not None)
        # Throttled (written within a second): a file write per request would cost every request ~1 ms.
        self.status.update(streams_in_flight=total)

    def _disconnected(self, message: str, *, error: bool = True) -> None:
        if error:
            logger.warning(message)
        else:
            logger.info(message)
        self.status.update(state="disconnected", session_id=None, last_error=message if error else None)

    async def _flush_status(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.status.flush()

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the bridge is asked to stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()

    async def _drain_old_sessions(self) -> None:
        sessions = list(self._draining.items())
        if not sessions:
            return
        await asyncio.gather(
            *(session.shutdown(self.settings.drain_timeout_s, self._hurry) for _, session in sessions),
            return_exceptions=True,
        )
        await asyncio.gather(*(task for task, _ in sessions), return_exceptions=True)
