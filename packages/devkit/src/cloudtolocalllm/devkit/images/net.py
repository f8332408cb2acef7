"""Loopback HTTP without a client library: the image tests and the local registry ask with these."""

from __future__ import annotations

import http.client
import socket
import urllib.parse
from collections.abc import Mapping


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain-HTTP GET to a loopback address; redirects are answers here, not followed."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    try:
        conn.request("GET", parts.path or "/", headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, _lower(response.headers), response.read()
    finally:
        conn.close()


def _lower(headers: Mapping[str, str] | http.client.HTTPMessage) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}
