"""Process-wide settings for a long-running relay of streams: the collector's and the allocator's.

Both services (``serve()``) and the bridge call :func:`tune_process_for_relaying` once start-up is done.
"""

from __future__ import annotations

from cloudtolocalllm.core.gc_tuning import tune_gc_for_latency
from cloudtolocalllm.core.malloc_tuning import tune_malloc_for_streaming

__all__ = ["tune_process_for_relaying"]


def tune_process_for_relaying() -> None:
    """Freeze start-up objects out of the collector (gc_tuning); fixed malloc thresholds (malloc_tuning)."""
    tune_gc_for_latency()
    tune_malloc_for_streaming()
