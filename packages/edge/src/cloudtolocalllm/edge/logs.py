"""nginx's stderr, forwarded through core's JSON logging with credentials and query strings scrubbed.

nginx's error log writes the full request line (``request: "GET /api/x?token=... HTTP/1.1"``), the upstream
URL and the referrer, query strings included, and a few modules can echo header values. Every line passes
through :func:`scrub` before it reaches the log stream; the access log never needs it (its format has no
query string and no header).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import IO, Final

__all__ = ["NGINX_LOGGER", "forward_stderr", "log_nginx_line", "parse_nginx_line", "scrub"]

NGINX_LOGGER: Final = "nginx"
REDACTED: Final = "[redacted]"

_SCRUBBERS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # Header-shaped credentials: "Authorization: Bearer x", "authorization=x", "Cookie: a=b; c=d".
    (
        re.compile(r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-api-key)(\s*[:=]\s*)(\"?)[^\"\r\n,]*"),
        rf"\1\2\3{REDACTED}",
    ),
    # Bearer / Basic credentials wherever they appear.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    # JSON Web Tokens (three base64url parts, the first starting with '{"' encoded).
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?"), REDACTED),
    # Query strings, whole: a token may hide under any parameter name.
    (re.compile(r"\?[^\s\"']*"), f"?{REDACTED}"),
    # key=value credentials outside a query string (form bodies, cookies, nginx variables).
    (
        re.compile(r"(?i)\b([\w-]*(?:token|secret|password|passwd|api[_-]?key|signature|session)[\w-]*)=[^&\s\"';,]+"),
        rf"\1={REDACTED}",
    ),
)

# "2024/05/01 10:00:00 [error] 123#123: *5 message" or, before the configuration is read,
# "nginx: [emerg] message".
_LINE_RE: Final = re.compile(
    r"^(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?(?:nginx: )?\[(?P<level>[a-z]+)\] "
    r"(?:(?P<pid>\d+)#\d+: )?(?:\*(?P<conn>\d+) )?(?P<msg>.*)$",
    re.DOTALL,
)
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "crit": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emerg": logging.CRITICAL,
}


def scrub(text: str) -> str:
    """``text`` without query strings, bearer/basic credentials, JWTs, cookies or ``*token*=`` values."""
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    return text


def parse_nginx_line(line: str) -> tuple[int, str, dict[str, object]]:
    """(log level, scrubbed message, extra fields) for one line of nginx's stderr."""
    line = line.rstrip("\r\n")
    match = _LINE_RE.match(line)
    if match is None:
        return logging.WARNING, scrub(line), {}
    extra: dict[str, object] = {"nginx_level": match["level"]}
    if match["pid"]:
        extra["nginx_pid"] = int(match["pid"])
    if match["conn"]:
        extra["connection"] = int(match["conn"])
    return _LEVELS.get(match["level"], logging.WARNING), scrub(match["msg"]), extra


def log_nginx_line(line: str, logger: logging.Logger | None = None) -> None:
    if not line.strip():
        return
    level, message, extra = parse_nginx_line(line)
    (logger or logging.getLogger(NGINX_LOGGER)).log(level, message, extra=extra)


def forward_stderr(stream: IO[bytes], logger: logging.Logger | None = None) -> threading.Thread:
    """Read nginx's stderr in a daemon thread, one log record per line, until the pipe closes.

    The pipe stays open while any process holds its write end, workers orphaned by a killed master
    included, so their last words are logged too.
    """

    def pump() -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                log_nginx_line(raw.decode("utf-8", "replace"), logger)

    thread = threading.Thread(target=pump, name="nginx-stderr", daemon=True)
    thread.start()
    return thread
