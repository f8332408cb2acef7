"""``cloudtolocalllm-static-site``: serve ``STATIC_ROOT`` until SIGTERM (settings: see ``settings.py``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from cloudtolocalllm.core import SettingsError, bind_socket, configure_logging, exit_on_settings_error, serve
from cloudtolocalllm.static_site.app import build_app
from cloudtolocalllm.static_site.settings import load
from cloudtolocalllm.static_site.version import __version__

__all__ = ["main"]

PROG = "cloudtolocalllm-static-site"

log = logging.getLogger("cloudtolocalllm.static_site")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve one directory over HTTP. Configured by STATIC_* environment variables "
        "(STATIC_ROOT required; STATIC_HOST, STATIC_PORT, STATIC_SPA, STATIC_CSP, STATIC_MAX_AGE, "
        "STATIC_SERVICE_NAME, STATIC_LOG_LEVEL, STATIC_GRACEFUL_TIMEOUT_S).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.parse_args(argv)
    try:
        settings = load()
    except SettingsError as exc:
        exit_on_settings_error(exc, PROG)
    configure_logging(settings.service_name, __version__, level=settings.log_level)
    app = build_app(settings)
    sock = bind_socket(settings.host, settings.port)
    log.info(
        "listening",
        extra={
            "host": settings.host,
            "port": sock.getsockname()[1],
            "root": settings.root,
            "spa": settings.spa,
        },
    )
    asyncio.run(
        serve(
            app,
            sock=sock,
            graceful_timeout_s=settings.graceful_timeout_s,
        )
    )


if __name__ == "__main__":
    main()
