"""Ollama-shaped errors (``{"error": "..."}``) with meaningful status codes, for every relay failure."""

from __future__ import annotations

from typing import Final

import msgspec
from starlette.responses import JSONResponse

from cloudtolocalllm.protocol import ErrorCode

__all__ = ["RelayError", "directory_down", "error_response", "status_for_stream_error", "stream_error_tail"]


class RelayError(Exception):
    """A failure to relay a request, already phrased for the client."""

    def __init__(self, status: int, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


def error_response(error: RelayError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(error.retry_after_s)))} if error.retry_after_s is not None else {}
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)


_STATUS_FOR_CODE: Final = {
    ErrorCode.BACKEND_UNREACHABLE: 502,
    ErrorCode.BACKEND_ERROR: 502,
    ErrorCode.PATH_NOT_ALLOWED: 403,
    ErrorCode.READ_ONLY: 403,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.REFUSED: 503,
}


def status_for_stream_error(code: ErrorCode) -> int:
    return _STATUS_FOR_CODE.get(code, 502)


def stream_error_tail(content_type: str, message: str) -> bytes | None:
    """How to tell a streaming client that its stream broke, in its own framing (None: it has none)."""
    encoded = msgspec.json.encode({"error": message})
    if content_type.startswith("application/x-ndjson"):
        return encoded + b"\n"
    if content_type.startswith("text/event-stream"):
        return b"event: error\ndata: " + encoded + b"\n\n"
    return None


def directory_down() -> RelayError:
    return RelayError(
        503, "the bridge directory is unavailable, so bridges on other servers cannot be reached", retry_after_s=2
    )
