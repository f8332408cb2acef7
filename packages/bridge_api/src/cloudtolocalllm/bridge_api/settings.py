"""api-backend settings (environment variables prefixed ``API_``); auth comes from core's AuthSettings."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

import msgspec

from cloudtolocalllm.core.serving import DEFAULT_MAX_HEADER_BYTES
from cloudtolocalllm.protocol import DEFAULT_LIMITS

__all__ = ["ApiSettings", "data_dir_for", "replica_url_for"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

Positive = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class ApiSettings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    # Heartbeats well under common load-balancer idle timeouts (AWS ALB: 60 s).
    heartbeat_interval_s: Positive = 20.0
    heartbeat_timeout_s: Positive = 60.0
    handshake_timeout_s: Positive = 10.0
    reauth_grace_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    max_bridges_per_user: Count = 10
    max_streams_per_bridge: Count = 64
    max_streams_per_user: Count = 128
    # 256 KiB of payload plus the Data frame's header: one asyncio read travels as one frame.
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=4 * KiB, le=16 * MiB)] = DEFAULT_LIMITS.max_frame_bytes
    # Credit per stream and direction to start with: the most a slow reader makes us hold per stream.
    stream_window_bytes: Annotated[int, msgspec.Meta(ge=4 * KiB, le=1 * GiB)] = DEFAULT_LIMITS.initial_window
    # A response whose client reads fast may grow its window up to this (all of a bridge's streams by at
    # most four times it in total). Off by default: a client that reads fast and then stops keeps its grown
    # window, so it raises what one account can make the shared api-backend hold; token streams never need it.
    max_stream_window_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 * GiB)] = 0
    # Bodies are streamed, never held whole; JSON bodies are read (up to this) to route by model.
    max_request_body_bytes: Annotated[int, msgspec.Meta(ge=1)] = 256 * GiB
    max_json_body_bytes: Annotated[int, msgspec.Meta(ge=1 * KiB)] = 64 * MiB
    # What one account's JSON bodies may make this process hold at once (each is held until its request
    # ends); a body that does not fit gets 429. Must allow at least one body of the largest size.
    max_json_bytes_per_account: Annotated[int, msgspec.Meta(ge=1 * KiB)] = 128 * MiB
    # The request line and headers together; a longer one (or a line over 8 KiB, or over 100 headers) is
    # refused with a JSON 431 before any route sees it, /ws/bridge included.
    max_header_bytes: Annotated[int, msgspec.Meta(ge=8 * KiB, le=1 * MiB)] = DEFAULT_MAX_HEADER_BYTES
    # No total-time limit: a generation may run for minutes, and stream:false sends nothing until done.
    first_byte_timeout_s: Positive = 600.0
    idle_timeout_s: Positive = 300.0
    graceful_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    drain_retry_after_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    # After start-up (a restart, an update) bridges take about a second to reconnect: for this long, a
    # request for an account with no bridge yet waits for one instead of failing at once. 0 disables.
    reconnect_grace_s: Annotated[float, msgspec.Meta(ge=0, le=120)] = 10.0
    # Several replicas: the bridge directory lives in Redis (unset: in memory, one replica).
    redis_url: str = ""
    redis_timeout_s: Positive = 1.0
    # How peers reach this replica; unset: derived from the bind address (see replica_url_for).
    replica_url: str = ""
    # A replica refreshes its bridges' records every refresh interval; a dead replica's expire after the TTL.
    directory_ttl_s: Positive = 10.0
    directory_refresh_s: Positive = 3.0
    # API keys: the SQLite database lives here unless DATABASE_URL names another (PostgreSQL for replicas).
    # Unset: $XDG_DATA_HOME/cloudtolocalllm/api-backend (~/.local/share/...); containers mount a volume.
    data_dir: str = ""
    database_timeout_s: Positive = 2.0
    # A verified key is re-read from the database after this long at most; a revocation reaches every
    # replica at once through the broadcast, this only bounds staleness when a broadcast is lost.
    key_cache_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    key_usage_flush_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    max_keys_per_user: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 100
    # The cloud's public origin as users type it (https://app.example.com), published in the discovery
    # document (/.well-known/cloudtolocalllm). Unset: the origin each request arrived at (right when
    # api-backend is reached directly; behind a proxy set it, as api-backend reads no X-Forwarded-* headers).
    public_url: str = ""
    # The bridge's public OAuth client (an Auth0 Native application with the Device Code grant), published
    # in the discovery document so that `cloudtolocalllm-bridge login <cloud>` needs nothing else.
    bridge_client_id: Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,200}$")] = "cloudtolocalllm-bridge"
    # uvloop costs about a fifth less CPU per relayed request than asyncio's loop, and slow readers hold no
    # more on it (core.piecewise_transport); where it is not installed (Windows) the default falls back to
    # asyncio's loop, while API_EVENT_LOOP=uvloop there stops start-up (docs/performance.md).
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"

    def __post_init__(self) -> None:
        if self.redis_url and urlsplit(self.redis_url).scheme not in _REDIS_SCHEMES:
            # Never echo the URL: it may carry a password.
            raise ValueError(f"API_REDIS_URL must start with one of {', '.join(s + '://' for s in _REDIS_SCHEMES)}")
        if self.replica_url and (
            urlsplit(self.replica_url).scheme not in ("http", "https") or not urlsplit(self.replica_url).netloc
        ):
            raise ValueError(f"API_REPLICA_URL must be an http(s)://host:port URL (got {self.replica_url!r})")
        if self.max_json_bytes_per_account < self.max_json_body_bytes:
            raise ValueError("API_MAX_JSON_BYTES_PER_ACCOUNT must be at least API_MAX_JSON_BODY_BYTES")
        if self.public_url:
            parts = urlsplit(self.public_url)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.username
                or parts.password
                or parts.query
                or parts.fragment
            ):
                raise ValueError(
                    f"API_PUBLIC_URL must be a plain https://host[:port][/prefix] URL (got {self.public_url!r})"
                )
        if self.directory_refresh_s >= self.directory_ttl_s:
            raise ValueError("API_DIRECTORY_REFRESH_S must be shorter than API_DIRECTORY_TTL_S")


_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")


def replica_url_for(settings: ApiSettings, port: int) -> str:
    """This replica's URL as its peers reach it.

    API_REPLICA_URL wins. A specific bind address is reachable as is; behind a wildcard bind (containers,
    Swarm, Kubernetes) the address the hostname resolves to is the one peers use (the task's or pod's IP).
    """
    if settings.replica_url:
        return settings.replica_url.rstrip("/")
    host = settings.host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 (recognising a wildcard bind, not binding)
        host = socket.gethostbyname(socket.gethostname())
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def data_dir_for(settings: ApiSettings) -> Path:
    """Where this replica keeps its SQLite database (API_DATA_DIR, else the user's XDG data folder)."""
    if settings.data_dir:
        return Path(settings.data_dir)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cloudtolocalllm" / "api-backend"
