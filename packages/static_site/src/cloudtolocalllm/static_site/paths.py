"""From a request's raw path to a file inside the root, or a refusal.

Two independent layers, so a mistake in one is caught by the other:

1. :func:`parse_request_path` works on the raw bytes the client sent (``scope["raw_path"]``), decodes them
   exactly once and refuses anything that could change meaning on the way to the file system: encoded
   slashes and backslashes (``%2f``, ``%5c``), raw backslashes, NUL and other control characters, ``%``
   left after decoding (double encoding, ``%252e``), empty segments (``//etc/passwd``), and any segment
   starting with a dot, which covers ``.``, ``..`` (however encoded) and dotfiles such as ``.env`` and
   ``.git``.
2. :func:`contained` resolves the candidate with :func:`os.path.realpath` (following every symlink) and
   requires the result to be inside the resolved root, again without dot segments. A symlink inside the
   root to a file inside the root is served; one pointing out of the root is not found.
"""

from __future__ import annotations

import os
from typing import Final, NamedTuple
from urllib.parse import unquote_to_bytes

__all__ = ["MAX_PATH_BYTES", "RequestPath", "contained", "parse_request_path"]

MAX_PATH_BYTES: Final = 4096
_MAX_SEGMENT_BYTES: Final = 255
# Checked on the raw bytes, case-insensitively, before decoding.
_RAW_REFUSED: Final = (b"%2f", b"%5c", b"%00", b"\\", b"\x00")


class RequestPath(NamedTuple):
    """A validated, decoded request path: its segments and whether it ended with a slash."""

    segments: tuple[str, ...]
    trailing_slash: bool

    @property
    def name(self) -> str:
        """The last segment ("" for the root)."""
        return self.segments[-1] if self.segments else ""


def _safe_segment(segment: str) -> bool:
    return (
        bool(segment)
        and not segment.startswith(".")
        and "%" not in segment
        and len(segment.encode()) <= _MAX_SEGMENT_BYTES
        and not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in segment)
    )


def parse_request_path(raw_path: bytes) -> RequestPath | None:
    """Decode a raw request path once; ``None`` if it is refused."""
    raw = raw_path.partition(b"?")[0]
    if not raw.startswith(b"/") or len(raw) > MAX_PATH_BYTES:
        return None
    lowered = raw.lower()
    if any(bad in lowered for bad in _RAW_REFUSED):
        return None
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\\" in text or "\x00" in text:  # unreachable after the raw check; kept as a second lock
        return None
    body = text[1:]
    trailing_slash = body == "" or body.endswith("/")
    if trailing_slash:
        body = body[:-1]
    segments = tuple(body.split("/")) if body else ()
    if not all(_safe_segment(segment) for segment in segments):
        return None
    return RequestPath(segments, trailing_slash)


def contained(root: str, candidate: str) -> str | None:
    """The real path of ``candidate`` if it lies inside ``root`` (itself a real path), else ``None``.

    The candidate need not exist; a missing file resolves to where it would be.
    """
    real = os.path.realpath(candidate)
    if real == root:
        return real
    prefix = root if root.endswith(os.sep) else root + os.sep
    if not real.startswith(prefix):
        return None
    if any(part.startswith(".") for part in real[len(prefix) :].split(os.sep)):
        return None  # e.g. a symlink inside the root pointing at the root's own .env
    return real
