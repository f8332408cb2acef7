"""Edge figures: the latency the edge adds in front of an upstream, and static throughput through it.

Both compare against the same origin: an nginx serving files from disk (``worker_processes 1``). The edge is
the real rendered configuration (security headers, cache map, buffered JSON access log, upstream keep-alive) with
``worker_processes 1`` and its rate limits raised so the load generator measures throughput, not the limiter.

- ``edge.overhead_ms.p50``: one keep-alive client alternates requests to the origin and through the edge
  (plain HTTP both ways), ``edge.overhead_ms.p50`` = p50(through the edge) - p50(direct). The same over TLS
  (``edge.overhead_tls_ms.p50``) adds the edge's TLS termination.
- ``edge.static_ratio_vs_nginx_direct``: ``wrk`` requests/s for a 16 KB content-hashed asset through the
  edge as production runs it (its cache on, warmed before the first round, revalidating every couple of
  seconds as configured), divided by the origin nginx serving the same file from disk. Same wrk settings for
  every side; the sides are interleaved over ``ROUNDS`` rounds (drift on a shared machine hits all alike);
  the key is the median of the per-round ratios, and every round is reported.
- ``edge.static_ratio_uncached``: the same through an edge with ``[cache] enabled = false`` (every request
  proxied to the origin): the cost of the second hop the cache takes away, so nothing is hidden. On a 2-core
  machine wrk, the edges and the origin share the CPUs.
- ``edge.static_cpu_ratio_vs_nginx_direct``: in the same wrk runs, the origin nginx worker's CPU time per
  request divided by the cached edge worker's (user + system, from /proc): how much more work a request
  through the edge is. It is what the throughput ratio tends to when nginx is the bottleneck, and it moves
  far less than requests/s when other work shares the machine. ``edge.static_cpu_us_per_request.*``: the
  medians themselves.
- ``edge.static_cache_hit_ratio``: the share of the cached edge's requests answered without the origin
  (empty ``upstream_addr`` in its access log, read once the edge has stopped and written its buffered
  lines), proof the cached figure measured the cache.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from cloudtolocalllm.edge.certs import write_self_signed
from cloudtolocalllm.edge.config import parse_config
from cloudtolocalllm.edge.nginx import Nginx
from cloudtolocalllm.edge.render import render

from .proc_cpu import cpu_ms
from .stats import median, percentile

SAMPLES = 3000
WRK_SECONDS = 4
ROUNDS = 5
ASSET = "/assets/app.3f2a9c1b.js"
IMMUTABLE = "public, max-age=31536000, immutable"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _user_line() -> str:
    # Started as root, nginx drops workers to "nobody", who cannot read a 0700 temporary directory.
    return f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""


def _origin_conf(runtime: Path, root: Path, port: int) -> str:
    names = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {name}_temp_path {runtime / 'tmp' / name};" for name in names)
    return (
        f"daemon off;\n{_user_line()}worker_processes 1;\npid {runtime}/nginx.pid;\nerror_log stderr warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "    types { text/html html; application/javascript js; }\n"
        "    access_log off;\n    sendfile on;\n    tcp_nodelay on;\n    keepalive_requests 100000;\n"
        f"{temp}\n"
        f"    server {{ listen 127.0.0.1:{port}; root {root}; location = /ping {{ return 200 'ok'; }}\n"
        # What static-site sends for a content-hashed name (without it the edge would not store the file).
        f'        location /assets/ {{ add_header Cache-Control "{IMMUTABLE}"; }} }}\n'
        "}\n"
    )


def _edge_conf(
    runtime: Path, origin: str, http_port: int, https_port: int, cert: Path, key: Path, *, cache: bool = True
) -> str:
    data: dict[str, Any] = {
        "listen": {"addresses": ["127.0.0.1"], "http_port": http_port, "https_port": https_port},
        "tls": {"certificate": str(cert), "certificate_key": str(key), "redirect_http": False},
        "acme": {"webroot": str(runtime / "acme")},
        "upstreams": {pool: {"instances": [origin]} for pool in ("static-site", "flutter-app", "api-backend")},
        "rate_limits": {name: {"rate": 1000000, "burst": 1000000} for name in ("api", "general")},
        "logging": {"access_log": str(runtime / "access.log"), "error_log": "stderr"},
        "nginx": {"runtime_dir": str(runtime), "worker_processes": "1", "worker_connections": 1024},
        "cache": {"enabled": cache},  # everything else as in production
    }
    if os.geteuid() == 0:
        data["nginx"]["user"] = getpass.getuser()
    return render(parse_config(data))


def _cache_hit_ratio(access_log: Path) -> float:
    """Requests the cached edge answered without contacting the origin, over all it logged."""
    total = hits = 0
    with access_log.open(encoding="utf-8") as lines:
        for line in lines:
            if f'"path":"{ASSET}"' not in line:
                continue
            total += 1
            hits += json.loads(line)["upstream_addr"] == ""
    return hits / total if total else 0.0


def _wait_http(url: str, **kwargs: Any) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2, **kwargs).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def _overhead(direct: str, edge: str, *, verify: ssl.SSLContext | bool = True) -> dict[str, float]:
    """p50/p90 of (through the edge) minus (direct), ms; one client, alternating, after a warm-up."""
    times: dict[str, list[float]] = {"direct": [], "edge": []}
    with httpx.Client(verify=verify, timeout=5) as client:
        for i in range(SAMPLES + 200):
            for name, url in (("direct", direct), ("edge", edge)):
                started = time.perf_counter()
                response = client.get(url, headers={"Host": "localhost"})
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code}")
                if i >= 200:
                    times[name].append(elapsed * 1000)
    return {
        "p50": percentile(times["edge"], 50) - percentile(times["direct"], 50),
        "p90": percentile(times["edge"], 90) - percentile(times["direct"], 90),
        "direct_p50": percentile(times["direct"], 50),
    }


def _wrk(url: str, server: Nginx) -> tuple[float, float, int]:
    """Requests/s, the server's CPU microseconds per request, and the non-2xx count of one wrk run."""
    before = cpu_ms(server.worker_pids()) / 1000
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{WRK_SECONDS}s", "-H", "Host: localhost", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_ms(server.worker_pids()) / 1000 - before
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not rps or not count:
        raise RuntimeError(f"unexpected wrk output: {out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return float(rps.group(1)), cpu / int(count.group(1)) * 1e6, int(bad.group(1)) if bad else 0


def _measure(tmp: Path) -> dict[str, object]:
    root = tmp / "www"
    (root / "assets").mkdir(parents=True)
    (root / "assets" / "app.3f2a9c1b.js").write_bytes(b"console.log('static asset');\n" * 565)  # ~16 KB
    (root / "ping").write_text("ok")
    origin_port, http_port, https_port = _free_port(), _free_port(), _free_port()
    plain_http_port, plain_https_port = _free_port(), _free_port()
    origin = Nginx(tmp / "origin")
    edge = Nginx(tmp / "edge")
    uncached = Nginx(tmp / "uncached")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    write_self_signed(["localhost", "127.0.0.1"], cert, key)
    for name in ("edge", "uncached"):
        (tmp / name / "acme").mkdir(parents=True)
    origin.prepare()
    upstream = f"127.0.0.1:{origin_port}"
    try:
        origin.install(_origin_conf(tmp / "origin", root, origin_port))
        origin.start()
        edge.install(_edge_conf(tmp / "edge", upstream, http_port, https_port, cert, key))
        edge.start()
        uncached.install(
            _edge_conf(tmp / "uncached", upstream, plain_http_port, plain_https_port, cert, key, cache=False)
        )
        uncached.start()
        direct = f"http://127.0.0.1:{origin_port}"
        through = f"http://127.0.0.1:{http_port}"
        through_uncached = f"http://127.0.0.1:{plain_http_port}"
        tls = f"https://127.0.0.1:{https_port}"
        trust = ssl.create_default_context(cafile=str(cert))
        _wait_http(direct + "/ping")
        _wait_http(through + "/ping", headers={"Host": "localhost"})
        _wait_http(through_uncached + "/ping", headers={"Host": "localhost"})

        plain = _overhead(direct + "/ping", through + "/ping")
        secure = _overhead(direct + "/ping", tls + "/ping", verify=trust)

        if shutil.which("wrk") is None:
            return {
                "edge.overhead_ms.p50": round(plain["p50"], 3),
                "edge.static_ratio_vs_nginx_direct": None,
                "edge.static_ratio_uncached": None,
                "edge.static_note": "wrk is not installed (scripts/system-deps.sh)",
            }
        _wait_http(through + ASSET, headers={"Host": "localhost"})  # warm: the first request stores the asset
        sides = (("direct", direct, origin), ("edge", through, edge), ("uncached", through_uncached, uncached))
        rounds: dict[str, list[float]] = {name: [] for name, _, _ in sides}
        cpu_us: dict[str, list[float]] = {name: [] for name, _, _ in sides}
        non_2xx = 0
        for i in range(ROUNDS):  # interleaved, rotating who goes first, so drift hits every side alike
            for name, base, server in sides[i % 3 :] + sides[: i % 3]:
                rps, per_request, bad = _wrk(base + ASSET, server)
                rounds[name].append(rps)
                cpu_us[name].append(per_request)
                non_2xx += bad
        edge.stop()  # its workers write their buffered access-log lines on the way out
        cached_ratios = [e / d for e, d in zip(rounds["edge"], rounds["direct"], strict=True)]
        uncached_ratios = [u / d for u, d in zip(rounds["uncached"], rounds["direct"], strict=True)]
        cpu_ratios = [d / e for d, e in zip(cpu_us["direct"], cpu_us["edge"], strict=True)]
        return {
            # CPU per request of the edge's worker against the origin's, the same rounds: what the throughput
            # ratio follows when nginx is the bottleneck, and far steadier than requests/s on a busy host.
            "edge.static_cpu_ratio_vs_nginx_direct": round(median(cpu_ratios), 3),
            "edge.static_cpu_ratio_vs_nginx_direct.rounds": [round(r, 3) for r in cpu_ratios],
            "edge.static_cpu_us_per_request.direct": round(median(cpu_us["direct"]), 2),
            "edge.static_cpu_us_per_request.edge": round(median(cpu_us["edge"]), 2),
            "edge.overhead_ms.p50": round(plain["p50"], 3),
            "edge.overhead_ms.p90": round(plain["p90"], 3),
            "edge.direct_latency_ms.p50": round(plain["direct_p50"], 3),
            "edge.overhead_tls_ms.p50": round(secure["p50"], 3),
            "edge.static_ratio_vs_nginx_direct": round(median(cached_ratios), 3),
            "edge.static_ratio_vs_nginx_direct.rounds": [round(r, 3) for r in cached_ratios],
            "edge.static_ratio_uncached": round(median(uncached_ratios), 3),
            "edge.static_ratio_uncached.rounds": [round(r, 3) for r in uncached_ratios],
            "edge.static_rps_direct.rounds": [round(r) for r in rounds["direct"]],
            "edge.static_rps_through_edge.rounds": [round(r) for r in rounds["edge"]],
            "edge.static_rps_through_edge_uncached.rounds": [round(r) for r in rounds["uncached"]],
            "edge.static_rps_direct": round(median(rounds["direct"])),
            "edge.static_rps_through_edge": round(median(rounds["edge"])),
            "edge.static_rps_through_edge_uncached": round(median(rounds["uncached"])),
            "edge.static_cache_hit_ratio": round(_cache_hit_ratio(tmp / "edge" / "access.log"), 4),
            "edge.static_non_2xx": non_2xx,
            "edge.static_tool": (
                f"wrk -t1 -c32 -d{WRK_SECONDS}s, {ROUNDS} interleaved rounds (median of per-round ratios), "
                "16 KB asset from an nginx origin's disk, every nginx worker_processes 1, edge cache warm"
            ),
        }
    finally:
        uncached.stop()
        edge.stop()
        origin.stop()


async def run() -> dict[str, object]:
    if shutil.which("nginx") is None:
        return {"edge.skipped": "nginx is not installed (scripts/system-deps.sh)"}
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        return await asyncio.to_thread(_measure, Path(tmp))
