"""API keys: verifying a cached key (the per-request cost a key adds), an uncached one (a SQLite lookup),
and how long a revocation broadcast takes to reach another replica's listener over a real Redis."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from cloudtolocalllm.bridge_api.database import DatabaseSettings, create_engine_for, database_url_for, migrate
from cloudtolocalllm.bridge_api.keys.broadcast import RedisInvalidations
from cloudtolocalllm.bridge_api.keys.store import KeyStore
from cloudtolocalllm.bridge_api.keys.verifier import KeyVerifier
from cloudtolocalllm.core.auth import TokenVerifier
from cloudtolocalllm.dev_issuer import DevIssuer
from cloudtolocalllm.devkit.procs import start_redis

from .stats import percentile


async def _timed(calls: int, verify: object, token: str) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await verify(token)  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _verification(folder: Path) -> dict[str, object]:
    engine = create_engine_for(database_url_for(DatabaseSettings(), folder / "data"), timeout_s=2.0)
    await migrate(engine)
    store = KeyStore(engine, max_keys_per_user=1000)
    _, key = await store.create("bench-user", "bench", ["inference"])
    cached = KeyVerifier(store, ttl_s=3600)
    await _timed(500, cached.verify, key)  # warm up
    key_samples = await _timed(5000, cached.verify, key)
    uncached = KeyVerifier(store, ttl_s=1e-9)  # every call goes to the database
    await _timed(20, uncached.verify, key)
    lookup_samples = await _timed(500, uncached.verify, key)
    await engine.dispose()

    issuer = DevIssuer(folder / "issuer", issuer="https://bench/", audience="bench")
    tokens = TokenVerifier(issuer="https://bench/", audience="bench", keys=issuer.key_source())
    token = issuer.mint("bench-user", scopes=["a"])
    await _timed(500, tokens.verify, token)
    jwt_samples = await _timed(5000, tokens.verify, token)
    key_p50, jwt_p50 = percentile(key_samples, 50), percentile(jwt_samples, 50)
    return {
        "keys.verify_ms.p50": round(key_p50, 4),
        "keys.verify_ms.p99": round(percentile(key_samples, 99), 4),
        "keys.verify_ms.target": 0.1,
        "keys.verify_cached_jwt_ms.p50": round(jwt_p50, 4),
        "keys.verify_key_to_jwt_ratio": round(key_p50 / jwt_p50, 2),
        "keys.verify_uncached_sqlite_ms.p50": round(percentile(lookup_samples, 50), 3),
    }


async def _broadcast(folder: Path) -> dict[str, object]:
    if shutil.which("redis-server") is None:
        return {"keys.revoke_broadcast_ms": "redis-server not installed"}
    proc, url = start_redis(folder, folder / "redis", unix_socket=True)
    try:
        sender, receiver = RedisInvalidations(url, timeout_s=2.0), RedisInvalidations(url, timeout_s=2.0)
        arrived: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        await receiver.start(lambda key_id: arrived.put_nowait((key_id, time.perf_counter())), lambda: None)
        samples = []
        for round_ in range(200):
            started = time.perf_counter()
            await sender.after_commit(f"key-{round_}")
            key_id, at = await asyncio.wait_for(arrived.get(), 5)
            assert key_id == f"key-{round_}", (key_id, round_)
            samples.append((at - started) * 1000)
        await sender.close()
        await receiver.close()
    finally:
        proc.stop()
    return {
        "keys.revoke_broadcast_ms.p50": round(percentile(samples, 50), 3),
        "keys.revoke_broadcast_ms.p99": round(percentile(samples, 99), 3),
        "keys.revoke_broadcast_ms.target": 1000,
    }


async def run() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        results = await _verification(Path(tmp))
        results.update(await _broadcast(Path(tmp)))
    return results
