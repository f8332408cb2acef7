"""Cache-Control by file name: one rule table, checked in a fixed order (the earlier edge's bug was a regex
order that gave the unhashed app bundle a one-year cache).

1. Documents and the files that point at versions — HTML, ``version.json``, web app manifests, service
   workers — are ``no-cache``: browsers may store them but must revalidate (a cheap 304 thanks to the ETag),
   so a deploy is seen on the next load.
2. Content-hashed assets (``app.3f2a9c1b.js``: a dot-separated segment of at least 8 hex characters that is
   not all digits, so ``report.20240101.pdf`` is not taken for a hash) never change under their name:
   ``public, max-age=31536000, immutable``.
3. Everything else (``app.js``, ``main.dart.js``, images, downloads) gets a short ``max-age``.

The rule is chosen from the name in the URL, not the name of a symlink's target: the URL is what caches key on.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["IMMUTABLE", "NO_CACHE", "cache_control", "is_content_hashed", "is_revalidated"]

IMMUTABLE: Final = "public, max-age=31536000, immutable"
NO_CACHE: Final = "no-cache"

_HEX_SEGMENT: Final = re.compile(r"[0-9a-fA-F]{8,}")

_REVALIDATED_NAMES: Final = frozenset(
    {
        "version.json",
        "manifest.json",
        "asset-manifest.json",
        "sw.js",
        "service-worker.js",
        "service_worker.js",
        "serviceworker.js",
        "flutter_service_worker.js",
    }
)
_REVALIDATED_SUFFIXES: Final = (".html", ".htm", ".webmanifest")


def is_revalidated(name: str) -> bool:
    """HTML, version manifests and service workers: must be revalidated on every use."""
    lowered = name.lower()
    return lowered in _REVALIDATED_NAMES or lowered.endswith(_REVALIDATED_SUFFIXES)


def is_content_hashed(name: str) -> bool:
    """True if a segment of the name (the extension aside) is a content hash, e.g. ``app.3f2a9c1b.js``."""
    segments = name.split(".")[:-1]
    return any(_HEX_SEGMENT.fullmatch(seg) and not seg.isdigit() for seg in segments)


def cache_control(name: str, *, max_age: int) -> str:
    """The Cache-Control value for a file served under ``name`` (the last segment of the URL path)."""
    if is_revalidated(name):
        return NO_CACHE
    if is_content_hashed(name):
        return IMMUTABLE
    return f"public, max-age={max_age}"
