"""The collector settings for relays: start-up heap frozen, rare collections, cycles still collected."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_tuning_freezes_the_startup_heap_and_still_collects_cycles() -> None:
    # In a child process: the settings are process-wide and must not leak into the rest of the test run.
    code = textwrap.dedent(
        """
        import gc, weakref
        from cloudtolocalllm.core.gc_tuning import GC_THRESHOLDS, tune_gc_for_latency

        tune_gc_for_latency()
        assert gc.get_threshold() == GC_THRESHOLDS, gc.get_threshold()
        assert gc.get_freeze_count() > 1000, gc.get_freeze_count()

        class Node:
            pass

        first = Node()
        first.self = first  # a reference cycle: only the cyclic collector frees it
        alive = weakref.ref(first)
        del first
        assert alive() is not None  # not collected yet: no collection since
        keep = [[] for _ in range(GC_THRESHOLDS[0] + 1_000)]  # enough live containers for a young collection
        assert alive() is None, "a cycle survived a full young-collection period"
        print("ok", len(keep))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "ok"
