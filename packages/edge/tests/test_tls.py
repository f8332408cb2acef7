"""TLS 1.2/1.3 only, HTTP/2 via ALPN, HSTS, HTTP -> HTTPS redirect, ACME challenges over plain HTTP."""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from .edge_harness import Edge, assert_security_headers


def _handshake(edge: Edge, context: ssl.SSLContext, server_hostname: str = "app.localhost") -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", edge.https_port), timeout=5)
    try:
        return context.wrap_socket(sock, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise


def _legacy_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that really offers an old protocol (OpenSSL 3 needs security level 0 for that)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_before_1_2_is_refused(edge: Edge, version: ssl.TLSVersion) -> None:
    with pytest.raises(ssl.SSLError):
        _handshake(edge, _legacy_client(version)).close()


def test_the_legacy_client_would_succeed_if_the_edge_allowed_tls_1_1(make_edge: Callable[..., Edge]) -> None:
    # Control for the test above: the refusal comes from the edge's ssl_protocols, not from the client.
    legacy = make_edge()
    text = legacy.nginx.conf_path.read_text()
    weakened = text.replace("ssl_protocols TLSv1.2 TLSv1.3;", "ssl_protocols TLSv1.1 TLSv1.2 TLSv1.3;")
    weakened = weakened.replace("ssl_ciphers ", "ssl_ciphers ALL:@SECLEVEL=0:", 1)
    assert weakened != text
    legacy.apply(weakened.replace(legacy.nginx.live_generation() or "", "weakened00000000"))
    with _handshake(legacy, _legacy_client(ssl.TLSVersion.TLSv1_1)) as tls:
        assert tls.version() == "TLSv1.1"


@pytest.mark.parametrize(
    ("version", "name"), [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")]
)
def test_tls_1_2_and_1_3_with_forward_secret_ciphers_and_a_valid_certificate(
    edge: Edge, version: ssl.TLSVersion, name: str
) -> None:
    context = edge.ssl_context()  # verifies the chain and the host name
    context.minimum_version = version
    context.maximum_version = version
    with _handshake(edge, context) as tls:
        assert tls.version() == name
        cipher = tls.cipher()
        assert cipher is not None
        assert name == "TLSv1.3" or cipher[0].startswith("ECDHE-")


def test_http2_is_offered_via_alpn(edge: Edge) -> None:
    context = edge.ssl_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with _handshake(edge, context) as tls:
        assert tls.selected_alpn_protocol() == "h2"


def test_https_responses_carry_hsts(edge: Edge) -> None:
    response = edge.get("app.localhost", "/chat")
    assert response.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("app.localhost", "/chat?room=1"),
        ("localhost", "/"),
        ("docs.localhost", "/guide/a%20b.html"),
        ("app.localhost", "/api/tags"),
    ],
)
def test_plain_http_redirects_to_https_keeping_host_and_path(edge: Edge, host: str, path: str) -> None:
    response = edge.get(host, path, tls=False)
    assert response.status_code == 301
    assert response.headers["location"] == f"https://{host}:{edge.https_port}{path}"
    assert_security_headers(response, tls=False)


def test_redirect_omits_the_default_port(make_edge: Callable[..., Edge]) -> None:
    edge = make_edge({"listen": {"public_https_port": 443}})
    response = edge.get("app.localhost", "/chat", tls=False)
    assert response.headers["location"] == "https://app.localhost/chat"


def test_acme_challenges_are_served_over_plain_http(edge: Edge) -> None:
    webroot = Path(edge.config.acme.webroot)
    token = "Xk2-challenge_token"
    (webroot / ".well-known" / "acme-challenge" / token).write_text("Xk2-challenge_token.key-authorization")
    for host in ("localhost", "docs.localhost", "app.localhost"):
        response = edge.get(host, f"/.well-known/acme-challenge/{token}", tls=False)
        assert response.status_code == 200
        assert response.text == "Xk2-challenge_token.key-authorization"
        assert response.headers["content-type"].startswith("text/plain")
    missing = edge.get("app.localhost", "/.well-known/acme-challenge/absent", tls=False)
    assert missing.status_code == 404
    assert "location" not in missing.headers
    assert_security_headers(missing, tls=False)
