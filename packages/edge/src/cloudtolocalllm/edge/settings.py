"""The controller's own settings, from ``EDGE_*`` environment variables (the edge config itself is a TOML file)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = ["ControllerSettings"]

PositiveSeconds = Annotated[float, Meta(gt=0)]


class ControllerSettings(msgspec.Struct, kw_only=True):
    """Read with ``load_settings(ControllerSettings, prefix="EDGE_")``: ``EDGE_CONFIG``, ``EDGE_ADMIN_PORT``..."""

    # The TOML edge configuration; unset: the built-in defaults (the seed's routing on *.localhost).
    config: str | None = None
    # The admin endpoints (/health, /ready, /metrics, /status). Never routed by nginx; bind 0.0.0.0 only
    # when something outside the container (Prometheus on the compose network) must scrape it.
    admin_host: str = "127.0.0.1"
    admin_port: Annotated[int, Meta(ge=0, le=65535)] = 9180
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # How often the certificate and key files are stat()ed for a renewal.
    cert_poll_interval: PositiveSeconds = 5.0
    # nginx restarts: the first after this delay, doubling up to the maximum while it keeps dying.
    restart_backoff: PositiveSeconds = 0.5
    restart_backoff_max: PositiveSeconds = 30.0
    # How long a reload may take before it is counted as failed (new workers not started).
    reload_timeout: PositiveSeconds = 10.0
    # SIGTERM: nginx gets SIGQUIT and this long to finish requests in flight before SIGTERM/SIGKILL.
    stop_timeout: PositiveSeconds = 20.0
    # Validity of the self-signed bootstrap certificate written when the configured one is missing.
    bootstrap_days: Annotated[int, Meta(ge=1, le=365)] = 30
