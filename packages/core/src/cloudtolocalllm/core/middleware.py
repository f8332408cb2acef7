"""Pure ASGI middleware (not BaseHTTPMiddleware, which breaks contextvars and streaming).

- :class:`RequestContextMiddleware`: request id, one access-log line, the HTTP metrics and the security
  headers (on every HTTP response, errors included) per request.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudtolocalllm.core.logging import request_id_var
from cloudtolocalllm.core.metrics import UNMATCHED_ROUTE, HttpMetrics

__all__ = [
    "DEFAULT_SECURITY_HEADERS",
    "REQUEST_ID_HEADER",
    "RequestContextMiddleware",
    "route_template",
]

REQUEST_ID_HEADER: Final = "x-request-id"
# Accept a caller's id only if it is short and inert, so it cannot inject into logs or headers.
_VALID_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")

DEFAULT_SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "X-XSS-Protection": "1; mode=block",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}

access_log = logging.getLogger("cloudtolocalllm.access")


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def route_template(scope: Scope, root_path: str) -> str:
    """The matched route's template (``/api/items/{id}``), never the concrete path or query."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED_ROUTE
    # Inside a Mount, starlette records only the inner route; its static prefix is in root_path.
    mount_prefix = str(scope.get("root_path", ""))[len(root_path) :]
    return mount_prefix + path


class RequestContextMiddleware:
    """Sets the request id, logs one access line and records metrics for each HTTP/WebSocket request."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, security_headers: Iterable[tuple[str, str]]) -> None:
        self.app = app
        self.metrics = metrics
        # The security headers are added in this layer's send wrapper too: one layer less per message on
        # the hot path, and it sits outside starlette's error handler, so 500s carry them.
        self.security_headers = _encoded(security_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope)
        token = request_id_var.set(request_id)
        root_path = str(scope.get("root_path", ""))
        started = time.perf_counter()
        status = 0
        sent_bytes = 0
        security_headers = self.security_headers if scope["type"] == "http" else None
        request_id_header = (_REQUEST_ID_RAW, request_id.encode("latin-1"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent_bytes
            kind = message["type"]
            if kind == "http.response.body" or kind == "websocket.http.response.body":
                sent_bytes += len(message.get("body", b""))
            elif kind == "http.response.start" or kind == "websocket.http.response.start":
                status = message["status"]
                raw = list(message.get("headers", ()))
                if security_headers is not None:
                    message = {**message, "headers": _with_security_headers(raw, security_headers)}
                    raw = message["headers"]
                # Ours replaces any x-request-id the handler (or a relayed backend) set.
                raw[:] = [item for item in raw if item[0].lower() != _REQUEST_ID_RAW]
                raw.append(request_id_header)
                message["headers"] = raw
            elif kind == "websocket.accept":
                status = 101
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                headers[REQUEST_ID_HEADER] = request_id
                message["headers"] = headers.raw
            elif kind == "websocket.close" and status == 0:
                status = 403  # closed before accept: the server refuses the handshake
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status = status or 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            method = scope.get("method", "WS") if scope["type"] == "http" else "WS"
            route = route_template(scope, root_path)
            self.metrics.observe(method, route, status, elapsed)
            access_log.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "bytes": sent_bytes,
                },
            )
            request_id_var.reset(token)


_REQUEST_ID_RAW: Final = REQUEST_ID_HEADER.encode("latin-1")


def _encoded(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _with_security_headers(
    raw: list[tuple[bytes, bytes]], headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    present = {name.lower() for name, _ in raw}
    # A handler may set a stricter value (e.g. a page-specific CSP); keep it.
    raw.extend(item for item in headers if item[0] not in present)
    return raw
