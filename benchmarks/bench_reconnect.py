"""A restart of api-backend with 1,000 bridges connected (issue targets in brackets):

- tunnel.reconnect_all_s: from the SIGTERM to the old api-backend until all 1,000 bridges are connected to the
  new one (the same port, started as soon as the old one has exited) [<= 30]
- tunnel.reconnect_peak_per_s: the most handshakes (Welcomes) the bridges completed in any one second
- tunnel.reconnect_attempts_max / .attempts_mean: dial attempts per bridge from the SIGTERM until it was back,
  and tunnel.reconnect_min_gap_s: the shortest time between two attempts of the same bridge (a bridge
  retrying in a tight loop would show many attempts and a gap near zero)
- tunnel.reconnect_restart_s: of reconnect_all_s, how long the server was away (old exit + new start-up), and
  tunnel.reconnect_old_exit_s, of that, the old process's drain and exit

The bridges are the real bridge's supervisor (runner.Bridge: sessions, backoff with full jitter, the GoAway
retry hint), 500 per process (benchmarks/bridge_fleet.py), all for one account, against the fast local
backend. The old api-backend drains as in production: GoAway with ``API_DRAIN_RETRY_AFTER_S`` (1 s).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx

from cloudtolocalllm.devkit.procs import Proc, start_api_backend

from .local_cloud import dev_auth, start_fast_backend

REPO = Path(__file__).resolve().parent.parent

BRIDGES = 1000
PER_PROCESS = 500


def _raise_fd_limit() -> None:
    """Each bridge is a socket in the fleet and one in api-backend (which inherits this limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * BRIDGES + 1024)) if hard != resource.RLIM_INFINITY else 4 * BRIDGES + 1024
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _connected(client: httpx.AsyncClient, url: str) -> int:
    try:
        text = (await client.get(url + "/metrics", timeout=2)).text
    except httpx.TransportError:
        return -1
    for line in text.splitlines():
        if line.startswith("bridges_connected "):
            return int(float(line.split()[1]))
    return 0


async def _until_all(client: httpx.AsyncClient, url: str, within_s: float) -> float:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await _connected(client, url) >= BRIDGES:
            return time.time()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"not all {BRIDGES} bridges connected within {within_s:g} s")


async def run() -> dict[str, object]:
    _raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        backend, backend_port = start_fast_backend(tmp)
        auth_env, issuer = dev_auth(tmp)
        env = {**auth_env, "API_MAX_BRIDGES_PER_USER": str(2 * BRIDGES), "API_DRAIN_RETRY_AFTER_S": "1"}
        token_file = tmp / "token"
        token_file.write_text(issuer.mint("fleet", ttl_s=7200))
        api, url = start_api_backend(tmp, env)
        port = int(url.rsplit(":", 1)[1])
        fleets: list[Proc] = []
        outputs: list[Path] = []
        try:
            for first in range(0, BRIDGES, PER_PROCESS):
                out = tmp / f"fleet-{first}.json"
                argv = [sys.executable, str(REPO / "benchmarks" / "bridge_fleet.py"), url, str(token_file)]
                argv += [f"http://127.0.0.1:{backend_port}", str(PER_PROCESS), str(first), str(tmp / "state"), str(out)]
                fleets.append(Proc(f"fleet-{first}", argv, {}, tmp))
                outputs.append(out)
            async with httpx.AsyncClient() as client:
                await _until_all(client, url, 180)
                await asyncio.sleep(2)  # settled: every bridge's first status poll and heartbeat done
                restart = time.time()
                api.stop()
                exited = time.time()
                api, _ = start_api_backend(tmp, env, port=port)
                serving = time.time()
                back = await _until_all(client, url, 180)
        finally:
            for fleet in fleets:
                fleet.stop()
            api.stop()
            backend.stop()
        attempts: list[list[float]] = []
        welcomes: list[float] = []
        for out in outputs:
            data = json.loads(out.read_text())
            attempts += [[t for t in times if t >= restart] for times in data["attempts"].values()]
            welcomes += [t for times in data["welcomes"].values() for t in times if t >= restart]
    counts = [len(times) for times in attempts]
    gaps = [b - a for times in attempts for a, b in itertools.pairwise(times)]
    return {
        "tunnel.reconnect_all_s": round(back - restart, 2),
        "tunnel.reconnect_restart_s": round(serving - restart, 2),
        "tunnel.reconnect_old_exit_s": round(exited - restart, 2),
        "tunnel.reconnect_peak_per_s": _peak_per_second(welcomes),
        "tunnel.reconnect_bridges": len(attempts),
        "tunnel.reconnect_attempts_max": max(counts, default=0),
        "tunnel.reconnect_attempts_mean": round(sum(counts) / max(1, len(counts)), 2),
        "tunnel.reconnect_min_gap_s": round(min(gaps), 3) if gaps else None,
    }


def _peak_per_second(times: list[float]) -> int:
    """The most events in any window of one second (a sliding window over the sorted times)."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best
