"""Security headers on every response, cache rules, gzip, and the JSON access log."""

from __future__ import annotations

import gzip
import json
import re
import signal
import socket
from collections.abc import Callable

import pytest

from .edge_harness import Edge, assert_security_headers, wait_for

IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    ("method", "host", "path", "tls", "status"),
    [
        ("GET", "localhost", "/", True, 200),
        ("GET", "docs.localhost", "/guide.html", True, 200),
        ("GET", "app.localhost", "/api/bridge/status", True, 200),
        ("GET", "app.localhost", "/cached/missing.js?status=404", True, 404),
        ("GET", "app.localhost", "/health", True, 200),
        ("GET", "app.localhost", "/health", False, 200),
        ("GET", "app.localhost", "/chat", False, 301),
        ("GET", "unknown.example", "/", True, 404),
        ("GET", "unknown.example", "/", False, 404),
        ("GET", "app.localhost", "/.well-known/acme-challenge/none", False, 404),
        ("POST", "app.localhost", "/form", True, 413),
        ("GET", "app.localhost", "/api/own-error", True, 503),
        ("GET", "app.localhost", "/upstream-headers", True, 200),
    ],
)
def test_security_headers_on_every_response(
    edge: Edge, method: str, host: str, path: str, tls: bool, status: int
) -> None:
    content = b"\0" * (2 * 1024 * 1024) if status == 413 else None
    response = edge.request(method, host, path, tls=tls, content=content)
    assert response.status_code == status
    assert_security_headers(response, tls=tls)
    assert re.fullmatch(r"[A-Za-z0-9._:-]+", response.headers["x-request-id"])


def test_the_edge_values_replace_the_upstreams_security_headers(edge: Edge) -> None:
    # The upstream sends X-Frame-Options: DENY; two contradicting values would be worse than either.
    response = edge.get("app.localhost", "/upstream-headers")
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/cached/assets/app.3f2a9c1b.js", IMMUTABLE),
        ("/cached/assets/styles-0a1b2c3d4e.css", IMMUTABLE),
        # The unhashed app bundle and everything that names the current release must revalidate.
        ("/cached/main.dart.js", "no-cache"),
        ("/cached/flutter_service_worker.js", "no-cache"),
        ("/cached/flutter_bootstrap.js", "no-cache"),
        ("/cached/index.html", "no-cache"),
        ("/cached/", "no-cache"),
        ("/cached/version.json", "no-cache"),
        ("/cached/manifest.json", "no-cache"),
        # A hash-like name with an HTML extension is still HTML.
        ("/cached/page.3f2a9c1b.html", "no-cache"),
        # No rule: the upstream's own header passes.
        ("/cached/assets/logo.png", "max-age=60"),
        ("/cached/app.js", "max-age=60"),
        # Errors never get the one-year lifetime (a cached 404 for an asset would outlive the fix).
        ("/cached/assets/gone.3f2a9c1b.js?status=404", "max-age=60"),  # its own path: the key has no query
    ],
)
def test_cache_rules(edge: Edge, path: str, expected: str) -> None:
    response = edge.get("app.localhost", path)
    assert response.headers.get_list("cache-control") == [expected]


def test_cache_rules_do_not_touch_the_api(edge: Edge) -> None:
    response = edge.get("app.localhost", "/api/assets/app.3f2a9c1b.js")
    assert response.json()["upstream"].startswith("api-backend")
    assert "cache-control" not in response.headers


def test_gzip_for_json_but_never_for_ndjson(edge: Edge) -> None:
    client = edge.client()
    headers = {"Host": "app.localhost", "Accept-Encoding": "gzip"}
    with client.stream("GET", edge.url("/api/big"), headers=headers) as response:
        raw = response.read()  # httpx decodes; check the wire headers and the compression ratio
        assert response.headers["content-encoding"] == "gzip"
        assert "accept-encoding" in response.headers["vary"].lower()
        assert len(raw) > 10_000
    direct = client.get(edge.url("/api/big"), headers={"Host": "app.localhost", "Accept-Encoding": "identity"})
    assert "content-encoding" not in direct.headers
    assert len(gzip.compress(direct.content)) < len(direct.content) / 3
    ndjson = client.get(edge.url("/api/big-ndjson"), headers=headers)
    assert "content-encoding" not in ndjson.headers
    assert ndjson.text.count("\n") == 200


