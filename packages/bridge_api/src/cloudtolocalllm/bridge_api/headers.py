"""Which headers cross the tunnel: end-to-end ones only, never the caller's credentials."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from cloudtolocalllm.protocol.hop_by_hop import drop_hop_by_hop

__all__ = ["request_headers_for_bridge", "response_headers_for_client"]

# The bridge talks to the user's own backend: it needs neither our credentials nor who the caller is.
_NOT_TO_BRIDGE: Final = frozenset(
    {
        "authorization",
        "cookie",
        "host",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "x-cloudtolocalllm-bridge",
        "x-cloudtolocalllm-forwarded",
    }
)
# A local backend must not set cookies on, or redirect around, the cloud's origin.
_NOT_TO_CLIENT: Final = frozenset({"set-cookie", "server", "date", "alt-svc", "strict-transport-security"})


def request_headers_for_bridge(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in drop_hop_by_hop(raw, also=_NOT_TO_BRIDGE)
    ]


def response_headers_for_client(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in drop_hop_by_hop(headers, also=_NOT_TO_CLIENT)
    ]
