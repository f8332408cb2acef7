"""Oversized or malformed request heads through real nginx: JSON on the API paths, HTML elsewhere.

nginx refuses such a head before any location matches, so these answers come from the server's error_page;
the requests are written on raw sockets so the head reaches nginx exactly as built here.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .edge_harness import Edge, UpstreamServers, pool_instances, start_edge


def _exchange(edge: Edge, head: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    block, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *lines = block.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _head(host: str, path: str, extra: list[tuple[str, str]], *, upgrade: bool = False) -> bytes:
    headers = [("Host", host), ("Connection", "Upgrade" if upgrade else "close")]
    if upgrade:
        key = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        headers += [("Upgrade", "websocket"), key, ("Sec-WebSocket-Version", "13")]
    lines = [f"GET {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers + extra)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.fixture(scope="module")
def plain_edge(
    upstreams: UpstreamServers, tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    """Plain HTTP, so the raw requests need no TLS; the head handling is the same on both."""
    instance = start_edge(tmp_path_factory, tls_files, pool_instances(upstreams), {"tls": {"enabled": False}})
    try:
        yield instance
    finally:
        instance.close()


@pytest.mark.parametrize(
    ("path", "upgrade"), [("/api/ollama/api/tags", False), ("/api/bridge/status", False), ("/ws/bridge", True)]
)
def test_a_header_line_over_the_buffer_gets_a_json_431_on_the_api_paths(
    plain_edge: Edge, path: str, upgrade: bool
) -> None:
    status, headers, body = _exchange(
        plain_edge, _head("app.localhost", path, [("X-Big", "a" * 9000)], upgrade=upgrade)
    )
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "request header line too long (at most 8k per line)"}
    assert headers["x-content-type-options"] == "nosniff"  # the security headers, as on every answer


def test_a_malformed_header_gets_a_json_400_on_the_api_paths(plain_edge: Edge) -> None:
    head = b"GET /api/ollama/api/tags HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\nNo colon here\r\n\r\n"
    status, headers, body = _exchange(plain_edge, head)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "bad request"}


def test_the_site_paths_keep_an_html_page(plain_edge: Edge) -> None:
    status, headers, body = _exchange(plain_edge, _head("app.localhost", "/index.html", [("X-Big", "a" * 9000)]))
    assert status == 431
    assert headers["content-type"] == "text/html"
    assert body.startswith(b"<!doctype html>")


def test_a_head_within_the_buffer_reaches_the_upstream(plain_edge: Edge) -> None:
    # Four buffers of 8k: more than one long line passes as long as each fits one.
    padding = [(f"X-Pad-{n}", "b" * 7000) for n in range(2)]
    status, _, body = _exchange(plain_edge, _head("app.localhost", "/api/ollama/api/tags", padding))
    assert status == 200
    assert json.loads(body)["upstream"].startswith("api-backend")


def test_the_refusals_leave_no_uninitialised_variable_warnings(plain_edge: Edge) -> None:
    _exchange(plain_edge, _head("app.localhost", "/api/x", [("X-Big", "a" * 9000)]))
    assert "uninitialized" not in plain_edge.error_log.read_text()


def test_the_line_limit_is_a_setting(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge({"tls": {"enabled": False}, "nginx": {"header_buffer": "16k"}})
    # 9000 bytes now pass the edge and reach the upstream, which (served by core) has its own 8 KiB line limit.
    status, _, body = _exchange(edge, _head("app.localhost", "/api/ollama/api/tags", [("X-Big", "a" * 9000)]))
    assert (status, json.loads(body)) == (431, {"error": "request header line too long (at most 8192 bytes per line)"})
    status, _, body = _exchange(edge, _head("app.localhost", "/api/ollama/api/tags", [("X-Big", "a" * 17000)]))
    assert (status, json.loads(body)) == (431, {"error": "request header line too long (at most 16k per line)"})
