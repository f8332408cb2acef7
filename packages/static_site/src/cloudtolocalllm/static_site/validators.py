"""Validators (ETag, Last-Modified), conditional requests and byte ranges (RFC 9110 §8.8, §13, §14).

Pure functions over header strings, so every rule is unit-tested without a server.

- The ETag is strong and derived from size and modification time in nanoseconds of the file actually sent,
  plus the content coding, so ``app.js`` and ``app.js.br`` never share a tag.
- ``If-None-Match`` (weak comparison, ``*`` allowed) wins over ``If-Modified-Since``, as the RFC says.
- One byte range per request: ``bytes=a-b``, ``bytes=a-``, ``bytes=-n``. Several ranges, another unit or
  a malformed header are ignored (the whole file is sent, which the RFC permits); a well-formed range that
  starts past the end is unsatisfiable (416).
- ``If-Range`` with an entity tag must match strongly; with a date, it must equal Last-Modified exactly.
"""

from __future__ import annotations

import email.utils
import re
from typing import Final

__all__ = [
    "UNSATISFIABLE",
    "Unsatisfiable",
    "etag_for",
    "http_date",
    "if_range_allows",
    "not_modified",
    "parse_range",
]

_RANGE: Final = re.compile(r"bytes=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE)
# Long enough for any real file size, short enough that int() never meets a pathological number.
_MAX_DIGITS: Final = 19


class Unsatisfiable:
    """The Range header is well formed but selects nothing in this file: answer 416."""

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE: Final = Unsatisfiable()


def etag_for(size: int, mtime_ns: int, coding: str | None) -> str:
    suffix = f"-{coding}" if coding else ""
    return f'"{size:x}-{mtime_ns:x}{suffix}"'


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _parse_http_date(value: str) -> int | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # the obsolete formats carry no zone; HTTP dates are always GMT
        return None
    return int(parsed.timestamp())


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def _weak_equal(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def not_modified(etag: str, mtime: float, *, if_none_match: str | None, if_modified_since: str | None) -> bool:
    """True when the client's copy is current and a 304 is the answer."""
    if if_none_match is not None:
        return any(tag == "*" or _weak_equal(tag, etag) for tag in _tags(if_none_match))
    if if_modified_since is not None:
        since = _parse_http_date(if_modified_since)
        return since is not None and int(mtime) <= since
    return False


def if_range_allows(if_range: str | None, etag: str, mtime: float) -> bool:
    """True when the Range header may be honoured (no If-Range, or its validator still matches)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith("W/"):
        return False  # weak tags never match strongly
    if value.startswith('"'):
        return value == etag
    since = _parse_http_date(value)
    return since is not None and since == int(mtime)


def parse_range(header: str | None, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """``(first, last)`` inclusive, :data:`UNSATISFIABLE`, or ``None`` to ignore the header."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # another unit, several ranges, or garbage: send the whole file
    first_text, last_text = match.groups()
    if len(first_text) > _MAX_DIGITS or len(last_text) > _MAX_DIGITS:
        return None
    if first_text:
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
        if last_text and last < first:
            return None  # an invalid range-spec is ignored, not answered with 416
        if first >= size:
            return UNSATISFIABLE
        return first, min(last, size - 1)
    if not last_text:
        return None  # "bytes=-" names nothing
    suffix = int(last_text)
    if suffix == 0 or size == 0:
        return UNSATISFIABLE
    return max(0, size - suffix), size - 1
