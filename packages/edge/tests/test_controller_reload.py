"""Graceful reloads under traffic, certificate changes, and nginx's stderr in the controller's JSON log."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cloudtolocalllm.core.logging import JsonFormatter
from cloudtolocalllm.edge.certs import write_self_signed
from cloudtolocalllm.edge.logs import NGINX_LOGGER

from .controller_harness import RunningController, file_fingerprint, served_fingerprint
from .edge_harness import HOSTS, UpstreamServers, released, wait_for

LOOP_REQUESTS = 300


class ClientLoop(threading.Thread):
    """Requests one after another until stopped (and at least ``minimum`` were sent); records every failure.

    With keep-alive, a reload has an unavoidable HTTP/1.1 race: a draining nginx worker closes its *idle*
    keep-alive connections, and a request the client wrote into one at that instant gets no response. HTTP
    lets a client retry an idempotent request in exactly that case (RFC 9112 section 9.3.1; browsers and
    urllib3 do), and this loop does the same, once, counting it in ``retried``. Anything else, and any error
    on a fresh connection, is a failure.
    """

    def __init__(self, running: RunningController, *, keep_alive: bool, minimum: int = LOOP_REQUESTS) -> None:
        super().__init__(daemon=True)
        self.running = running
        self.keep_alive = keep_alive
        self.minimum = minimum
        self.done = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self.retried: list[str] = []

    def run(self) -> None:
        edge = self.running.edge
        limits = httpx.Limits(max_keepalive_connections=1 if self.keep_alive else 0)
        with httpx.Client(verify=edge.ssl_context(), timeout=10, limits=limits) as client:
            while not (self.done.is_set() and self.sent >= self.minimum):
                path = "/api/tags" if self.sent % 2 else "/chat"
                self.sent += 1
                for attempt in (1, 2):
                    try:
                        response = client.get(edge.url(path), headers={"Host": "app.localhost"})
                    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                        # No response byte arrived on a kept-alive connection: the idle-close race.
                        if self.keep_alive and attempt == 1:
                            self.retried.append(f"{path}: {type(exc).__name__}: {exc}")
                            continue
                        self.failures.append(f"{path}: {type(exc).__name__}: {exc}")
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{path}: {type(exc).__name__}: {exc}")
                    else:
                        if response.status_code != 200:
                            self.failures.append(f"{path}: {response.status_code}")
                    break


def test_reloads_under_continuous_traffic_drop_no_request_and_no_stream(
    make_controller: Callable[..., RunningController], ctl_upstreams: UpstreamServers
) -> None:
    running = make_controller()
    edge = running.edge
    key = uuid.uuid4().hex
    gate = ctl_upstreams.shared.gate(key)
    lines: list[bytes] = []
    stream_error: list[BaseException] = []
    first_line = threading.Event()

    def stream() -> None:
        try:
            with (
                httpx.Client(verify=edge.ssl_context(), timeout=30) as client,
                client.stream(
                    "GET", edge.url(f"/api/stream/ndjson?gate={key}"), headers={"Host": "app.localhost"}
                ) as response,
            ):
                assert response.status_code == 200
                for line in response.iter_lines():
                    lines.append(line.encode())
                    first_line.set()
        except BaseException as exc:
            stream_error.append(exc)

    streamer = threading.Thread(target=stream, daemon=True)
    loops = [ClientLoop(running, keep_alive=True), ClientLoop(running, keep_alive=False)]
    before = running.metric("edge_reloads_total", result="ok")
    with released(gate):
        streamer.start()
        assert first_line.wait(10), "the stream did not start"
        for loop in loops:
            loop.start()
        wait_for(lambda: all(loop.sent >= 20 for loop in loops), "traffic to flow")
        old_master_workers = set(running.controller.nginx.worker_pids())
        for _ in range(4):
            assert running.call(running.controller.reconcile(reason="test", force=True))
            time.sleep(0.15)
        # And one real failover round trip: an instance leaves its pool and comes back (two more reloads).
        address = ctl_upstreams.addresses["api-backend#2"]
        httpx.get(f"http://{address}/_test/health?ok=0").raise_for_status()
        try:
            wait_for(lambda: running.up("api-backend", address) == 0, "instance 2 down")
        finally:
            httpx.get(f"http://{address}/_test/health?ok=1").raise_for_status()
        wait_for(lambda: running.up("api-backend", address) == 1, "instance 2 back")
        for loop in loops:
            loop.done.set()
        for loop in loops:
            loop.join(60)
        # The stream began on a worker that has since been told to shut down; it is still being served.
        assert not gate.finished.is_set()
        assert old_master_workers & set(running.controller.nginx.worker_pids())
    streamer.join(30)
    assert not stream_error, stream_error
    assert [json.loads(line) for line in lines][-1] == {"done": True}
    assert len(lines) == 5
    wait_for(lambda: running.metric("edge_reloads_total", result="ok") >= before + 6, "six reloads")
    for loop in loops:
        assert loop.sent >= LOOP_REQUESTS
        assert loop.failures == [], (loop.keep_alive, loop.failures[:5])
    assert loops[1].retried == []  # a fresh connection per request never needs a retry
    # Recorded for the report: requests written into an idle keep-alive connection as a worker closed it.
    print(f"reload under load: sent {[loop.sent for loop in loops]}, keep-alive retries {len(loops[0].retried)}")


def _pair(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}-fullchain.pem", folder / f"{name}-privkey.pem"
    write_self_signed([*HOSTS, "127.0.0.1"], cert, key)
    return cert, key


def test_a_replaced_certificate_is_served_after_an_automatic_reload(
    make_controller: Callable[..., RunningController], tmp_path: Path
) -> None:
    # Laid out as certbot does: live/ holds symlinks into archive/, swapped one after the other on renewal.
    archive, live = tmp_path / "archive", tmp_path / "live"
    live.mkdir()
    cert1, key1 = _pair(archive, "1")
    (live / "fullchain.pem").symlink_to(cert1)
    (live / "privkey.pem").symlink_to(key1)
    running = make_controller(tls=(live / "fullchain.pem", live / "privkey.pem"))
    port = running.edge.https_port
    assert served_fingerprint(port) == file_fingerprint(cert1)
    reloads = running.metric("edge_reloads_total", result="ok")

    cert2, key2 = _pair(archive, "2")
    for name, target in (("fullchain.pem", cert2), ("privkey.pem", key2)):
        tmp = live / f".{name}.new"
        tmp.symlink_to(target)
        os.replace(tmp, live / name)
        time.sleep(0.05)
    wait_for(lambda: served_fingerprint(port) == file_fingerprint(cert2), "the renewed certificate")
    # The new workers serve the certificate a moment before the controller has seen the old ones drain
    # and counted the reload.
    wait_for(lambda: running.metric("edge_reloads_total", result="ok") >= reloads + 1, "the reload to count")
    assert running.metric("edge_reloads_total", result="ok") == reloads + 1
    assert running.metric("edge_reloads_total", result="rejected") == 0

    # Replaced in place (same path, new inode), as a plain file copy would.
    write_self_signed([*HOSTS, "127.0.0.1"], live / "fullchain.pem", live / "privkey.pem")
    wait_for(lambda: served_fingerprint(port) == file_fingerprint(live / "fullchain.pem"), "the replaced certificate")


def test_an_unusable_certificate_is_rejected_and_the_running_one_kept(
    make_controller: Callable[..., RunningController], tmp_path: Path
) -> None:
    cert, key = _pair(tmp_path, "good")
    running = make_controller(tls=(cert, key))
    port = running.edge.https_port
    good = file_fingerprint(cert)
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    wait_for(lambda: running.metric("edge_reloads_total", result="rejected") == 1, "the rejection")
    assert served_fingerprint(port) == good
    assert running.admin("/ready").status_code == 200  # nginx still runs its last good configuration
    page = httpx.get(running.edge.url("/chat"), headers={"Host": "app.localhost"}, verify=False)  # noqa: S501
    assert page.status_code == 200
    write_self_signed([*HOSTS, "127.0.0.1"], cert, key)
    wait_for(lambda: served_fingerprint(port) == file_fingerprint(cert), "the repaired certificate")


def test_a_missing_certificate_is_replaced_by_a_self_signed_one_until_the_real_one_appears(
    make_controller: Callable[..., RunningController], tmp_path: Path
) -> None:
    live = tmp_path / "live"
    cert, key = live / "fullchain.pem", live / "privkey.pem"
    running = make_controller(tls=(cert, key))
    port = running.edge.https_port
    bootstrap = Path(running.controller.config.nginx.runtime_dir) / "bootstrap" / "fullchain.pem"
    assert served_fingerprint(port) == file_fingerprint(bootstrap)
    assert running.metric("edge_certificate_self_signed") == 1
    # Plain HTTP (ACME challenges) works already.
    health = httpx.get(running.edge.url("/health", tls=False), headers={"Host": "app.localhost"})
    assert health.status_code == 200

    write_self_signed([*HOSTS, "127.0.0.1"], cert, key)
    wait_for(lambda: served_fingerprint(port) == file_fingerprint(cert), "the real certificate")
    assert running.metric("edge_certificate_self_signed") == 0


@pytest.fixture
def nginx_log() -> io.StringIO:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("edge", "test"))
    logger = logging.getLogger(NGINX_LOGGER)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_nginx_error_lines_reach_the_json_log_without_query_strings_or_tokens(
    make_controller: Callable[..., RunningController], nginx_log: io.StringIO
) -> None:
    running = make_controller()
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    response = running.edge.request(
        "POST",
        "app.localhost",
        f"/upload?token={token}&user=alice",
        content=b"\0" * (2 * 1024 * 1024),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 413  # nginx logs the whole request line of a refused body at [error]

    def logged() -> list[dict[str, object]]:
        return [json.loads(line) for line in nginx_log.getvalue().splitlines()]

    wait_for(lambda: any("too large body" in str(entry["msg"]) for entry in logged()), "nginx's error line")
    entry = next(entry for entry in logged() if "too large body" in str(entry["msg"]))
    assert entry["level"] == "error"
    assert entry["logger"] == "nginx"
    assert entry["nginx_level"] == "error"
    assert 'request: "POST /upload?[redacted] HTTP/1.1"' in str(entry["msg"])
    text = nginx_log.getvalue()
    assert token not in text
    assert "alice" not in text
    assert "eyJ" not in text
