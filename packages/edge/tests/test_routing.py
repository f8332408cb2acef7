"""Host and path routing through real nginx: the seed's domain table, with request URIs passed unchanged."""

from __future__ import annotations

import pytest

from .edge_harness import Edge


@pytest.mark.parametrize(
    ("host", "path", "pool"),
    [
        ("localhost", "/", "static-site"),
        ("localhost", "/downloads/bridge.deb", "static-site"),
        ("docs.localhost", "/guide/install.html", "static-site"),
        ("app.localhost", "/", "flutter-app"),
        ("app.localhost", "/chat", "flutter-app"),
        ("app.localhost", "/api/bridge/status", "api-backend"),
        ("app.localhost", "/ws/other", "api-backend"),
        # Only app. routes /api/ to the backend; elsewhere it is just a path of that site.
        ("localhost", "/api/bridge/status", "static-site"),
        ("docs.localhost", "/api/reference.html", "static-site"),
        # "/api" without the slash is not under /api/ (the seed's /api/* pattern).
        ("app.localhost", "/apiary", "flutter-app"),
        # The bridge's discovery document, exactly that path; other well-known paths stay with the app.
        ("app.localhost", "/.well-known/cloudtolocalllm", "api-backend"),
        ("app.localhost", "/.well-known/cloudtolocalllm/x", "flutter-app"),
        ("app.localhost", "/.well-known/openid-configuration", "flutter-app"),
        ("localhost", "/.well-known/cloudtolocalllm", "static-site"),
    ],
)
def test_host_and_path_route_to_the_seed_pools(edge: Edge, host: str, path: str, pool: str) -> None:
    response = edge.get(host, path)
    assert response.status_code == 200
    assert response.json()["upstream"].split("#")[0] == pool


@pytest.mark.parametrize(
    "path",
    [
        "/api/ollama/api/chat",
        "/api/ollama/v1/chat/completions",
        "/api/ollama/api/blobs/sha256:0a1b",
        "/api/x%2Fy/%7Euser",
    ],
)
def test_api_prefix_and_encoding_reach_the_backend_unchanged(edge: Edge, path: str) -> None:
    response = edge.get("app.localhost", path + "?stream=true")
    body = response.json()
    assert body["upstream"].startswith("api-backend")
    assert body["path"] == path
    assert body["query"] == "stream=true"


def test_requests_spread_over_every_instance_of_a_pool(edge: Edge) -> None:
    seen = {edge.get("app.localhost", "/api/who").json()["upstream"] for _ in range(12)}
    assert seen == {"api-backend#1", "api-backend#2"}


def test_health_is_answered_by_nginx_itself(edge: Edge) -> None:
    for host in ("localhost", "docs.localhost", "app.localhost"):
        response = edge.get(host, "/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["service"] == "edge"
        assert "upstream" not in body  # the upstreams' /health answers carry no "service" and are not proxied
        assert body["config"] == edge.nginx.live_generation()


def test_unknown_host_gets_404_not_another_site(edge: Edge) -> None:
    for tls in (True, False):
        response = edge.get("evil.example", "/api/bridge/status", tls=tls)
        assert response.status_code == 404
        assert "location" not in response.headers
        assert response.text == "unknown host\n"


def test_upstream_sees_the_real_client_and_forwarding_headers(edge: Edge) -> None:
    # The client is not a trusted proxy here, so its X-Forwarded-For must not reach the backend.
    headers = edge.get(
        "app.localhost", "/api/echo", headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "abc-123"}
    ).json()["headers"]
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["host"] == "app.localhost"
    assert headers["x-request-id"] == "abc-123"


def test_request_id_generated_and_returned_when_the_client_sends_none_or_garbage(edge: Edge) -> None:
    response = edge.get("app.localhost", "/api/echo", headers={"X-Request-ID": "bad id\twith spaces"})
    rid = response.headers["x-request-id"]
    assert len(rid) == 32
    assert rid == response.json()["headers"]["x-request-id"]


def test_upstream_error_responses_pass_through_untouched(edge: Edge) -> None:
    # api-backend's own Ollama-shaped 503 ("no bridge") is not replaced by the edge's page.
    response = edge.get("app.localhost", "/api/own-error")
    assert response.status_code == 503
    assert response.json() == {"error": "no bridge connected"}
