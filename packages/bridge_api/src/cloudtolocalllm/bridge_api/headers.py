"""Which headers cross the tunnel: end-to-end ones only, never the caller's credentials."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["request_headers_for_bridge", "response_headers_for_client"]

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The bridge talks to the user's own backend: it needs neither our credentials nor who the caller is.
_NOT_TO_BRIDGE: Final = HOP_BY_HOP | {
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
# A local backend must not set cookies on, or redirect around, the cloud's origin.
_NOT_TO_CLIENT: Final = HOP_BY_HOP | {"set-cookie", "server", "date", "alt-svc", "strict-transport-security"}


def request_headers_for_bridge(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    connection_tokens = _connection_tokens(raw)
    return [
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in raw
        if (lowered := name.decode("latin-1").lower()) not in _NOT_TO_BRIDGE and lowered not in connection_tokens
    ]


def response_headers_for_client(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in headers
        if name.lower() not in _NOT_TO_CLIENT
    ]


def _connection_tokens(raw: Iterable[tuple[bytes, bytes]]) -> set[str]:
    """Headers named in ``Connection:`` are hop-by-hop too (RFC 9110 §7.6.1)."""
    tokens: set[str] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
    return tokens
