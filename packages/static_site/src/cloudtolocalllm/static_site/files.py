"""The file-system half of a request, run in one worker thread per request.

:func:`lookup` does every blocking call a request needs — resolve, stat, pick a precompressed sibling, open,
and for a small file read it whole — in a single call, so a request costs one thread hop instead of one per
system call. Large files come back as an open descriptor that the server streams chunk by chunk.

Headers describe the file that was opened (``fstat`` of the open descriptor), so a deploy that replaces a
file between two calls can never pair one file's ETag or length with another file's bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

from cloudtolocalllm.static_site.content_types import content_type, is_compressible
from cloudtolocalllm.static_site.negotiation import SIBLING_SUFFIX
from cloudtolocalllm.static_site.paths import contained
from cloudtolocalllm.static_site.validators import etag_for

__all__ = ["INDEX", "Found", "Missing", "Redirect", "lookup", "open_file"]

INDEX: Final = "index.html"

_OPEN_FLAGS: Final = (
    os.O_RDONLY
    | getattr(os, "O_CLOEXEC", 0)
    # Never follow a symlink at the last component: every path opened here was already resolved and
    # checked, so a symlink there means the tree changed under us (or a sibling is a link): not served.
    | getattr(os, "O_NOFOLLOW", 0)
    # A FIFO swapped in after the stat must not block the worker thread on open.
    | getattr(os, "O_NONBLOCK", 0)
)


class Found(NamedTuple):
    """A regular file chosen for the response; exactly one of ``body`` / ``fd`` is set when a body is wanted."""

    path: str
    size: int
    mtime: float
    etag: str
    coding: str | None
    content_type: str
    vary: bool
    body: bytes | None = None
    fd: int | None = None


class Missing(NamedTuple):
    """Nothing to serve. ``fallback`` is False when the path exists but is not servable (a directory
    without an index, a symlink out of the root): the SPA fallback must not paper over those."""

    fallback: bool = True


class Redirect(NamedTuple):
    """A directory was asked for without its trailing slash."""


BodyWanted = Callable[[str, float], bool]


def open_file(path: str) -> tuple[int, os.stat_result] | None:
    """Open ``path`` read-only if it is a regular file (not a symlink, FIFO or device)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break  # the file shrank after fstat: send what is there, with the matching length
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _choose(real: str, codings: Sequence[str]) -> tuple[int, os.stat_result, str | None] | None:
    """Open the file, or the best acceptable precompressed sibling of it.

    The file itself must exist (a sibling alone serves nothing), and a sibling older than the file is
    stale — left over from an earlier build — and skipped. ``gzip -k`` and ``brotli`` keep the source's
    modification time, so fresh siblings have an equal one.
    """
    original = open_file(real)
    if original is None:
        return None
    for coding in codings:
        sibling = open_file(real + SIBLING_SUFFIX[coding])
        if sibling is None:
            continue
        if sibling[1].st_mtime_ns >= original[1].st_mtime_ns:
            os.close(original[0])
            return *sibling, coding
        os.close(sibling[0])
    return *original, None


def lookup(
    root: str,
    segments: Sequence[str],
    *,
    trailing_slash: bool,
    codings: Sequence[str],
    body_wanted: BodyWanted,
    small_file_max: int,
) -> Found | Missing | Redirect:
    """Find the file for a validated request path under ``root`` (a real path).

    ``body_wanted(etag, mtime)`` says whether the response will carry a body (not for HEAD or a 304). If
    so, a file of at most ``small_file_max`` bytes is read into ``body``; a larger one is left open in
    ``fd``, which the caller must close.
    """
    real = contained(root, os.path.join(root, *segments))
    if real is None:
        return Missing(fallback=False)
    try:
        info = os.stat(real)
    except (OSError, ValueError):
        return Missing()
    if stat.S_ISDIR(info.st_mode):
        if not trailing_slash:
            return Redirect()
        index = contained(root, os.path.join(real, INDEX))
        if index is None or not os.path.isfile(index):
            return Missing(fallback=False)
        real = index
    elif not stat.S_ISREG(info.st_mode) or trailing_slash:
        return Missing(fallback=False)

    chosen = _choose(real, codings)
    if chosen is None:
        return Missing()
    fd, opened, coding = chosen
    etag = etag_for(opened.st_size, opened.st_mtime_ns, coding)
    name = os.path.basename(real)
    found = Found(
        path=real,
        size=opened.st_size,
        mtime=opened.st_mtime,
        etag=etag,
        coding=coding,
        content_type=content_type(name),
        vary=coding is not None or is_compressible(name),
    )
    if not body_wanted(etag, opened.st_mtime):
        os.close(fd)
        return found
    if opened.st_size > small_file_max:
        return found._replace(fd=fd)
    try:
        body = _read_all(fd, opened.st_size)
    finally:
        os.close(fd)
    return found._replace(body=body, size=len(body))
