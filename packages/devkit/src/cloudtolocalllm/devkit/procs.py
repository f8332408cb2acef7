"""The one process launcher: the real programs (api-backend, a bridge, the local model, redis, nginx) as
child processes whose output goes to a log file, for the end-to-end tests, the benchmarks and the dev stack.

Every such child starts through :mod:`cloudtolocalllm.devkit.launch` and is held as its ``Proc`` (its log
and JSON records, what it printed, stop, RSS); ``start_*`` here start one program and wait until it answers.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from cloudtolocalllm.core.testing import restartable_port
from cloudtolocalllm.dev_issuer import DevIssuer
from cloudtolocalllm.devkit import local_model

# Re-exported: the tests and the benchmarks import them from here with the start_* that return and use them.
from cloudtolocalllm.devkit.launch import Proc as Proc
from cloudtolocalllm.devkit.launch import wait_for as wait_for
from cloudtolocalllm.devkit.repo import ROOT

BIN = Path(sys.executable).parent
REPO = Path(os.environ.get("CTLLM_REPO_ROOT") or ROOT)


def free_port() -> int:
    """A port for a server that must be given its port before it starts, or that is restarted on it: below the
    kernel's ephemeral range, never handed out twice (no bind(0) elsewhere can take it meanwhile). A server that
    reports the port it bound (api-backend) binds port 0 instead."""
    return restartable_port()


def read_metric(url: str, name: str) -> float:
    """The value of Prometheus metric ``name`` (its first sample) at ``url``/metrics; fails if it is missing."""
    text = httpx.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found at {url}/metrics")


def start_port_printer(name: str, args: list[str], log_dir: Path) -> tuple[Proc, int]:
    """Run Python with ``args`` (a script or ``-m module``) that prints its port first; return it and the port."""
    proc = Proc(name, [sys.executable, *args], {}, log_dir)
    try:
        port_text = wait_for(lambda: proc.log_text().strip(), 10, f"the {name}'s port")
    except BaseException:
        proc.stop()
        raise
    return proc, int(port_text.splitlines()[0])


def listening_port(proc: Proc, timeout: float) -> int:
    """The port a service bound, from its "listening" log record."""

    def logged() -> int | None:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited: {proc.log_text()[-2000:]}")
        return next((int(r["port"]) for r in proc.records() if r.get("msg") == "listening"), None)

    port: int = wait_for(logged, timeout, f"{proc.name} to log its port")
    return port


def wait_until_answers(proc: Proc, url: str, timeout: float) -> None:
    """Wait for ``url`` to answer 200, failing at once (with its log) if the process exits first."""

    def answers() -> bool:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited: {proc.log_text()[-2000:]}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answers, timeout, f"{proc.name} at {url}")


def dev_auth_env(issuer_dir: Path, issuer_url: str, audience: str) -> tuple[dict[str, str], DevIssuer]:
    """api-backend's environment for its embedded dev issuer, and the same issuer here to mint tokens it accepts.

    The issuer's key is created in ``issuer_dir`` now, so it exists before any api-backend (or replica) starts
    and every process signs and verifies with that one key.
    """
    issuer = DevIssuer(issuer_dir, issuer=issuer_url, audience=audience)
    env = {
        "DEV_AUTH": "true",
        "DEV_ISSUER_DIR": str(issuer_dir),
        "DEV_ISSUER_URL": issuer_url,
        "DEV_AUDIENCE": audience,
    }
    return env, issuer


def start_api_backend(log_dir: Path, env: dict[str, str], port: int | None = None) -> tuple[Proc, str]:
    """api-backend on ``port``, or on the port 0 it binds and logs (pass a port only to restart on it)."""
    proc = Proc(
        f"api-backend-{time.monotonic_ns()}",
        [str(BIN / "cloudtolocalllm-api-backend")],
        # Its own SQLite database for API keys unless ``env`` names one (the stack fixture does, for restarts).
        {
            "API_PORT": str(port or 0),
            "API_RECONNECT_GRACE_S": "0",
            "API_DATA_DIR": str(log_dir / f"api-data-{time.monotonic_ns()}"),
            **env,
        },
        log_dir,
    )
    port = port or listening_port(proc, 30)
    url = f"http://127.0.0.1:{port}"
    wait_until_answers(proc, url + "/health", 30)
    return proc, url


def start_bridge(
    log_dir: Path,
    *,
    cloud: str,
    token_file: Path,
    backend: str,
    kind: str = "auto",
    state_dir: Path,
    name: str = "e2e",
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Proc:
    argv = [
        str(BIN / "cloudtolocalllm-bridge"),
        "run",
        "--cloud",
        cloud,
        "--token-file",
        str(token_file),
        "--backend",
        backend,
        "--backend-kind",
        kind,
        "--state-dir",
        str(state_dir),
        "--name",
        name,
        *(extra or []),
    ]
    return Proc(f"bridge-{name}-{time.monotonic_ns()}", argv, env or {}, log_dir)


def start_local_model(log_dir: Path, serve_args: Sequence[str] = ()) -> tuple[Proc, str]:
    """The bundled model, ready only once it has answered one real completion: a build this CPU cannot run dies
    there, and the test run says so in one line, as soon as it dies, instead of 20 odd failures.

    ``serve_args``: more options of ``ctllm-local-model serve`` (``--build native``, ``--threads 1``)."""
    port = free_port()
    argv = [sys.executable, "-m", "cloudtolocalllm.devkit.local_model", "serve", "--port", str(port), *serve_args]
    proc = Proc(f"llama-server-{port}", argv, {}, log_dir)
    try:
        local_model.wait_ready(proc.popen, "127.0.0.1", port, timeout=120)
    except local_model.LocalModelError as failed:  # ServerDied as soon as it exits
        state = "is still running" if proc.alive() else f"exited ({proc.popen.returncode})"
        proc.stop()
        raise AssertionError(
            f"the bundled model {state} and failed its self-test; see {proc.log_path}: {failed}"
        ) from None
    return proc, f"http://127.0.0.1:{port}"


def start_redis(
    log_dir: Path, work_dir: Path, port: int | None = None, *, unix_socket: bool = False
) -> tuple[Proc, str]:
    """A real redis-server on loopback, without persistence (a restart starts empty, as in a crash).

    ``unix_socket``: it listens on ``work_dir``/redis.sock only, with no TCP port."""
    work_dir.mkdir(parents=True, exist_ok=True)
    address: str | tuple[str, int]
    if unix_socket:
        path = str(work_dir / "redis.sock")
        family, address, url = socket.AF_UNIX, path, f"unix://{path}"
        listen = ["--port", "0", "--unixsocket", path]
    else:
        port = port or free_port()
        family, address, url = socket.AF_INET, ("127.0.0.1", port), f"redis://127.0.0.1:{port}/0"
        listen = ["--port", str(port), "--bind", "127.0.0.1"]
    argv = ["redis-server", *listen, "--save", "", "--appendonly", "no", "--dir", str(work_dir)]
    proc = Proc(f"redis-{port or 'socket'}-{time.monotonic_ns()}", argv, {}, log_dir)

    def answers() -> bool:
        if not proc.alive():
            raise AssertionError(f"redis-server exited: {proc.log_text()[-2000:]}")
        try:
            with socket.socket(family) as sock:
                sock.settimeout(1)
                sock.connect(address)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_for(answers, 20, "redis-server")
    return proc, url


_LB_CONF = """
worker_processes 1;
pid {root}/nginx.pid;
daemon off;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream replicas {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 3600s;
      proxy_connect_timeout 2s;
      proxy_next_upstream error timeout;
    }}
  }}
}}
"""


def start_load_balancer(log_dir: Path, work_dir: Path, backends: list[str]) -> tuple[Proc, str]:
    """nginx round-robin over ``backends`` (http://127.0.0.1:PORT), no stickiness: what the edge or a
    Kubernetes Service does in front of api-backend replicas. A refused backend is skipped (next upstream)."""
    port = free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    servers = "\n".join(f"    server {url.removeprefix('http://')} max_fails=1 fail_timeout=30s;" for url in backends)
    conf = work_dir / "nginx.conf"
    conf.write_text(_LB_CONF.format(root=work_dir, servers=servers, port=port))
    argv = ["nginx", "-p", f"{work_dir}/", "-c", str(conf), "-e", "stderr"]
    proc = Proc(f"load-balancer-{port}", argv, {}, log_dir)
    url = f"http://127.0.0.1:{port}"
    wait_until_answers(proc, url + "/health", 20)
    return proc, url
