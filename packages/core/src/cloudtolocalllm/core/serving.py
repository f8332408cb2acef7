"""Run an ASGI app on hypercorn with graceful shutdown, and start console-script services cleanly.

On SIGTERM or SIGINT the server stops accepting connections, lets in-flight requests finish for up to
``graceful_timeout_s`` and then returns, so the process exits 0 and an orchestrator sees a clean stop.

WebSocket permessage-deflate is declined: hypercorn accepts it whenever a client offers it and has no
setting to refuse, and each compressed connection costs ~100 KB of zlib state on the server plus CPU on
every message (our WebSocket traffic is binary frames, model blobs and token streams).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from starlette.types import ASGIApp

from cloudtolocalllm.core.settings import SettingsError

__all__ = ["bind_socket", "exit_on_settings_error", "serve"]


def _decline_websocket_compression() -> None:
    """Make hypercorn answer every permessage-deflate offer with "no" (idempotent)."""
    from hypercorn.protocol import ws_stream
    from wsproto.extensions import PerMessageDeflate

    names = vars(ws_stream)  # hypercorn looks the class up here for every WebSocket handshake
    if getattr(names["PerMessageDeflate"], "declined", False):
        return

    class _DeclinedDeflate(PerMessageDeflate):
        declined = True

        def accept(self, offer: str) -> None:
            return None  # not negotiated: the connection stays uncompressed

    names["PerMessageDeflate"] = _DeclinedDeflate


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving so callers (and tests using port 0) know the real port up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024, reuse_port=False)
    sock.set_inheritable(True)
    return sock


async def serve(
    app: ASGIApp,
    *,
    sock: socket.socket,
    graceful_timeout_s: float = 30.0,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``shutdown_trigger`` returns), then drain in-flight requests."""
    # Imported here: hypercorn pulls in h2/hpack (~150 ms), which tools that never serve should not pay.
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    _decline_websocket_compression()
    config = Config()
    # hypercorn takes ownership of (and closes) the descriptor it is given: hand it a duplicate.
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = None  # core's middleware writes the access log, without query strings
    config.errorlog = logging.getLogger("hypercorn.error")  # JSON lines through core's handler
    config.keep_alive_timeout = 75  # above common load balancer idle timeouts (ALB 60 s)
    for key, value in (config_overrides or {}).items():
        setattr(config, key, value)

    stop = asyncio.Event()
    if shutdown_trigger is None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        shutdown_trigger = stop.wait
    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]


def exit_on_settings_error(error: SettingsError, service: str) -> NoReturn:
    """Print one clear message naming every bad variable, and exit with status 2."""
    print(f"{service}: {error}", file=sys.stderr)
    raise SystemExit(2)
