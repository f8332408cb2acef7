"""Several replicas (issue targets in brackets): two api-backend processes sharing a real redis-server, one
real bridge (to the fast local test backend) connected to replica B.

- scale.cross_replica_ttfb_overhead_ms.p50/.p99: added time to first byte when the request lands on replica A
  (which relays it to B) vs on B itself [<= 1 ms p50]. Requests one at a time, A and B interleaved, in
  rounds; each figure is the median over the rounds of (A's percentile - B's percentile).
- scale.owner_ttfb_ms.p50 / scale.relayed_ttfb_ms.p50: the two absolute figures (median over rounds).
- scale.cross_replica_cpu_ms_per_request: CPU (both replicas' processes, user + system) a relayed request
  costs more than one served by the owner: what the hop adds on an idle machine, independent of how busy a
  shared machine is (the latency figures above are not).

Both replicas look the bridge up in Redis the same way, so the overhead is the relay hop itself: one more
HTTP exchange on a pooled keep-alive connection and the token verified again by the owner.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
from pathlib import Path

from cloudtolocalllm.devkit.procs import Proc, free_port, start_api_backend, start_redis

from .http_calls import ONE_CHUNK_CHAT, ttfb_ms
from .local_cloud import dev_auth, start_bench_bridge, start_fast_backend
from .proc_cpu import cpu_ms
from .stats import percentile

ROUNDS = 7
PAIRS_PER_ROUND = 150
CHAT = "/api/ollama" + ONE_CHUNK_CHAT


async def run() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        backend, backend_port = start_fast_backend(tmp)
        redis, redis_url = start_redis(tmp, tmp / "redis")
        apis: list[Proc] = []
        bridge: Proc | None = None
        try:
            auth_env, issuer = dev_auth(tmp)
            env = {**auth_env, "API_REDIS_URL": redis_url}
            ports = [free_port(), free_port()]
            for port in ports:
                api, _ = start_api_backend(tmp, {**env, "API_REPLICA_URL": f"http://127.0.0.1:{port}"}, port=port)
                apis.append(api)
            entry_port, owner_port = ports
            token = issuer.mint("bench", ttl_s=7200)
            token_file = tmp / "token"
            token_file.write_text(token)
            bridge = start_bench_bridge(tmp, f"http://127.0.0.1:{owner_port}", token_file, backend_port, "bench")
            auth = {"authorization": f"Bearer {token}"}
            await _wait_served(entry_port, auth)
            results = await _measure(entry_port, owner_port, auth)
            results.update(await _cpu(apis[0], apis[1], entry_port, owner_port, auth))
            return results
        finally:
            if bridge is not None:
                bridge.stop()
            for api in apis:
                api.stop()
            redis.stop()
            backend.stop()


async def _wait_served(port: int, auth: dict[str, str]) -> None:
    for _ in range(300):
        try:
            await ttfb_ms(port, CHAT, auth)
            return
        except RuntimeError:
            await asyncio.sleep(0.1)
    raise RuntimeError("the bridge never became reachable through the other replica")


async def _measure(entry_port: int, owner_port: int, auth: dict[str, str]) -> dict[str, object]:
    for _ in range(50):  # warm up both paths (connection pool, token caches)
        await ttfb_ms(entry_port, CHAT, auth)
        await ttfb_ms(owner_port, CHAT, auth)
    p50s: list[tuple[float, float]] = []
    p99s: list[tuple[float, float]] = []
    for _ in range(ROUNDS):  # a shared machine drifts: interleave, and take the median over rounds
        owner: list[float] = []
        relayed: list[float] = []
        for _ in range(PAIRS_PER_ROUND):
            owner.append(await ttfb_ms(owner_port, CHAT, auth))
            relayed.append(await ttfb_ms(entry_port, CHAT, auth))
        p50s.append((percentile(owner, 50), percentile(relayed, 50)))
        p99s.append((percentile(owner, 99), percentile(relayed, 99)))
    return {
        "scale.cross_replica_ttfb_overhead_ms.p50": round(statistics.median(r - o for o, r in p50s), 3),
        "scale.cross_replica_ttfb_overhead_ms.p99": round(statistics.median(r - o for o, r in p99s), 3),
        "scale.owner_ttfb_ms.p50": round(statistics.median(o for o, _ in p50s), 3),
        "scale.relayed_ttfb_ms.p50": round(statistics.median(r for _, r in p50s), 3),
        "scale.cross_replica_rounds": ROUNDS,
        "scale.cross_replica_samples": ROUNDS * PAIRS_PER_ROUND,
    }


async def _cpu(entry: Proc, owner: Proc, entry_port: int, owner_port: int, auth: dict[str, str]) -> dict[str, object]:
    count = 1000
    before = cpu_ms([entry.pid]), cpu_ms([owner.pid])
    for _ in range(count):
        await ttfb_ms(entry_port, CHAT, auth)
    relayed = (cpu_ms([entry.pid]) - before[0] + cpu_ms([owner.pid]) - before[1]) / count
    before_owner = cpu_ms([owner.pid])
    for _ in range(count):
        await ttfb_ms(owner_port, CHAT, auth)
    owned = (cpu_ms([owner.pid]) - before_owner) / count
    return {
        "scale.relayed_cpu_ms_per_request": round(relayed, 3),
        "scale.owner_cpu_ms_per_request": round(owned, 3),
        "scale.cross_replica_cpu_ms_per_request": round(relayed - owned, 3),
    }
