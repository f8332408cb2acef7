"""Content negotiation: Accept-Encoding for precompressed siblings, Accept for the SPA fallback.

Precompressed siblings (``app.js.br``, ``app.js.gz``) are chosen by Accept-Encoding. Q-values are honoured
(RFC 9110 §12.5.3): ``q=0`` refuses a coding, ``*`` covers codings not listed, ``x-gzip`` means ``gzip``.
Without the header, or when nothing we have is acceptable, the file is sent as
is (identity is always a safe answer for a static file). Ties go to brotli, the smaller of the two.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "SIBLING_SUFFIX",
    "SUPPORTED_CODINGS",
    "acceptable_codings",
    "accepts_html",
    "parse_accept_encoding",
]

# Server preference order for equal q-values.
SUPPORTED_CODINGS: Final = ("br", "gzip")
SIBLING_SUFFIX: Final = {"br": ".br", "gzip": ".gz"}

_QVALUE: Final = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
_ALIASES: Final = {"x-gzip": "gzip"}


def _weighted(header: str) -> list[tuple[str, float]]:
    """``(token lower-cased, q)`` for each list element; elements with a malformed q-value are dropped."""
    result: list[tuple[str, float]] = []
    for element in header.split(","):
        token, *params = (part.strip() for part in element.split(";"))
        if not token:
            continue
        q: float | None = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else None
                break
        if q is not None:
            result.append((token.lower(), q))
    return result


def parse_accept_encoding(header: str) -> dict[str, float]:
    """Coding (lower case) -> q-value. Elements with a malformed q-value are dropped (never guessed up)."""
    result: dict[str, float] = {}
    for token, q in _weighted(header):
        coding = _ALIASES.get(token, token)
        # A coding listed twice keeps its lowest q: the cautious reading of a confused header.
        result[coding] = min(q, result.get(coding, q))
    return result


def accepts_html(header: str | None) -> bool:
    """True if Accept names ``text/html`` with q > 0, as browser navigations do (``*/*`` does not count:
    a script's fetch of a missing file must get its 404, not the app's HTML)."""
    if not header:
        return False
    return any(media == "text/html" and q > 0 for media, q in _weighted(header))


def acceptable_codings(header: str | None) -> tuple[str, ...]:
    """The supported codings the client accepts, best first (highest q, then brotli before gzip)."""
    if not header:
        return ()
    weights = parse_accept_encoding(header)
    wildcard = weights.get("*", 0.0)
    ranked = []
    for preference, coding in enumerate(SUPPORTED_CODINGS):
        q = weights.get(coding, wildcard)
        if q > 0:
            ranked.append((-q, preference, coding))
    return tuple(coding for _, _, coding in sorted(ranked))
