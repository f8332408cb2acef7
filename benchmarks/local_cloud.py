"""What the tunnel benchmarks share: the fast local backend, TCP relays and the library floor as processes, and
dev-issuer auth for api-backend."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from cloudtolocalllm.dev_issuer import DevIssuer
from cloudtolocalllm.devkit.procs import (
    Proc,
    dev_auth_env,
    start_api_backend,
    start_bridge,
    start_port_printer,
)

from .http_calls import request
from .library_floor import CONNECTED

ISSUER = "http://127.0.0.1/dev-issuer"
AUDIENCE = "cloudtolocalllm-bench"


def start_fast_backend(log_dir: Path) -> tuple[Proc, int]:
    """The Ollama double's fast form in its own process; returns it and the port it printed."""
    return start_port_printer("fast-backend", ["-m", "cloudtolocalllm.devkit.ollama.fast"], log_dir)


def start_bench_bridge(
    log_dir: Path, cloud: str, token_file: Path, backend_port: int, name: str, env: dict[str, str] | None = None
) -> Proc:
    """The real bridge, connected to ``cloud`` and forwarding to the fast backend on ``backend_port``."""
    return start_bridge(
        log_dir,
        cloud=cloud,
        token_file=token_file,
        backend=f"http://127.0.0.1:{backend_port}",
        kind="ollama",
        state_dir=log_dir / f"bridge-{name}",
        name=name,
        env=env,
    )


def start_cloud_and_bridge(
    log_dir: Path, env: dict[str, str], token_file: Path, backend_port: int, name: str = "bench"
) -> tuple[Proc, Proc, int]:
    """api-backend (with ``env``) and the real bridge connected to it, forwarding to the fast backend on
    ``backend_port``: both processes and api-backend's port. :func:`wait_bridge` waits until it relays."""
    api, url = start_api_backend(log_dir, env)
    bridge = start_bench_bridge(log_dir, url, token_file, backend_port, name)
    return api, bridge, int(url.rsplit(":", 1)[1])


async def wait_bridge(api_port: int, auth: dict[str, str]) -> None:
    """Wait until api-backend on ``api_port`` relays to the account's bridge."""
    for _ in range(200):
        reader, writer = await request(api_port, "GET", "/api/ollama/api/version", auth)
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        if b" 200 " in head.split(b"\r\n", 1)[0]:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the bridge never connected")


def start_tcp_relay(log_dir: Path, target_port: int, one_way_ms: float = 0) -> tuple[Proc, int]:
    """core's TCP relay in front of ``target_port`` (with ``one_way_ms``: a ``2 * one_way_ms`` round trip)."""
    name = f"tcp-relay-{target_port}-{time.monotonic_ns()}"  # a fresh log file: the port is read from it
    argv = ["-m", "cloudtolocalllm.core.testing.tcp_relay", str(target_port), str(one_way_ms)]
    return start_port_printer(name, argv, log_dir)


def start_library_floor(log_dir: Path, backend_port: int) -> tuple[Proc, Proc, int]:
    """The library floor (benchmarks/library_floor.py): its cloud, and its bridge connected to it and forwarding
    to the fast backend on ``backend_port``; both processes and the cloud's port, which relays once this returns.
    """
    # Found as the benchmarks themselves are: python -m from the repository's root, the cwd it inherits.
    floor = ["-m", "benchmarks.library_floor"]
    stamp = time.monotonic_ns()
    cloud, port = start_port_printer(f"library-floor-cloud-{stamp}", [*floor, "cloud"], log_dir)
    bridge_argv = [sys.executable, *floor, "bridge", f"ws://127.0.0.1:{port}/", f"http://127.0.0.1:{backend_port}"]
    bridge = Proc(f"library-floor-bridge-{stamp}", bridge_argv, {}, log_dir)
    try:
        bridge.wait_for_output(CONNECTED, 10)
    except BaseException:
        bridge.stop()
        cloud.stop()
        raise
    return cloud, bridge, port


def dev_auth(tmp: Path) -> tuple[dict[str, str], DevIssuer]:
    """api-backend's environment for the embedded dev issuer under ``tmp``, and that issuer (to mint tokens)."""
    return dev_auth_env(tmp / "issuer", ISSUER, AUDIENCE)
