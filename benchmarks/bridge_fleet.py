"""Many real bridges in one process, for the reconnect benchmark (bench_reconnect.py).

Each is the bridge's own supervisor (``cloudtolocalllm.bridge.runner.Bridge``) with its sessions, its
backoff and its retry-hint handling, so what the benchmark measures is the real reconnect behaviour; they
share one backend client (the fast local backend) to keep a thousand of them light. Every dial attempt and
every Welcome is recorded with its wall-clock time and written as JSON to ``out`` on SIGTERM.

    python bridge_fleet.py <cloud-url> <token-file> <backend-url> <count> <first-index> <state-dir> <out>
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from cloudtolocalllm.bridge import runner, tunnel
from cloudtolocalllm.bridge.backend import make_backend
from cloudtolocalllm.bridge.config import BridgeSettings
from cloudtolocalllm.bridge.token import TokenSource
from cloudtolocalllm.protocol import BackendKind, Welcome

_current: contextvars.ContextVar[str] = contextvars.ContextVar("bridge")
attempts: dict[str, list[float]] = {}
welcomes: dict[str, list[float]] = {}
_dial = tunnel.open_websocket


async def _counted_dial(*args: Any, **kwargs: Any) -> Any:
    attempts[_current.get()].append(time.time())
    return await _dial(*args, **kwargs)


# The supervisor dials through the name it imported: count each dial by replacing that name.
runner.open_websocket = _counted_dial  # type: ignore[attr-defined]


class FleetBridge(runner.Bridge):
    def _welcomed(self, welcome: Welcome) -> None:
        super()._welcomed(welcome)
        welcomes[_current.get()].append(time.time())


async def main() -> None:
    cloud, token_file, backend_url, count, first, state_dir, out = sys.argv[1:8]
    logging.basicConfig(level=logging.ERROR)  # a thousand bridges' info lines would be the load
    backend = make_backend(backend_url, BackendKind.OLLAMA, connect_timeout_s=5, idle_timeout_s=60)
    bridges: list[FleetBridge] = []
    tasks: list[asyncio.Task[int]] = []
    for index in range(int(first), int(first) + int(count)):
        name = f"fleet-{index}"
        settings = BridgeSettings(
            cloud_url=cloud,
            backend_url=backend_url,
            name=name,
            state_dir=str(Path(state_dir) / name),
            status_interval_s=300,  # the status poll is not what is measured
        )
        bridge = FleetBridge(settings, TokenSource(token_file=Path(token_file)), backend=backend)
        attempts[name], welcomes[name] = [], []
        _current.set(name)
        tasks.append(asyncio.create_task(bridge.run()))  # copies the context: the task knows its bridge
        bridges.append(bridge)
        if index % 50 == 49:
            await asyncio.sleep(0.05)  # start-up spread like a fleet's, not one burst
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("started", flush=True)
    await stop.wait()
    Path(out).write_text(json.dumps({"attempts": attempts, "welcomes": welcomes}))  # noqa: ASYNC240 (once, at exit)
    for bridge in bridges:
        bridge.request_stop()
        bridge.request_stop()  # and do not wait for a drain
    await asyncio.wait(tasks, timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
