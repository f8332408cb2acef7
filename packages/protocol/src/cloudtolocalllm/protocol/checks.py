"""Shape checks for the HTTP parts of Open and ResponseHead.

The relay turns these fields back into real HTTP on the other side, so anything that could split or
smuggle a request (CR/LF in a value, spaces in a path, a bogus method) must be refused here, where the
stream can be failed cleanly, not deep inside an HTTP client. Each check returns a reason or None.
"""

from __future__ import annotations

import re

from cloudtolocalllm.protocol.frames import Headers

__all__ = ["check_headers", "check_request_line", "check_status"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_PATH = re.compile(r"/[\x21-\x22\x24-\x3e\x40-\x7e]{0,8191}")  # visible ASCII without '?' and '#'
_QUERY = re.compile(r"[\x21-\x22\x24-\x7e]{0,8192}")  # visible ASCII without '#'
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]{0,16384}")  # RFC 9110 field-value: no CR/LF/NUL
MAX_HEADERS = 256


def check_request_line(method: str, path: str, query: str) -> str | None:
    """Why this method/path/query cannot be relayed, or None if it can."""
    if _TOKEN.fullmatch(method) is None:
        return "invalid method"
    if _PATH.fullmatch(path) is None:
        return "invalid path: must start with '/' and hold only visible ASCII, without '?' or '#'"
    if _QUERY.fullmatch(query) is None:
        return "invalid query string"
    return None


def check_headers(headers: Headers) -> str | None:
    """Why these header fields cannot be relayed, or None if they can."""
    if len(headers) > MAX_HEADERS:
        return f"more than {MAX_HEADERS} header fields"
    for name, value in headers:
        if _HEADER_NAME.fullmatch(name) is None:
            return "invalid header name"
        if _HEADER_VALUE.fullmatch(value) is None:
            return f"invalid value for header {name}"
    return None


def check_status(status: int) -> str | None:
    """Why this response status cannot be relayed, or None if it can."""
    if 100 <= status <= 599:
        return None
    return f"invalid status {status}"
