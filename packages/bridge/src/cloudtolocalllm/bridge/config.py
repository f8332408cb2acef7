"""The bridge's settings: environment variables (``CLOUDTOLOCALLLM_BRIDGE_*``) overridden by CLI flags.

:class:`BridgeSettings` is read with core's ``load_settings``, so a bad environment gives one error naming
every bad variable. The token itself is not a setting: it comes from a token file or ``CLOUDTOLOCALLLM_TOKEN``
(see ``token``) and is re-read whenever it is needed.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = [
    "ENV_PREFIX",
    "BackendKindSetting",
    "BridgeSettings",
    "ConfigError",
    "backend_base_url",
    "default_state_dir",
    "is_loopback_host",
    "tunnel_url",
]

ENV_PREFIX = "CLOUDTOLOCALLLM_BRIDGE_"


class ConfigError(ValueError):
    """A setting has a value the bridge cannot use; the message names it."""


class BackendKindSetting(StrEnum):
    """``--backend-kind``: which API the local server speaks, or ``auto`` to probe for it."""

    OLLAMA = "ollama"
    OPENAI = "openai"
    AUTO = "auto"


PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]


class BridgeSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Every setting, with its default. Environment variable: ``CLOUDTOLOCALLLM_BRIDGE_<FIELD>``."""

    cloud_url: str = ""
    """The cloud's base URL (https://..., wss://..., or http://127.0.0.1:8080 in development)."""
    token_file: str = ""
    """File holding the bearer token; re-read on every connect and reauth."""
    backend_url: str = "http://127.0.0.1:11434"
    """The local LLM server's base URL: the only place the bridge sends requests to."""
    backend_kind: BackendKindSetting = BackendKindSetting.OLLAMA
    read_only: bool = False
    """Refuse pull, push, create, copy, delete and blob uploads."""
    name: str = ""
    """Shown in the cloud's bridge list; defaults to the host name."""
    state_dir: str = ""
    """Where the bridge id and the status file live; defaults to the user's config dir."""
    log_level: str = "INFO"
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """``asyncio`` runs the bridge on asyncio's own loop even where uvloop is installed (troubleshooting);
    without uvloop (Windows) it always does."""
    backend_connect_timeout_s: PositiveSeconds = 5.0
    backend_idle_timeout_s: PositiveSeconds = 300.0
    """Longest silence from the backend while a request is in flight (never a total-time limit)."""
    status_interval_s: PositiveSeconds = 15.0
    """How often the backend's reachability and model list are polled."""
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 30.0
    """On SIGTERM/SIGINT: how long in-flight streams may take to finish."""
    handshake_timeout_s: PositiveSeconds = 20.0
    backoff_base_s: PositiveSeconds = 1.0
    backoff_cap_s: PositiveSeconds = 60.0
    stable_after_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 30.0
    """A connection must stay up this long before the reconnect backoff starts again from scratch."""
    reauth_margin_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 30.0
    """Renew the token (send the cloud a fresh one) at least this long before it expires."""
    max_receive_window_bytes: Annotated[int, msgspec.Meta(ge=0, le=256 * 1024 * 1024)] = 16 * 1024 * 1024
    """Largest window an upload (a request body from the cloud) may grow to; 0 keeps the cloud's initial
    window. Memory: at most this per fast upload; the growth of all uploads together at most four times it,
    on top of the window each stream starts with."""
    issuer_url: str = ""
    """``login``: the OAuth issuer (``https://<AUTH0_DOMAIN>/``, or the dev issuer's URL)."""
    client_id: str = "cloudtolocalllm-bridge"
    """``login``: the OAuth client id (an Auth0 Native application with the Device Code grant)."""
    audience: str = ""
    """``login``: the API identifier the cloud verifies tokens for (AUTH0_AUDIENCE / DEV_AUDIENCE)."""

    def __post_init__(self) -> None:
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"{ENV_PREFIX}LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR")
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError(f"{ENV_PREFIX}BACKOFF_CAP_S must not be below {ENV_PREFIX}BACKOFF_BASE_S")

    def bridge_name(self) -> str:
        """The configured name or the host name, clipped to the 128 characters the cloud accepts."""
        return (self.name or socket.gethostname() or "bridge")[:128]

    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser() if self.state_dir else default_state_dir()


def default_state_dir() -> Path:
    """``$XDG_CONFIG_HOME/cloudtolocalllm/bridge`` (``%APPDATA%`` on Windows, ``~/.config`` otherwise)."""
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "cloudtolocalllm" / "bridge"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cloudtolocalllm" / "bridge"


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def tunnel_url(cloud_url: str) -> str:
    """The tunnel endpoint ``<cloud>/ws/bridge`` as a ws:// or wss:// URL.

    http maps to ws and https to wss; a path prefix is kept (``https://host/prefix`` ->
    ``wss://host/prefix/ws/bridge``). Credentials, query strings and fragments are refused: the token
    travels in the Authorization header only, never in the URL.
    """
    if not cloud_url:
        raise ConfigError("no cloud URL: pass --cloud URL or set CLOUDTOLOCALLLM_BRIDGE_CLOUD_URL")
    parts = urlsplit(cloud_url.strip())
    scheme = _WS_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ConfigError(f"cloud URL {cloud_url!r}: expected https://host (or http://127.0.0.1:port)")
    if parts.username or parts.password:
        raise ConfigError("cloud URL must not contain credentials; the token comes from --token-file")
    if parts.query or parts.fragment:
        raise ConfigError("cloud URL must not contain a query string or fragment")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/bridge"):
        path += "/ws/bridge"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def backend_base_url(url: str) -> str:
    """The backend base URL, checked: http(s), a host, no credentials/query/fragment; no trailing '/'."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"backend URL {url!r}: expected http://host:port (e.g. http://127.0.0.1:11434)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"backend URL {url!r} must be a plain base URL (no credentials, query or fragment)")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"backend URL {url!r} has an invalid port") from None
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
