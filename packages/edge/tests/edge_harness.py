"""Helpers for the edge tests: upstream servers in a background thread and a handle on a running nginx."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import getpass
import os
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudtolocalllm.core.serving import bind_socket, serve
from cloudtolocalllm.core.testing import restartable_port
from cloudtolocalllm.edge.config import EdgeConfig, parse_config
from cloudtolocalllm.edge.nginx import Nginx
from cloudtolocalllm.edge.render import render

from .edge_upstream import Shared, build_app

HOSTS = ["localhost", "docs.localhost", "app.localhost"]
POOLS = {"static-site": 1, "flutter-app": 1, "api-backend": 2}


class UpstreamServers:
    """Upstream servers (core.serving) in one background thread with its own event loop."""

    def __init__(self, names: list[str]) -> None:
        self.shared = Shared()
        self.sockets = {name: bind_socket("127.0.0.1", 0) for name in names}
        self.addresses = {name: f"127.0.0.1:{sock.getsockname()[1]}" for name, sock in self.sockets.items()}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstreams", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await asyncio.gather(
            *(
                serve(
                    build_app(name, self.shared),
                    sock=sock,
                    graceful_timeout_s=1.0,
                    shutdown_trigger=self._stop.wait,
                )
                for name, sock in self.sockets.items()
            )
        )

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)
        for address in self.addresses.values():
            url = f"http://{address}/health"
            wait_for(functools.partial(_http_ok, url), "upstream to serve")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        for sock in self.sockets.values():
            sock.close()


def _http_ok(url: str, **kwargs: Any) -> bool:
    try:
        return httpx.get(url, timeout=2, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    """A port for nginx to listen on: it must be written into the config before nginx binds it, and nginx keeps
    it across reloads. Below the ephemeral range, so no bind(0) or outgoing connection takes it meanwhile."""
    return restartable_port()


def pool_instances(servers: UpstreamServers) -> dict[str, list[str]]:
    return {pool: [servers.addresses[f"{pool}#{i}"] for i in range(1, count + 1)] for pool, count in POOLS.items()}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Edge:
    """A running nginx rendered from an edge config, with helpers to talk to it."""

    config: EdgeConfig
    nginx: Nginx
    http_port: int
    https_port: int
    access_log: Path
    error_log: Path
    ca_file: Path
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def tls(self) -> bool:
        return self.config.tls.enabled

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self, **kwargs: Any) -> httpx.Client:
        client = httpx.Client(verify=self.ssl_context(), **{"timeout": 10, **kwargs})
        self.clients.append(client)
        return client

    def url(self, path: str, *, tls: bool | None = None) -> str:
        use_tls = self.tls if tls is None else tls
        if use_tls:
            return f"https://127.0.0.1:{self.https_port}{path}"
        return f"http://127.0.0.1:{self.http_port}{path}"

    def request(self, method: str, host: str, path: str, *, tls: bool | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Host": host, **kwargs.pop("headers", {})}
        client = self.clients[0] if self.clients else self.client()
        return client.request(method, self.url(path, tls=tls), headers=headers, **kwargs)

    def get(self, host: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", host, path, **kwargs)

    def log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def apply(self, text: str) -> None:
        """Install and reload, then wait until nginx serves the new generation."""
        generation = self.nginx.apply(text)
        workers = int(self.config.nginx.worker_processes)
        # Done when the new generation answers and the old workers (which still hold the listening
        # sockets while draining) have exited.
        wait_for(
            lambda: self.serving_generation() == generation and len(self.worker_processes()) == workers,
            f"generation {generation}",
        )

    def worker_processes(self) -> list[int]:
        """The master's children that serve requests (not the cache manager and loader)."""
        found = []
        for pid in self.nginx.worker_pids():
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"nginx: worker process"):
                found.append(pid)
        return found

    def started_or_exited(self) -> bool:
        return self.serving_generation() is not None or not self.nginx.running

    def serving_generation(self) -> str | None:
        try:
            host = self.config.hosts(self.config.sites[0])[0]
            response = httpx.get(f"http://127.0.0.1:{self.http_port}/health", headers={"Host": host}, timeout=2)
        except httpx.HTTPError:
            return None
        return response.json().get("config") if response.status_code == 200 else None

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.nginx.stop()


def base_config(
    runtime: Path,
    instances: dict[str, list[str]],
    tls_files: tuple[Path, Path],
    http_port: int,
    https_port: int,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": {
            "addresses": ["127.0.0.1"],
            "http_port": http_port,
            "https_port": https_port,
            "public_https_port": https_port,
        },
        "tls": {"certificate": str(tls_files[0]), "certificate_key": str(tls_files[1])},
        "acme": {"webroot": str(runtime / "acme")},
        "upstreams": {pool: {"instances": addrs} for pool, addrs in instances.items()},
        "logging": {"access_log": str(runtime / "access.log"), "error_log": "stderr", "error_level": "warn"},
        "nginx": {"runtime_dir": str(runtime), "worker_processes": "1", "worker_connections": 256},
    }
    if os.geteuid() == 0:
        # Started as root, nginx would drop its workers to "nobody", who cannot read pytest's 0700 temp dirs.
        data["nginx"]["user"] = getpass.getuser()
    return data


@contextlib.contextmanager
def released(gate: Any) -> Iterator[None]:
    """Always let a gated upstream handler finish, whatever the test asserted."""
    try:
        yield
    finally:
        gate.release.set()


SECURITY_HEADERS = {
    "x-frame-options": "SAMEORIGIN",
    "x-content-type-options": "nosniff",
    "x-xss-protection": "1; mode=block",
    "referrer-policy": "strict-origin-when-cross-origin",
}


def assert_security_headers(response: httpx.Response, *, tls: bool) -> None:
    """The seed's security headers, each exactly once, plus CSP; HSTS on TLS responses only."""
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get_list(name) == [value], (name, response.status_code, response.url)
    assert len(response.headers.get_list("content-security-policy")) == 1
    assert "default-src 'self'" in response.headers["content-security-policy"]
    hsts = response.headers.get_list("strict-transport-security")
    assert hsts == (["max-age=63072000; includeSubDomains"] if tls else []), (
        response.status_code,
        response.url,
    )


def start_edge(
    factory: pytest.TempPathFactory,
    tls_files: tuple[Path, Path],
    instances: dict[str, list[str]],
    overrides: dict[str, Any] | None,
) -> Edge:
    if shutil.which("nginx") is None:
        pytest.fail("nginx is not installed: run scripts/system-deps.sh")
    runtime = factory.mktemp("edge")
    (runtime / "acme" / ".well-known" / "acme-challenge").mkdir(parents=True)
    failure = ""
    for _attempt in range(3):  # a port seen free may be taken by someone else before nginx binds it
        http_port, https_port = free_port(), free_port()
        data = base_config(runtime, instances, tls_files, http_port, https_port)
        config = parse_config(merge(data, overrides or {}))
        nginx = Nginx(runtime, binary=config.nginx.binary)
        nginx.install(render(config))
        error_log = runtime / "error.log"
        with error_log.open("ab") as stderr:
            nginx.start(stderr=stderr)
        edge = Edge(config, nginx, http_port, https_port, runtime / "access.log", error_log, tls_files[0])
        try:
            wait_for(edge.started_or_exited, "nginx to serve")
        except BaseException:
            edge.close()  # never leave an nginx behind, whatever went wrong
            raise
        if edge.nginx.running:
            return edge
        edge.close()
        failure = error_log.read_text()
    raise AssertionError(f"nginx did not start: {failure}")
