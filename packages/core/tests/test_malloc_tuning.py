"""core.malloc_tuning: glibc's thresholds fixed in a real process, and left alone where glibc's own variables
are set."""

from __future__ import annotations

import os
import subprocess
import sys

# A 300 KB block: under the fixed threshold it comes from the heap (the brk area, "[heap]" in
# /proc/self/maps); at glibc's start-up threshold (128 KiB) it is a mapping of its own, outside it.
_PROBE = """
import ctypes
from cloudtolocalllm.core.malloc_tuning import tune_malloc_for_streaming
tuned = tune_malloc_for_streaming()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(300_000)
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        start, end = (int(part, 16) for part in line.split()[0].split("-"))
        print(tuned, int(start <= block < end))
"""


def _probe(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
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
