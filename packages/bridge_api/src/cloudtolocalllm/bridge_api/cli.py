"""``cloudtolocalllm-api-backend``: run the api-backend service (the container's entrypoint)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from cloudtolocalllm.bridge_api.app import SERVICE_NAME, build_app
from cloudtolocalllm.bridge_api.database import DatabaseSettings
from cloudtolocalllm.bridge_api.dev_auth import DevIssuerMissing
from cloudtolocalllm.bridge_api.registry import BridgeRegistry
from cloudtolocalllm.bridge_api.settings import ApiSettings, replica_url_for
from cloudtolocalllm.bridge_api.version import __version__
from cloudtolocalllm.core import (
    ServiceApp,
    SettingsError,
    bind_socket,
    configure_logging,
    event_loop,
    exit_on_settings_error,
    load_settings,
    serve,
)
from cloudtolocalllm.core.auth import AuthSettings

log = logging.getLogger(__name__)


async def run(app: ServiceApp, settings: ApiSettings) -> None:
    sock = bind_socket(settings.host, settings.port)
    port = sock.getsockname()[1]
    registry: BridgeRegistry = app.state.registry
    registry.replica_url = replica_url_for(settings, port)  # where peers relay requests for our bridges
    directory = "redis" if settings.redis_url else "in-memory"
    log.info(
        "listening",
        extra={
            "host": settings.host,
            "port": port,
            "replica_url": registry.replica_url,
            "directory": directory,
            "event_loop": event_loop.running_loop_name(),
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        # Bridges reconnect elsewhere first; streams in flight get the graceful period to finish.
        log.info("draining", extra={"bridges": len(registry.all_sessions())})
        await registry.drain(settings.drain_retry_after_s, settings.graceful_timeout_s)

    await serve(
        app,
        sock=sock,
        graceful_timeout_s=settings.graceful_timeout_s,
        shutdown_trigger=shutdown_trigger,
        max_websocket_message_bytes=settings.max_frame_bytes + 1024,
        max_header_bytes=settings.max_header_bytes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="cloudtolocalllm-api-backend", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.parse_args()
    try:
        settings = load_settings(ApiSettings, prefix="API_")
        auth = load_settings(AuthSettings)
        database = load_settings(DatabaseSettings)  # DATABASE_URL, unprefixed as most platforms set it
    except SettingsError as exc:
        exit_on_settings_error(exc, SERVICE_NAME)
    # uvloop asked for by name where it is not installed; the default quietly runs on asyncio's loop there.
    if "API_EVENT_LOOP" in os.environ and event_loop.loop_name(choice=settings.event_loop) != settings.event_loop:
        missing = SettingsError({"API_EVENT_LOOP": "uvloop is not installed here (install it, or choose asyncio)"})
        exit_on_settings_error(missing, SERVICE_NAME)
    configure_logging(SERVICE_NAME, __version__)
    try:
        app = build_app(settings, auth, database=database)  # reads the dev issuer's settings (DEV_REDIRECT_URIS, ...)
    except SettingsError as exc:
        exit_on_settings_error(exc, SERVICE_NAME)
    except DevIssuerMissing as exc:
        print(f"{SERVICE_NAME}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    event_loop.run(run(app, settings), choice=settings.event_loop)


if __name__ == "__main__":
    main()
