"""Static server figures: requests/s for a 2 KB file on one uvicorn worker, next to the same server's
/health and nginx serving the same file from disk. Ratios are measured in one run, rounds interleaved.

Run it alone with ``python packages/static_site/benchmarks/bench_static_site.py`` (needs ``wrk``; nginx is
optional), or call ``run()`` from the benchmark runner. It measures; it never fails on a timing.
"""

# Like the root benchmarks/ folder: this starts our own processes and tools by name on purpose.
# ruff: noqa: S603, S607

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILE_SIZE = 2048
ROUNDS = 3
SECONDS = 5

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  types {{ text/plain txt; }}
  client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
  access_log {dir}/access.log;
  sendfile on;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    add_header Cache-Control "public, max-age=300" always;
    add_header X-Content-Type-Options nosniff always;
  }}
}}
"""


def _wrk_rps(url: str, seconds: int = SECONDS) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match or "Non-2xx" in out:
        raise RuntimeError(f"unexpected wrk output: {out}")
    return float(match.group(1))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            subprocess.run(["wrk", "-t1", "-c1", "-d1s", url], capture_output=True, check=True)
            return
        except subprocess.CalledProcessError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _start_static_site(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    script = shutil.which("cloudtolocalllm-static-site", path=str(Path(sys.executable).parent))
    if script is None:
        raise RuntimeError("cloudtolocalllm-static-site is not installed in this environment")
    port = _free_port()
    env = {**os.environ, "STATIC_ROOT": str(root), "STATIC_PORT": str(port)}
    # Access logs stay on (as deployed) and go to /dev/null, as nginx's would go to a file.
    proc = subprocess.Popen([script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def _start_nginx(root: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        return None
    port = _free_port()
    (workdir / "tmp").mkdir()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port, root=root))
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc, f"http://127.0.0.1:{port}"


def measure() -> dict[str, object]:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - nginx workers run as an unprivileged user when started as root
        root = Path(tmp) / "site"
        root.mkdir()
        (root / "file.txt").write_bytes(b"x" * FILE_SIZE)
        static, static_url = _start_static_site(root)
        nginx = _start_nginx(root, Path(tmp))
        try:
            _wait_ready(static_url + "/file.txt")
            if nginx:
                _wait_ready(nginx[1] + "/file.txt")
            samples: dict[str, list[float]] = {"file": [], "health": [], "nginx": []}
            for _ in range(ROUNDS):
                samples["file"].append(_wrk_rps(static_url + "/file.txt"))
                samples["health"].append(_wrk_rps(static_url + "/health"))
                if nginx:
                    samples["nginx"].append(_wrk_rps(nginx[1] + "/file.txt"))
        finally:
            for proc in (static, nginx[0] if nginx else None):
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
    file_rps = statistics.median(samples["file"])
    health_rps = statistics.median(samples["health"])
    results["static_site.small_file_rps"] = round(file_rps)
    results["static_site.health_rps"] = round(health_rps)
    results["static_site.small_file_vs_health"] = round(file_rps / health_rps, 2)
    if samples["nginx"]:
        nginx_rps = statistics.median(samples["nginx"])
        results["static_site.nginx_small_file_rps"] = round(nginx_rps)
        results["static_site.small_file_vs_nginx"] = round(file_rps / nginx_rps, 3)
    results["static_site.tool"] = f"wrk -t1 -c32 -d{SECONDS}s, median of {ROUNDS} interleaved rounds"
    return results


async def run() -> dict[str, object]:
    if shutil.which("wrk") is None:
        return {"static_site.skipped": "wrk is not installed (scripts/system-deps.sh installs it)"}
    return await asyncio.to_thread(measure)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run()), indent=2, sort_keys=True))
