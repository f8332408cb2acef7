"""Core figures: cold import time, token verification with cached keys, /health throughput."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from cloudtolocalllm.core.auth import TokenVerifier
from cloudtolocalllm.dev_issuer import DevIssuer
from cloudtolocalllm.devkit.procs import start_port_printer, wait_until_answers

from .stats import median

IMPORT_SNIPPET = """
import time
t0 = time.perf_counter()
import cloudtolocalllm.core
t1 = time.perf_counter()
from cloudtolocalllm.core import create_app, serve, load_settings, configure_logging
import cloudtolocalllm.core.auth
t2 = time.perf_counter()
print((t1 - t0) * 1000, (t2 - t0) * 1000)
"""


def _import_times(runs: int = 7) -> tuple[float, float]:
    bare, full = [], []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", IMPORT_SNIPPET], capture_output=True, text=True, check=True
        ).stdout.split()
        bare.append(float(out[0]))
        full.append(float(out[1]))
    return median(bare), median(full)


async def _verify_ms(iterations: int = 3000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        issuer = DevIssuer(Path(tmp), issuer="https://bench/", audience="bench")
        verifier = TokenVerifier(issuer="https://bench/", audience="bench", keys=issuer.key_source())
        token = issuer.mint("bench-user", scopes=["a", "b"])
        for _ in range(200):  # warm up
            await verifier.verify(token)
        started = time.perf_counter()
        for _ in range(iterations):
            await verifier.verify(token)
        return (time.perf_counter() - started) / iterations * 1000


def _wrk_rps(url: str, seconds: int = 5) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", url], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"unexpected wrk output: {out}")
    return float(match.group(1))


async def _python_rps(url: str, seconds: float = 5.0) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            (await client.get(url)).raise_for_status()
            count += 1

    async with httpx.AsyncClient() as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(16)))
        return count / (time.perf_counter() - started)


async def _health_rps() -> tuple[float, str]:
    """One uvicorn worker in its own process; the load generator in another."""
    code = (
        "import asyncio, sys\n"
        "from cloudtolocalllm.core import ServiceInfo, create_app, bind_socket, serve\n"
        "sock = bind_socket('127.0.0.1', 0)\n"
        "print(sock.getsockname()[1], flush=True)\n"
        "asyncio.run(serve(create_app(ServiceInfo('bench', '0')), sock=sock))\n"
    )
    with tempfile.TemporaryDirectory() as logs:
        proc, port = start_port_printer("core-health", ["-c", code], Path(logs))
        try:
            url = f"http://127.0.0.1:{port}/health"
            await asyncio.to_thread(wait_until_answers, proc, url, 30)
            if shutil.which("wrk"):
                return await asyncio.to_thread(_wrk_rps, url), "wrk -t1 -c32"
            return await _python_rps(url), "httpx, 16 concurrent"
        finally:
            proc.stop()


async def run() -> dict[str, object]:
    bare_ms, full_ms = _import_times()
    rps, tool = await _health_rps()
    return {
        "core.import_ms": round(bare_ms, 1),
        "core.import_full_toolkit_ms": round(full_ms, 1),
        "core.verify_token_ms": round(await _verify_ms(), 4),
        "core.health_rps": round(rps),
        "core.health_rps_tool": tool,
    }
