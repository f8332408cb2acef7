"""Run the benchmarks and report one JSON object of measured figures (``nox -s bench -- --json PATH``).

Benchmarks measure; they never fail on a timing. Each module under ``benchmarks/`` with a ``run()``
coroutine contributes flat keys (``core.import_ms``, ``tunnel.ttfb_overhead_ms.p50``, ...). Targets are
reported next to the figures for reading, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import platform
import sys
import time
from pathlib import Path

SUITES = [
    "bench_core",
    "bench_keys",
    "bench_tunnel",
    "bench_reconnect",
    "bench_edge",
    "bench_scale",
    "bench_local_model",
]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--only", action="append", help="run only these suites (module names)")
    args = parser.parse_args()

    results: dict[str, object] = {
        "meta.python": platform.python_version(),
        "meta.machine": f"{platform.machine()} {platform.system()}",
        "meta.started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in args.only or SUITES:
        suite = importlib.import_module(f".{name}", __package__)
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        results.update(await suite.run())
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
