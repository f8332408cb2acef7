"""nginx's stderr lines: parsed into levels and fields, scrubbed of query strings and credentials."""

from __future__ import annotations

import logging

import pytest

from cloudtolocalllm.edge.logs import parse_nginx_line, scrub

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsImF1ZCI6ImFwaSJ9.SflKxwRJSMeKKF2QT4fwpMeJf36P"


@pytest.mark.parametrize(
    ("raw", "secret"),
    [
        ('request: "GET /ws/bridge?token=s3cr3t HTTP/1.1"', "s3cr3t"),
        ('upstream: "http://10.0.0.5:8080/api/x?access_token=s3cr3t&a=1"', "s3cr3t"),
        ('referrer: "https://app.example/chat?code=s3cr3t"', "s3cr3t"),
        ("Authorization: Bearer s3cr3t", "s3cr3t"),
        ('"authorization": "Basic czNjcjN0"', "czNjcjN0"),
        ("bearer s3cr3t.value", "s3cr3t"),
        (f"invalid token {JWT} presented", JWT[:20]),
        ("Cookie: session=s3cr3t; theme=dark", "s3cr3t"),
        ("body: refresh_token=s3cr3t&grant_type=refresh", "s3cr3t"),
        ("x-api-key: s3cr3t", "s3cr3t"),
        ("client_secret=s3cr3t", "s3cr3t"),
    ],
)
def test_scrub_removes_credentials_and_query_strings(raw: str, secret: str) -> None:
    cleaned = scrub(raw)
    assert secret not in cleaned
    assert "[redacted]" in cleaned


def test_scrub_keeps_what_troubleshooting_needs() -> None:
    line = (
        "connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, "
        'server: app.localhost, request: "GET /api/tags?x=1 HTTP/1.1", upstream: "http://127.0.0.1:9/api/tags", '
        'host: "app.localhost"'
    )
    assert scrub(line) == line.replace("?x=1", "?[redacted]")


def test_an_nginx_error_line_becomes_a_level_and_fields() -> None:
    level, message, extra = parse_nginx_line(
        "2026/01/02 03:04:05 [error] 41#41: *7 client intended to send too large body: 2097152 bytes, "
        'client: 127.0.0.1, server: app.localhost, request: "POST /form?token=abc HTTP/1.1", host: "app.localhost"\n'
    )
    assert level == logging.ERROR
    assert message.startswith("client intended to send too large body")
    assert "abc" not in message
    assert extra == {"nginx_level": "error", "nginx_pid": 41, "connection": 7}


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("nginx: [emerg] bind() to 127.0.0.1:80 failed (98: Address already in use)", logging.CRITICAL),
        ('2026/01/02 03:04:05 [warn] 41#41: the "user" directive makes sense only as root', logging.WARNING),
        ("2026/01/02 03:04:05 [notice] 41#41: signal process started", logging.INFO),
        ("something nginx printed without a level", logging.WARNING),
    ],
)
def test_levels(line: str, level: int) -> None:
    assert parse_nginx_line(line)[0] == level
