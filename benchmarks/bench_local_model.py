"""The bundled model's speed: its portable llama.cpp build next to a -march=native one, in one run.

The portable build is what the dev stack and the tests serve; native is measured only where its venv is
already prepared (``ctllm-local-model ensure --build native``: minutes, so never implicitly) and
only where it runs (on some virtual machines it dies at the first completion, which is why it is opt-in).
Both servers run at once with one thread each and take turns, so a busy machine slows both alike.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from cloudtolocalllm.devkit.procs import Proc, start_local_model

from .stats import median

LOCAL_MODEL = [sys.executable, "-m", "cloudtolocalllm.devkit.local_model"]
ROUNDS = 5
STORY = {
    "model": "smollm2:135m",
    "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
    "temperature": 0,
    "max_tokens": 128,
}


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOCAL_MODEL, *args], capture_output=True, text=True, check=False)


def _start(build: str, log_dir: Path) -> tuple[Proc, str] | None:
    """The server of ``build`` on one thread, or None if it died before its first answer (native may)."""
    try:
        return start_local_model(log_dir, ["--build", build, "--threads", "1"])
    except AssertionError:
        return None


async def _tokens_per_s(client: httpx.AsyncClient, url: str) -> float:
    started = time.perf_counter()
    response = await client.post(url + "/v1/chat/completions", json=STORY, timeout=120)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"]) / (time.perf_counter() - started)


async def run() -> dict[str, object]:
    if _script("ensure").returncode != 0:
        return {"local_model.error": "ensure failed: ctllm-local-model ensure"}
    builds = ["portable"] + (["native"] if _script("model-path", "--build", "native").returncode == 0 else [])
    with tempfile.TemporaryDirectory() as logs:
        servers = {build: _start(build, Path(logs)) for build in builds}
        results: dict[str, object] = {}
        try:
            running = {build: started[1] for build, started in servers.items() if started is not None}
            if "native" in builds and "native" not in running:
                results["local_model.native"] = "prepared, but died before its first answer on this CPU"
            rounds: dict[str, list[float]] = {build: [] for build in running}
            async with httpx.AsyncClient() as client:
                for _ in range(ROUNDS):
                    for build, url in running.items():
                        rounds[build].append(await _tokens_per_s(client, url))
            for build, figures in rounds.items():
                results[f"local_model.tok_s.{build}"] = round(median(figures), 1)
                results[f"local_model.tok_s.{build}.rounds"] = [round(f, 1) for f in figures]
            if len(rounds) == 2:
                results["local_model.portable_vs_native_ratio"] = round(
                    median(rounds["portable"]) / median(rounds["native"]), 3
                )
        finally:
            for started in servers.values():
                if started is not None:
                    started[0].stop(timeout=30)
    return results


if __name__ == "__main__":
    print(asyncio.run(run()))
