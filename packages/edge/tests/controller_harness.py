"""Run the controller (and its admin app on a real loopback port) in a background thread with its own loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import ssl
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.edge.certs import certificate_fingerprint
from cloudtolocalllm.edge.controller import Controller

from .edge_harness import Edge

T = TypeVar("T")


class RunningController:
    def __init__(self, controller: Controller, edge: Edge) -> None:
        self.controller = controller
        self.edge = edge
        self.admin_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edge-controller", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.controller.start()
        try:
            async with running_server(self.controller.app) as url:
                self.admin_url = url
                self._ready.set()
                await self._stop.wait()
        finally:
            await self.controller.stop()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(60):
            raise AssertionError("the controller did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        self.edge.close()
        self.controller.nginx.stop()  # never leave nginx behind, whatever happened in the thread

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        assert self._loop is not None
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def get(self, host: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request on a fresh connection: a kept-alive one may be closed by a reload (see the reload test)."""
        with httpx.Client(verify=self.edge.ssl_context(), timeout=10) as client:
            return client.get(self.edge.url(path), headers={"Host": host}, **kwargs)

    # -- admin endpoints -------------------------------------------------------------------------------

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(self.admin_url + path, timeout=5)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, keyed by (name, sorted labels)."""
        text = self.admin("/metrics").text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), float("nan"))

    def up(self, pool: str, instance: str) -> float:
        return self.metric("edge_upstream_up", pool=pool, instance=instance)


def served_fingerprint(port: int, server_name: str = "app.localhost") -> str:
    """SHA-256 fingerprint of the leaf certificate the edge presents (no verification: we compare it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return certificate_fingerprint(der)


def file_fingerprint(path: Path) -> str:
    return certificate_fingerprint(path.read_bytes())
