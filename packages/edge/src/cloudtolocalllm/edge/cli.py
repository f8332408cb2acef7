"""``cloudtolocalllm-edge``: the nginx-proxy container's entrypoint.

Reads ``EDGE_*`` settings and the TOML file named by ``EDGE_CONFIG``, then runs the controller until SIGTERM
or SIGINT: nginx is stopped gracefully (SIGQUIT) and the process exits 0. SIGHUP re-reads the certificate
files and reloads nginx at once (a certbot deploy hook may send it; the file watcher would notice anyway).
Exit status 2: invalid settings or configuration (every problem is named); 1: nginx accepts no configuration.

``cloudtolocalllm-edge set-pool <pool> <host:port>...`` asks the running controller (its admin port, on
loopback) to make those the pool's instances; see :mod:`cloudtolocalllm.edge.pools`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from cloudtolocalllm.core import (
    SettingsError,
    bind_socket,
    configure_logging,
    exit_on_settings_error,
    load_settings,
    serve,
)
from cloudtolocalllm.edge.config import ConfigError, EdgeConfig, load_config
from cloudtolocalllm.edge.controller import Controller, StartError
from cloudtolocalllm.edge.pools import set_pool_command
from cloudtolocalllm.edge.settings import ControllerSettings
from cloudtolocalllm.edge.version import __version__

__all__ = ["main", "run"]

PROG = "cloudtolocalllm-edge"
logger = logging.getLogger("cloudtolocalllm.edge")


async def run(config: EdgeConfig, settings: ControllerSettings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    controller = Controller(config, settings, subreaper=True)

    pending: set[asyncio.Task[bool]] = set()

    def reload_certificates() -> None:
        task = loop.create_task(controller.certificate_changed())
        pending.add(task)
        task.add_done_callback(pending.discard)

    sock = bind_socket(settings.admin_host, settings.admin_port)
    host, port = sock.getsockname()[:2]
    server = asyncio.create_task(serve(controller.app, sock=sock, graceful_timeout_s=5, shutdown_trigger=stop.wait))
    logger.info("admin endpoints listening", extra={"admin_address": f"{host}:{port}"})
    try:
        try:
            await controller.start()
        except StartError as exc:
            logger.critical("nginx accepts no configuration: %s", exc)
            stop.set()
            await controller.stop()
            return 1
        loop.add_signal_handler(signal.SIGHUP, reload_certificates)
        await stop.wait()
        logger.info("stopping: nginx finishes the requests in flight")
        await controller.stop()
        return 0
    finally:
        stop.set()
        await server
        sock.close()


def main() -> None:
    if sys.argv[1:2] == ["set-pool"]:
        raise SystemExit(set_pool_command(sys.argv[2:]))
    try:
        settings = load_settings(ControllerSettings, prefix="EDGE_")
    except SettingsError as exc:
        exit_on_settings_error(exc, PROG)
    try:
        config = load_config(settings.config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(config.logging.service, __version__, level=settings.log_level.upper())
    raise SystemExit(asyncio.run(run(config, settings)))


if __name__ == "__main__":
    main()
