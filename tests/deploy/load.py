"""Requests sent to the edge without pause from a few threads, every outcome counted.

Each request opens a fresh connection: at a graceful reload nginx closes its *idle* keep-alive connections,
and a client reusing one at that instant sees it closed before its request was read (browsers and most HTTP
clients retry an idempotent request then). That is a property of reloads, counted separately by the edge's
own tests; here every failure must come from the update itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

Check = Callable[[httpx.Client], str | None]  # None: success, else what went wrong


@dataclass
class Tally:
    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)


def page(url: str, host: str, marker: bytes) -> Check:
    def check(client: httpx.Client) -> str | None:
        response = client.get(url, headers={"Host": host})
        if response.status_code != 200:
            return f"status {response.status_code}"
        return None if marker in response.content else "unexpected body"

    return check


def chat_stream(url: str, host: str, token: str, model: str) -> Check:
    """A streamed chat through the tunnel: a success ends with ``"done": true``."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Host": host, "Authorization": f"Bearer {token}"}

    def check(client: httpx.Client) -> str | None:
        lines = 0
        try:
            with client.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    retry = response.headers.get("retry-after")
                    return f"status {response.status_code} (retry-after {retry}) before the stream"
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    lines += 1
                    data = json.loads(line)
                    if "error" in data:
                        return f"error line after {lines - 1} tokens (in flight)"
                    if data.get("done"):
                        return None
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__} after {lines} lines" + (" (in flight)" if lines else "")
        return f"stream ended without done after {lines} lines (in flight)"

    return check


class Load:
    """``workers`` threads per named check, each sending one request after another until stopped."""

    def __init__(self, checks: dict[str, tuple[Check, int]]) -> None:
        self.tallies = {name: Tally() for name in checks}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, args=(name, check), daemon=True, name=f"load-{name}-{i}")
            for name, (check, workers) in checks.items()
            for i in range(workers)
        ]

    def _work(self, name: str, check: Check) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=60, limits=limits, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    problem = check(client)
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    tally = self.tallies[name]
                    if problem is None:
                        tally.ok += 1
                    else:
                        tally.failures.append((time.monotonic(), problem))
                if problem is not None:
                    time.sleep(0.05)  # a failing target is not hammered in a tight loop

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return {name: (t.ok, len(t.failures)) for name, t in self.tallies.items()}

    def wait_for_successes(self, name: str, count: int, timeout: float = 120) -> None:
        start = self.snapshot()[name][0]
        deadline = time.monotonic() + timeout
        while self.snapshot()[name][0] < start + count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: fewer than {count} successes in {timeout:.0f}s: {self.tallies[name]}")
            time.sleep(0.1)
