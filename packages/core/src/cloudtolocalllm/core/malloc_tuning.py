"""glibc malloc settings for processes that move streams in buffers of a few hundred KiB.

glibc serves an allocation above its mmap threshold (128 KiB at start, then raised to the largest block
freed, up to 32 MiB) with a fresh mapping, and returns it on free: the kernel zeroes and faults in every page
of it again. A relay's reads (256 KiB), frames and joined buffers sit just around that threshold, so whether
each one costs a mapping depends on the order of sizes it happens to meet. Measured on the tunnel's bulk
upload (docs/performance.md): the bridge's CPU per MB went from 1.72-1.91 ms to 1.41-1.52 ms with the
threshold fixed at 1 MiB, and with api-backend on uvloop (reads of 256,000 bytes, frames a little more) from
2.3 to 1.4 ms, the upload from about 280 to 430 MB/s.

A fixed threshold turns glibc's adjustment off, and with it the trim threshold's; both are set here. The
heap keeps up to ``TRIM_THRESHOLD`` free at its top rather than returning it at once. Elsewhere (macOS,
Windows, musl) nothing changes. glibc's own knobs win over these: ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment, or either threshold in ``GLIBC_TUNABLES``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Final

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_malloc_for_streaming"]

MMAP_THRESHOLD: Final = 1024 * 1024 if ctypes.sizeof(ctypes.c_void_p) == 8 else 512 * 1024
"""Blocks up to this come from the heap: above the largest frame (256 KiB) and read with room to spare.
32-bit glibc (a Raspberry Pi's armv7) refuses more than 512 KiB."""
TRIM_THRESHOLD: Final = 8 * 1024 * 1024
"""Free memory at the heap's top kept for reuse before it is returned to the system."""

_M_TRIM_THRESHOLD: Final = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD: Final = -3
_GLIBC_KNOBS: Final = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_GLIBC_TUNABLES: Final = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def tune_malloc_for_streaming() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module's doc); True when both were set."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        not sys.platform.startswith("linux")
        or any(knob in os.environ for knob in _GLIBC_KNOBS)
        or any(tunable in tunables for tunable in _GLIBC_TUNABLES)
    ):
        return False
    libc = ctypes.CDLL(None)  # the C library the interpreter is linked with
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl): its thresholds are not these
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_set = int(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) == 1  # mallopt returns 1 on success
    trim_set = int(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) == 1
    return mmap_set and trim_set
