"""Fixtures: real nginx on ephemeral loopback ports in front of real upstream servers (uvicorn)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudtolocalllm.edge.certs import write_self_signed
from cloudtolocalllm.edge.config import parse_config
from cloudtolocalllm.edge.controller import Controller
from cloudtolocalllm.edge.settings import ControllerSettings

from .controller_harness import RunningController
from .edge_harness import (
    HOSTS,
    POOLS,
    Edge,
    UpstreamServers,
    base_config,
    free_port,
    merge,
    pool_instances,
    start_edge,
)


@pytest.fixture(scope="session")
def upstreams() -> Iterator[UpstreamServers]:
    servers = UpstreamServers([f"{pool}#{i}" for pool, count in POOLS.items() for i in range(1, count + 1)])
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    write_self_signed([*HOSTS, "127.0.0.1"], cert, key)
    return cert, key


@pytest.fixture
def make_edge(
    upstreams: UpstreamServers, tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Edge]]:
    """Start nginx on a configuration derived from the test defaults; stopped when the test ends."""
    started: list[Edge] = []

    def start(overrides: dict[str, Any] | None = None, instances: dict[str, list[str]] | None = None) -> Edge:
        edge = start_edge(tmp_path_factory, tls_files, instances or pool_instances(upstreams), overrides)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.close()


@pytest.fixture(scope="module")
def edge(
    upstreams: UpstreamServers, tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    """The default configuration (TLS on, the seed's routing on the dev domains), shared by a module."""
    instance = start_edge(tmp_path_factory, tls_files, pool_instances(upstreams), None)
    try:
        yield instance
    finally:
        instance.close()


# Fast enough for tests, slow enough for a busy 2-core machine: an instance leaves after 2 failed checks
# (~0.5 s) and returns after 2 good ones.
FAST_CHECKS = {"interval": 0.2, "timeout": 1.0, "fall": 2, "rise": 2}
FAST_SETTINGS = ControllerSettings(cert_poll_interval=0.1, restart_backoff=0.2, stop_timeout=10)


@pytest.fixture(scope="module")
def ctl_upstreams() -> Iterator[UpstreamServers]:
    """Upstreams of its own for each controller test module: tests flip their /health answers."""
    servers = UpstreamServers([f"{pool}#{i}" for pool, count in POOLS.items() for i in range(1, count + 1)])
    servers.start()
    yield servers
    servers.stop()


@pytest.fixture
def make_controller(
    ctl_upstreams: UpstreamServers, tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RunningController]]:
    """Run the controller in-process (its own thread and loop) on real nginx; stopped when the test ends."""
    started: list[RunningController] = []

    def start(
        overrides: dict[str, Any] | None = None,
        instances: dict[str, list[str]] | None = None,
        settings: ControllerSettings = FAST_SETTINGS,
        tls: tuple[Path, Path] | None = None,
    ) -> RunningController:
        runtime = tmp_path_factory.mktemp("ctl")
        (runtime / "acme" / ".well-known" / "acme-challenge").mkdir(parents=True)
        http_port, https_port = free_port(), free_port()
        files = tls or tls_files
        data = base_config(runtime, instances or pool_instances(ctl_upstreams), files, http_port, https_port)
        data["health_checks"] = dict(FAST_CHECKS)
        # These tests send bursts of requests; the limits themselves are tested in test_limits_failover.py.
        data["rate_limits"] = {name: {"rate": 100000, "burst": 100000} for name in ("api", "general")}
        config = parse_config(merge(data, overrides or {}))
        controller = Controller(config, settings)
        edge = Edge(config, controller.nginx, http_port, https_port, runtime / "access.log", runtime, files[0])
        running = RunningController(controller, edge)
        started.append(running)
        running.start()
        return running

    yield start
    for running in started:
        running.stop()
