"""core.malloc_tuning: glibc's thresholds fixed in a real process, and left alone where glibc's own variables
are set."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="other platform: glibc's malloc only"
)

# A block just under the fixed threshold comes from the heap (the brk area, "[heap]" in /proc/self/maps);
# with the threshold fixed at glibc's start-up value (128 KiB) it is a mapping of its own, outside it.
# (Untuned, glibc's moving threshold may already be above such a block: that is no control.)
_PROBE = """
import ctypes
from cloudtolocalllm.core.malloc_tuning import MMAP_THRESHOLD, tune_malloc_for_streaming
tuned = tune_malloc_for_streaming()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(MMAP_THRESHOLD - 64 * 1024)
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        start, end = (int(part, 16) for part in line.split()[0].split("-"))
        print(tuned, int(start <= block < end))
"""


def _probe(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_a_block_of_a_few_hundred_kib_comes_from_the_heap_once_tuned() -> None:
    tuned, in_heap = _probe()
    assert tuned == "True"
    assert in_heap == 1


def test_glibcs_own_variable_wins() -> None:
    tuned, in_heap = _probe(MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    assert tuned == "False"
    assert in_heap == 0  # glibc's threshold, as set: the block is a mapping of its own


def test_glibcs_tunables_win() -> None:
    tuned, in_heap = _probe(GLIBC_TUNABLES=f"glibc.malloc.mmap_threshold={128 * 1024}")
    assert tuned == "False"
    assert in_heap == 0
