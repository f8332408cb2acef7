"""The ``cloudtolocalllm-edge`` console script as the container runs it: a real process, signals, JSON logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .edge_harness import UpstreamServers, base_config, free_port, pool_instances, wait_for


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for the test configuration: tables of scalars and lists of scalars."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, str):
            return json.dumps(item)
        return "[" + ", ".join(value(element) for element in item) + "]"

    scalars = [f"{key} = {value(item)}" for key, item in data.items() if not isinstance(item, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars + [""]
    for key, item in data.items():
        if isinstance(item, dict):
            out.append(_toml(item, f"{prefix}.{key}" if prefix else key))
    return "\n".join(out)


def _command() -> list[str]:
    script = Path(sys.executable).parent / "cloudtolocalllm-edge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cloudtolocalllm.edge.cli"]


class EdgeProcess:
    def __init__(self, config_file: Path, extra_env: dict[str, str] | None = None) -> None:
        env = {
            **os.environ,
            "EDGE_CONFIG": str(config_file),
            "EDGE_ADMIN_PORT": "0",
            "EDGE_RESTART_BACKOFF": "0.2",
            "EDGE_CERT_POLL_INTERVAL": "0.2",
            **(extra_env or {}),
        }
        self.process = subprocess.Popen(_command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.admin_url = ""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            self.lines.append(raw.decode())

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def wait_admin(self) -> None:
        def found() -> bool:
            for record in self.records():
                if record["msg"] == "admin endpoints listening":
                    self.admin_url = "http://" + record["admin_address"]
                    return True
            return self.process.poll() is not None

        wait_for(found, "the admin endpoints", timeout=30)
        assert self.admin_url, self.stderr()

    def stderr(self) -> str:
        return self.process.stderr.read().decode() if self.process.poll() is not None and self.process.stderr else ""

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(self.admin_url + path, timeout=5)

    def ready(self) -> bool:
        try:
            return self.admin("/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(40)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
            self._reader.join(10)
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def edge_process(
    tmp_path: Path, ctl_upstreams: UpstreamServers, tls_files: tuple[Path, Path]
) -> Iterator[tuple[EdgeProcess, dict[str, Any]]]:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    data = base_config(runtime, pool_instances(ctl_upstreams), tls_files, free_port(), free_port())
    data["health_checks"] = {"interval": 0.5, "timeout": 1.0, "fall": 2, "rise": 2}
    config_file = tmp_path / "edge.toml"
    config_file.write_text(_toml(data))
    edge = EdgeProcess(config_file)
    try:
        yield edge, data
    finally:
        edge.stop()
        # A failed test must not leave its nginx behind: the master this test started names our runtime dir.
        pid_file = runtime / "nginx.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if str(runtime) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)


def _gone(pid: int) -> bool:
    """Exited and reaped (a zombie still has its /proc entry)."""
    return not Path(f"/proc/{pid}").exists()


def _metric(edge: EdgeProcess, name: str) -> float:
    for line in edge.admin("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_the_controller_restarts_a_killed_nginx_and_stops_it_gracefully_on_sigterm(
    edge_process: tuple[EdgeProcess, dict[str, Any]],
) -> None:
    edge, data = edge_process
    edge.wait_admin()
    wait_for(edge.ready, "the edge to be ready", timeout=30)
    http = f"http://127.0.0.1:{data['listen']['http_port']}/health"
    assert httpx.get(http, headers={"Host": "app.localhost"}).status_code == 200
    before = edge.admin("/status").json()["nginx"]
    assert _metric(edge, "edge_nginx_restarts_total") == 0

    os.kill(before["pid"], signal.SIGKILL)  # e.g. the OOM killer
    wait_for(lambda: edge.admin("/status").json()["nginx"]["pid"] not in (None, before["pid"]), "a new nginx")
    wait_for(edge.ready, "the edge to be ready again")
    assert httpx.get(http, headers={"Host": "app.localhost"}).status_code == 200
    assert _metric(edge, "edge_nginx_restarts_total") == 1
    assert _metric(edge, "edge_nginx_up") == 1
    # The dead master's workers held the listening sockets: the controller stopped (and reaped) them.
    wait_for(lambda: all(_gone(pid) for pid in before["workers"]), "the orphaned workers to exit")
    after = edge.admin("/status").json()["nginx"]

    assert edge.stop() == 0
    assert _gone(after["pid"])
    records = edge.records()  # every line on stdout is one JSON object
    messages = [record["msg"] for record in records]
    assert "nginx exited unexpectedly; restarting it" in messages
    assert messages[-1] == "nginx stopped"
    assert {record["service"] for record in records} == {"edge"}


def test_a_bad_configuration_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    config_file = tmp_path / "edge.toml"
    config_file.write_text('[upstreams.api-backend]\ninstances = ["api-backend"]\n')
    result = subprocess.run(
        _command(),
        env={**os.environ, "EDGE_CONFIG": str(config_file)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "$.upstreams.api-backend.instances[0]: expected a 'host:port' address" in result.stderr


def test_bad_settings_are_refused_naming_the_variable() -> None:
    result = subprocess.run(
        _command(),
        env={**os.environ, "EDGE_ADMIN_PORT": "admin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "EDGE_ADMIN_PORT" in result.stderr


def test_set_pool_asks_the_running_controller_on_its_admin_port(
    edge_process: tuple[EdgeProcess, dict[str, Any]], ctl_upstreams: UpstreamServers
) -> None:
    edge, _ = edge_process
    edge.wait_admin()
    wait_for(edge.ready, "the edge to be ready", timeout=30)
    env = {**os.environ, "EDGE_ADMIN_PORT": edge.admin_url.rsplit(":", 1)[1]}
    second = pool_instances(ctl_upstreams)["api-backend"][1]
    applied = subprocess.run(
        [*_command(), "set-pool", "api-backend", second], env=env, capture_output=True, text=True, timeout=120
    )
    assert applied.returncode == 0, applied.stderr
    assert [i["instance"] for i in json.loads(applied.stdout)["instances"]] == [second]
    pools = [(u["pool"], u["instance"]) for u in edge.admin("/status").json()["upstreams"]]
    assert [name for pool, name in pools if pool == "api-backend"] == [second]

    refused = subprocess.run(
        [*_command(), "set-pool", "api-backend", f"127.0.0.1:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "refused (409)" in refused.stderr
    usage = subprocess.run([*_command(), "set-pool"], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2
    assert "usage:" in usage.stderr
