"""Structured logs: one JSON object per line, request ids, and nothing secret or conversational."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloudtolocalllm.core import ServiceInfo, configure_logging, create_app, current_request_id
from cloudtolocalllm.core.logging import JsonFormatter

SECRET_TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"
PROMPT = "my private prompt about my medical history"
ANSWER = "a private answer the cloud must not keep"
COOKIE = "session=cookie-value-9f8e7d"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("svc", "1.2.3", stream=stream)
    yield stream
    root.handlers[:], root.level = saved


async def chat(request: Request) -> JSONResponse:
    body = await request.json()
    logging.getLogger("svc.chat").info(
        "handled chat",
        extra={"model": body["model"], "prompt": body["prompt"], "inner_request_id": current_request_id()},
    )
    return JSONResponse({"response": ANSWER})


async def test_request_with_secrets_leaves_none_in_the_logs(log_output: io.StringIO) -> None:
    app = create_app(ServiceInfo("svc", "1.2.3"), [Route("/api/chat", chat, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post(
            f"/api/chat?token={SECRET_TOKEN}&api_key=k-123456",
            json={"model": "smollm2", "prompt": PROMPT},
            headers={"Authorization": f"Bearer {SECRET_TOKEN}", "Cookie": COOKIE, "X-Request-ID": "req-42"},
        )
    assert response.json() == {"response": ANSWER}
    text = log_output.getvalue()
    for secret in (SECRET_TOKEN, "k-123456", PROMPT, ANSWER, "cookie-value-9f8e7d", "token="):
        assert secret not in text

    lines = [json.loads(line) for line in text.splitlines()]
    handled = next(line for line in lines if line["msg"] == "handled chat")
    assert handled["model"] == "smollm2"
    assert handled["inner_request_id"] == "req-42"
    assert handled["request_id"] == "req-42"
    assert "prompt" not in handled

    access = next(line for line in lines if line["logger"] == "cloudtolocalllm.access")
    assert access["method"] == "POST"
    assert access["route"] == "/api/chat"
    assert access["status"] == 200
    assert access["bytes"] == len(response.content)
    assert access["duration_ms"] >= 0
    assert access["request_id"] == "req-42"
    assert {"ts", "level", "service", "version"} <= access.keys()
    assert access["service"] == "svc"
    assert access["version"] == "1.2.3"


def test_every_line_is_one_json_object(log_output: io.StringIO) -> None:
    log = logging.getLogger("svc.test")
    log.warning("multi\nline message", extra={"count": 3, "obj": object()})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    lines = log_output.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "multi\nline message"
    assert first["level"] == "warning"
    assert first["count"] == 3
    assert first["request_id"] is None
    assert first["ts"].endswith("Z")
    assert "ValueError: bad" in second["exc"]


def test_timestamps_are_utc_to_the_millisecond_across_seconds() -> None:
    formatter = JsonFormatter("svc", "1.2.3")
    record = logging.LogRecord("svc", logging.INFO, __file__, 1, "tick", None, None)
    stamps = []
    # The text of a second is kept between records: a new second, and a return to an old one, must show.
    for created in (1_700_000_000.125, 1_700_000_000.75, 1_700_000_001.0, 1_700_000_000.5):
        record.created = created
        stamps.append(json.loads(formatter.format(record))["ts"])
    assert stamps == [
        "2023-11-14T22:13:20.125Z",
        "2023-11-14T22:13:20.750Z",
        "2023-11-14T22:13:21.000Z",
        "2023-11-14T22:13:20.500Z",
    ]


def test_extra_fields_are_written_and_redacted_ones_dropped() -> None:
    formatter = JsonFormatter("svc", "1.2.3")
    record = logging.LogRecord("svc", logging.INFO, __file__, 1, "request", None, None)
    record.__dict__.update({"status": 200, "Authorization": "Bearer x", "prompt": "hi", "msg_extra": [1]})
    line = json.loads(formatter.format(record))
    assert line["status"] == 200 and line["msg_extra"] == [1]
    assert "Authorization" not in line and "prompt" not in line
    assert line["msg"] == "request"  # an extra field never overwrites the record's own