CORE_ACCESS_FIELDS = {
    "ts",
    "level",
    "service",
    "version",
    "logger",
    "request_id",
    "msg",
    "method",
    "route",
    "status",
    "duration_ms",
    "bytes",
}


def _entry(edge: Edge, path: str) -> dict[str, object]:
    """The last access-log line for ``path``, polled: lines are buffered for up to [logging] flush_s (1 s)."""
    found: list[dict[str, object]] = []

    def logged() -> bool:
        found[:] = [json.loads(line) for line in edge.log_lines() if f'"path":"{path}"' in line]
        return bool(found)

    wait_for(logged, f"the access log line for {path}", timeout=5)
    return found[-1]


def test_access_log_is_json_in_cores_schema_without_query_or_credentials(edge: Edge) -> None:
    response = edge.get(
        "app.localhost",
        "/api/log-check?token=secret-query-token-123&x=1",
        headers={"Authorization": "Bearer secret-header-token-456", "Cookie": "session=secret-cookie-789"},
    )
    assert response.status_code == 200
    entry = _entry(edge, "/api/log-check")
    assert set(entry) >= CORE_ACCESS_FIELDS | {"path"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(entry["ts"]))
    assert entry["level"] == "info"
    assert entry["service"] == "edge"
    assert entry["msg"] == "request"
    assert entry["method"] == "GET"
    assert entry["route"] == "/api/"
    assert entry["path"] == "/api/log-check"
    assert entry["status"] == 200
    assert isinstance(entry["duration_ms"], int)
    assert entry["bytes"] == int(response.headers["content-length"])
    assert entry["request_id"] == response.headers["x-request-id"]
    assert entry["upstream"] == "api-backend"
    text = edge.access_log.read_text()
    for secret in ("secret-query-token-123", "secret-header-token-456", "secret-cookie-789", "token="):
        assert secret not in text
    for line in text.splitlines():
        json.loads(line)  # every line is one JSON object, whatever the request looked like


def test_access_log_escapes_hostile_paths(edge: Edge) -> None:
    # A raw request line (clients would percent-encode these): quotes and backslashes must not break the JSON.
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=5) as sock:
        sock.sendall(b'GET /evil"quote\\back HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n')
        assert sock.recv(100).startswith(b"HTTP/1.1 ")
    entry = _entry(edge, '/evil\\"quote\\\\back')
    assert entry["path"] == '/evil"quote\\back'


def test_errors_are_logged_with_error_level(edge: Edge) -> None:
    edge.get("app.localhost", "/cached/x.js?status=404")
    assert _entry(edge, "/cached/x.js")["level"] == "warning"


@pytest.mark.parametrize("event", ["reload", "graceful stop", "fast stop"])
def test_a_buffered_line_is_written_on_reload_and_on_shutdown(make_edge: Callable[..., Edge], event: str) -> None:
    # flush_s = 60 (the default is 1): within this test only the event itself can have written the line.
    edge = make_edge({"logging": {"flush_s": 60}})
    path = "/api/buffered-" + event.replace(" ", "-")
    response = edge.get("app.localhost", path, headers={"Authorization": "Bearer secret-buffered-token"})
    assert response.status_code == 200
    assert edge.get("app.localhost", "/health").status_code == 200  # one round trip later: still buffered
    assert not [line for line in edge.log_lines() if path in line]
    if event == "reload":
        edge.nginx.reload()  # the old worker writes its buffer when it exits
        wait_for(lambda: any(path in line for line in edge.log_lines()), "the line after the reload")
    else:
        process = edge.nginx.process
        assert process is not None
        process.send_signal(signal.SIGQUIT if event == "graceful stop" else signal.SIGTERM)
        assert process.wait(15) == 0
    (line,) = [line for line in edge.log_lines() if path in line]
    entry = json.loads(line)
    assert set(entry) >= CORE_ACCESS_FIELDS | {"path"}
    assert (entry["path"], entry["status"], entry["request_id"]) == (path, 200, response.headers["x-request-id"])
    assert "secret-buffered-token" not in edge.access_log.read_text()
