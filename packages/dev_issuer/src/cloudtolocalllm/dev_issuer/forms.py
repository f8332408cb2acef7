"""Reading the ``application/x-www-form-urlencoded`` bodies OAuth endpoints receive, bounded in size."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import Message

from cloudtolocalllm.dev_issuer.errors import OAuthError

__all__ = ["MAX_FORM_BYTES", "parse_form", "read_body", "read_form", "replay"]

MAX_FORM_BYTES: Final = 16 * 1024


async def read_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", "request body too large", status=413)
    return body


def parse_form(request: Request, body: bytes) -> dict[str, str]:
    """The first value of each field of a form body."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise OAuthError("invalid_request", "the body is not UTF-8") from None
    fields: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        fields.setdefault(key, value)
    return fields


async def read_form(request: Request) -> dict[str, str]:
    return parse_form(request, await read_body(request))


def replay(request: Request, body: bytes) -> Request:
    """The same request with its (already read) body readable again, for the flow behind this one."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)
