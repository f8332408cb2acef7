"""api-backend settings (environment variables prefixed ``API_``); auth comes from core's AuthSettings."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["ApiSettings"]

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
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=4 * KiB, le=16 * MiB)] = 256 * KiB
    stream_window_bytes: Annotated[int, msgspec.Meta(ge=4 * KiB, le=1 * GiB)] = 1 * MiB
    # Bodies are streamed, never held whole; JSON bodies are read (up to this) to route by model.
    max_request_body_bytes: Annotated[int, msgspec.Meta(ge=1)] = 256 * GiB
    max_json_body_bytes: Annotated[int, msgspec.Meta(ge=1 * KiB)] = 64 * MiB
    # No total-time limit: a generation may run for minutes, and stream:false sends nothing until done.
    first_byte_timeout_s: Positive = 600.0
    idle_timeout_s: Positive = 300.0
    graceful_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    drain_retry_after_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0
