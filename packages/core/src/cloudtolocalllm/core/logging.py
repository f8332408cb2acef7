"""Structured logging: one JSON object per line, encoded with msgspec.

Every record carries timestamp, level, service, version, the current request id (from a contextvar set by
:class:`~cloudtolocalllm.core.middleware.RequestContextMiddleware`), the message and any extra fields passed
with ``logger.info("...", extra={...})``. Extra fields whose names suggest credentials or conversation
content are dropped here as a last line of defence; callers must not pass them in the first place.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import IO, Any, Final

import msgspec

__all__ = [
    "REDACTED_FIELDS",
    "JsonFormatter",
    "configure_logging",
    "current_request_id",
    "request_id_var",
]

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_RECORD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)
# Never written, whatever a caller passes: credentials and conversation content.
REDACTED_FIELDS: Final = frozenset(
    {
        "authorization",
        "cookie",
        "set_cookie",
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "password",
        "secret",
        "query",
        "query_string",
        "body",
        "prompt",
        "messages",
        "response",
        "content",
    }
)

# Unknown types in extra fields are logged as their str() rather than failing the log call.
_encoder = msgspec.json.Encoder(enc_hook=str)


def current_request_id() -> str | None:
    return request_id_var.get()


class JsonFormatter(logging.Formatter):
    """Formats a record as a single-line JSON object (no trailing newline; the handler adds it)."""

    def __init__(self, service: str, version: str) -> None:
        super().__init__()
        self.service = service
        self.version = version

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "version": self.version,
            "logger": record.name,
            "request_id": request_id_var.get(),
            "msg": record.getMessage(),
        }
        fields = vars(record)
        for key in fields.keys() - _RECORD_ATTRS:  # what came with ``extra=`` (a set operation in C)
            if key in entry or key.lower() in REDACTED_FIELDS:
                continue
            entry[key] = fields[key]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


_last_second: tuple[int, str] = (-1, "")  # the last whole second formatted and its text: one strftime a second


def _timestamp(created: float) -> str:
    global _last_second
    whole = int(created)
    last = _last_second  # read once: another thread may replace it meanwhile (the pair stays consistent)
    if last[0] != whole:
        last = _last_second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{last[1]}.{int(created % 1 * 1000):03d}Z"


def configure_logging(
    service: str, version: str, *, level: str | int = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Route the root logger (and uvicorn's) to one JSON-lines handler; returns that handler."""
    # No record names its source file and line (the JSON lines carry neither): skip the stack walk that
    # finds them on every call (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(service, version))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's own access log would print raw paths with query strings (tokens): ours replaces it.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers.clear()
        lib_logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Its lifecycle chatter ("Started server process", "Waiting for application startup", ...) repeats
    # what each service logs itself; its warnings and errors (a failing app, a bad request) stay.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request URL at INFO, query string (and any token in it) included.
    for name in ("httpx", "httpcore", "websockets"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler
