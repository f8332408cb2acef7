"""The tunnel loop over real sockets: fake cloud <-WebSocket-> Bridge <-HTTP-> fake backend."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloudtolocalllm.bridge.backend import BackendState
from cloudtolocalllm.bridge.exits import EXIT_SIGN_IN
from cloudtolocalllm.core.testing import wait_until
from cloudtolocalllm.core.testing.tcp_relay import tcp_relay
from cloudtolocalllm.devkit.ollama import OllamaDouble
from cloudtolocalllm.devkit.peers import FakeCloud
from cloudtolocalllm.protocol import (
    BridgeStatus,
    CloseCode,
    Data,
    GoAway,
    Limits,
    Ping,
    Pong,
    ResponseHead,
    StreamError,
)

from .conftest import TOKEN

pytestmark = pytest.mark.slow


async def test_handshake_hello_and_ping_pong(cloud: FakeCloud, start_bridge: Any) -> None:
    running = await start_bridge()
    link = await cloud.next_link()
    assert link.authorization == f"Bearer {TOKEN}"
    assert link.path == "/ws/bridge"  # the token is never in the URL
    hello = link.hello
    assert hello.bridge_id.startswith("br-") and hello.name == "test-bridge"
    assert hello.backend_kind == "ollama" and hello.backend_reachable is True
    assert hello.models == ["llama3:8b", "smollm2:135m"]
    await link.send(Ping(42))
    pong = await link.control_frame(Pong)
    assert pong.nonce == 42
    assert await running.stop() == 0
    await asyncio.wait_for(link.closed.wait(), 5)
    assert link.close_code == 1000


async def test_bridge_id_is_stable_across_restarts(cloud: FakeCloud, start_bridge: Any) -> None:
    first = await start_bridge()
    link1 = await cloud.next_link()
    await first.stop()
    await start_bridge()
    link2 = await cloud.next_link()
    assert link1.hello.bridge_id == link2.hello.bridge_id


async def test_ndjson_chunks_arrive_one_by_one(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    await start_bridge()
    link = await cloud.next_link()
    stream = await link.open("POST", "/api/chat", body=b'{"model":"llama3:8b","messages":[]}')
    backend.chat_queue.put_nowait(b'{"message":{"content":"Hel"},"done":false}\n')
    head = await stream.head()
    assert isinstance(head, ResponseHead) and head.status == 200
    names = {name.lower() for name, _ in head.headers}
    assert "content-type" in names and "transfer-encoding" not in names and "connection" not in names
    # The first chunk reaches the cloud while the backend has not produced the second one yet.
    first = await stream.next()
    assert isinstance(first, Data) and first.payload == b'{"message":{"content":"Hel"},"done":false}\n'
    backend.chat_queue.put_nowait(b'{"message":{"content":"lo"},"done":false}\n')
    second = await stream.next()
    assert isinstance(second, Data) and b'"lo"' in second.payload
    backend.chat_queue.put_nowait(b'{"done":true}\n')
    backend.chat_queue.put_nowait(None)
    rest = await stream.body()
    assert rest == b'{"done":true}\n'
    # The end-to-end headers reached the backend, hop-by-hop/credential ones did not.
    method, path, headers = backend.requests[-1]
    assert (method, path) == ("POST", "/api/chat")
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers


async def test_query_string_and_get_without_body(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    await start_bridge()
    link = await cloud.next_link()
    stream = await link.open("GET", "/api/tags", query="verbose=1", headers=[("accept", "application/json")])
    head = await stream.head()
    assert isinstance(head, ResponseHead) and head.status == 200
    assert json.loads(await stream.body())["models"][0]["name"] == "llama3:8b"
    assert backend.requests[-1][1] == "/api/tags?verbose=1"
    assert ("content-length", str(len(json.dumps({"models": [{"name": m} for m in backend.models]})))) in [
        (n.lower(), v) for n, v in head.headers
    ]


async def _upload_5mib(link: Any, backend: OllamaDouble) -> None:
    blob = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    digest = hashlib.sha256(blob).hexdigest()
    stream = await link.open(
        "POST",
        f"/api/blobs/sha256:{digest}",
        body=blob,
        headers=[("content-type", "application/octet-stream"), ("content-length", str(len(blob)))],
    )
    head = await stream.head()
    assert isinstance(head, ResponseHead) and head.status == 201, head
    await stream.body()
    assert backend.upload == {"size": len(blob), "sha256": digest}


async def test_upload_streams_with_bounded_credit(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    cloud.limits = Limits(max_frame_bytes=16 * 1024, initial_window=64 * 1024, max_concurrent_streams=8)
    running = await start_bridge(max_receive_window_bytes=0)  # the cloud's window, never grown
    await _upload_5mib(await cloud.next_link(), backend)
    session = running.bridge.sessions[-1]
    assert 0 < session.stats.max_buffered_bytes <= 64 * 1024
    assert session.stats.max_receive_window == 64 * 1024


async def test_the_bridge_measures_the_round_trip_to_the_cloud(cloud: FakeCloud, start_bridge: Any) -> None:
    running = await start_bridge()
    link = await cloud.next_link()
    ping = await link.control_frame(Ping)  # sent right after the Welcome; the fake cloud answers it
    session = running.bridge.sessions[-1]
    await wait_until(lambda: session.conn.rtt_s > 0)
    assert session.conn.rtt_s < 5
    # Each Ping from the cloud (a heartbeat) is answered, and a new probe follows it.
    await link.send(Ping(7))
    assert (await link.control_frame(Pong)).nonce == 7
    assert (await link.control_frame(Ping)).nonce != ping.nonce


async def test_a_window_bound_upload_gets_a_bigger_window_within_the_maximum(
    cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any
) -> None:
    cloud.limits = Limits(max_frame_bytes=16 * 1024, initial_window=64 * 1024, max_concurrent_streams=8)
    running = await start_bridge(max_receive_window_bytes=512 * 1024)
    link = await cloud.next_link()
    session = running.bridge.sessions[-1]
    await wait_until(lambda: session.conn.rtt_s > 0)
    # A long round trip, as over a slow WAN link: every half window then arrives "fast", so the window
    # doubles at each grant until the bridge's maximum, which also bounds what it buffers.
    session.conn.rtt_s = 5.0
    await _upload_5mib(link, backend)
    assert session.stats.max_receive_window == 512 * 1024
    assert 0 < session.stats.max_buffered_bytes <= 512 * 1024


async def test_behind_a_real_round_trip_the_window_grows_within_the_maximum(
    cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any
) -> None:
    """The same growth over a real delay: the bridge's WebSocket crosses a relay that holds every byte 40 ms
    each way, so the round trip is measured by the Connection's own Ping/Pong, not set by the test."""
    one_way_s = 0.04
    cloud.limits = Limits(max_frame_bytes=16 * 1024, initial_window=64 * 1024, max_concurrent_streams=8)
    cloud_port = int(cloud.url.rsplit(":", 1)[1].split("/")[0])
    async with tcp_relay(cloud_port, one_way_s) as relay_port:
        running = await start_bridge(cloud_url=f"http://127.0.0.1:{relay_port}", max_receive_window_bytes=512 * 1024)
        link = await cloud.next_link()
        session = running.bridge.sessions[-1]
        await wait_until(lambda: session.conn.rtt_s > 0)
        assert session.conn.rtt_s >= 2 * one_way_s  # measured across the relay
        started = time.monotonic()
        await _upload_5mib(link, backend)
        elapsed = time.monotonic() - started
    assert session.stats.max_receive_window == 512 * 1024
    assert 0 < session.stats.max_buffered_bytes <= 512 * 1024
    # Without growth, 64 KiB per 80 ms round trip caps 5 MiB at >= 6.4 s.
    print(f"5 MiB behind an {2 * one_way_s * 1000:.0f} ms round trip in {elapsed:.2f} s")


def _kernel_max(name: str) -> int:
    return int(Path("/proc/sys/net/ipv4", name).read_text().split()[2])


async def _settled(value: Callable[[], int], quiet_s: float = 0.5, timeout: float = 30) -> int:
    """``value`` once it has stayed the same for ``quiet_s`` (it stopped growing); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"still changing after {timeout} s: {value()}"
        await asyncio.sleep(0.05)
        if (current := value()) != last:
            last, since = current, time.monotonic()
    return last


async def test_slow_reader_stops_the_backend_read(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    window = 64 * 1024
    # What TCP itself may hold between the backend and the bridge: both socket buffers at the kernel's
    # maximum (autotuning grows them that far), plus a few MiB of the servers' and clients' own buffers.
    held_by_tcp = _kernel_max("tcp_rmem") + _kernel_max("tcp_wmem") + 4 * 1024 * 1024
    backend.pull_bytes = max(backend.pull_bytes, 2 * held_by_tcp)
    cloud.limits = Limits(max_frame_bytes=16 * 1024, initial_window=window, max_concurrent_streams=8)
    await start_bridge()
    link = await cloud.next_link()
    link.auto_credit = False
    stream = await link.open("POST", "/api/pull", body=b'{"model":"x"}')
    head = await stream.head()
    assert isinstance(head, ResponseHead)
    received = 0
    while received < window:
        frame = await stream.next()
        assert isinstance(frame, Data)
        received += len(frame.payload)
    assert received == window  # not one byte beyond the credit
    # The backend is held back by TCP backpressure: it stops producing (waited for, however slow the
    # machine), having produced no more than the buffers in between hold, far from its whole body.
    stalled_at = await _settled(lambda: backend.pull_produced)
    assert not stream.unread
    assert stalled_at <= held_by_tcp < backend.pull_bytes, (stalled_at, held_by_tcp)
    print(f"backend produced {stalled_at} bytes before TCP backpressure held it")
    # Granting credit again lets the whole body through.
    link.auto_credit = True
    await link.grant(stream.sid, received)
    total = received + len(await stream.body(timeout=30))
    assert total == backend.pull_produced >= backend.pull_bytes


async def test_cancel_aborts_the_backend_request_within_1s(
    cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any
) -> None:
    await start_bridge()
    link = await cloud.next_link()
    stream = await link.open("POST", "/api/generate", body=b'{"model":"llama3:8b","prompt":"hi"}')
    assert isinstance(await stream.head(), ResponseHead)
    assert isinstance(await stream.next(), Data)
    cancelled_at = time.monotonic()
    await stream.cancel()
    await wait_until(lambda: backend.generate_disconnected_at is not None, timeout=2)
    assert backend.generate_disconnected_at - cancelled_at < 1.0


async def test_cancel_before_the_response_head_aborts_within_1s(
    cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any
) -> None:
    await start_bridge()
    link = await cloud.next_link()
    stream = await link.open("POST", "/api/embed", body=b'{"model":"m","input":"x"}')
    await wait_until(lambda: any(path == "/api/embed" for _, path, _ in backend.requests))
    await asyncio.sleep(0.1)
    cancelled_at = time.monotonic()
    await stream.cancel()
    await wait_until(lambda: backend.embed_disconnected_at is not None, timeout=2)
    assert backend.embed_disconnected_at - cancelled_at < 1.0
    assert not stream.unread


async def test_cancel_during_an_upload_aborts_it(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    cloud.limits = Limits(max_frame_bytes=16 * 1024, initial_window=64 * 1024, max_concurrent_streams=8)
    running = await start_bridge()
    link = await cloud.next_link()
    link.auto_credit = True
    stream = await link.open("POST", "/api/blobs/sha256:" + "0" * 64, body=b"x" * (64 * 1024 * 1024))
    session = running.bridge.sessions[-1]
    await wait_until(lambda: session.stats.max_buffered_bytes > 0)
    await stream.cancel()
    await wait_until(lambda: session.streams_in_flight == 0, timeout=1)
    # The backend saw its client go away mid-body: it never got the whole 64 MB.
    await wait_until(lambda: bool(backend.upload), timeout=2)
    assert backend.upload["size"] < 64 * 1024 * 1024
    assert not stream.unread


async def test_backend_down_gives_backend_unreachable(
    cloud: FakeCloud, start_bridge: Any, dead_backend_url: str
) -> None:
    await start_bridge(backend_url=dead_backend_url)
    link = await cloud.next_link()
    assert link.hello.backend_reachable is False and link.hello.models == []
    stream = await link.open("POST", "/api/chat", body=b"{}")
    error = await stream.head()
    assert isinstance(error, StreamError) and error.code == "backend_unreachable"
    assert error.message == f"could not connect to the local backend at {dead_backend_url}: is Ollama running?"


async def test_refusals_over_the_wire(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    await start_bridge(read_only=True)
    link = await cloud.next_link()
    cases = [
        ("GET", "/etc/passwd", "path_not_allowed"),
        ("GET", "/api/../admin", "path_not_allowed"),
        ("GET", "/api/tags/", "path_not_allowed"),
        ("POST", "/api/pull", "read_only"),
        ("DELETE", "/api/delete", "read_only"),
        ("POST", "/api/blobs/sha256:" + "a" * 64, "read_only"),
    ]
    for method, path, code in cases:
        stream = await link.open(method, path, body=b"{}" if method != "GET" else None)
        error = await stream.head()
        assert isinstance(error, StreamError) and error.code == code, (path, error)
    seen = [path for _, path, _ in backend.requests if not path.startswith(("/api/tags", "/api/version"))]
    assert seen == []  # nothing refused reached the backend
    # A read-only request still works on the same connection.
    stream = await link.open("GET", "/api/ps")
    assert isinstance(await stream.head(), ResponseHead)


async def test_go_away_opens_a_new_connection_while_old_streams_finish(
    cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any
) -> None:
    backend.generate_chunks = 20  # one second of output
    running = await start_bridge()
    old = await cloud.next_link()
    stream = await old.open("POST", "/api/generate", body=b"{}")
    assert isinstance(await stream.head(), ResponseHead)
    await old.send(GoAway("deploy", retry_after_s=0.0))
    new = await cloud.next_link(timeout=3)
    assert new.hello.bridge_id == old.hello.bridge_id
    assert not old.closed.is_set()
    body = await stream.body()  # the in-flight stream finished on the old connection
    assert body.count(b"\n") == 20
    await asyncio.wait_for(old.closed.wait(), 3)  # then the bridge closed the idle old connection
    # New streams go to the new connection.
    fresh = await new.open("GET", "/api/version")
    assert isinstance(await fresh.head(), ResponseHead)
    assert len(running.bridge.sessions) == 2


async def test_version_mismatch_stops_without_redialling(cloud: FakeCloud, start_bridge: Any) -> None:
    reason = "bridge speaks protocol v1, cloud needs v2: upgrade the bridge"
    cloud.close_after_hello = (CloseCode.VERSION_INCOMPATIBLE, reason)
    running = await start_bridge()
    assert await asyncio.wait_for(running.task, 5) == 1
    assert reason in (running.bridge.exit_message or "")
    await asyncio.sleep(0.3)
    assert len(cloud.attempts) == 1


async def test_401_with_env_token_stops_with_a_clear_message(cloud: FakeCloud, start_bridge: Any) -> None:
    cloud.tokens = {"another"}
    running = await start_bridge()
    assert await asyncio.wait_for(running.task, 5) == EXIT_SIGN_IN
    message = running.bridge.exit_message or ""
    assert message.startswith("token invalid or expired (the cloud answered HTTP 401: token expired)")
    assert "CLOUDTOLOCALLLM_BRIDGE_KEY" in message
    assert message.splitlines()[-1].startswith("sign in again with: cloudtolocalllm-bridge login http")
    assert len(cloud.attempts) == 1


async def test_401_with_token_file_waits_for_a_new_token(cloud: FakeCloud, start_bridge: Any, tmp_path: Any) -> None:
    from cloudtolocalllm.bridge.token import TokenSource

    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    running = await start_bridge(token_source=TokenSource(token_file=token_file))
    await asyncio.sleep(0.6)
    assert len(cloud.attempts) == 1  # no tight loop with a refused token
    assert not running.task.done()
    snapshot = running.bridge.status.snapshot
    assert snapshot.state == "disconnected" and "token invalid or expired" in (snapshot.last_error or "")
    token_file.write_text(TOKEN + "\n")
    link = await cloud.next_link(timeout=3)
    assert link.authorization == f"Bearer {TOKEN}"


async def test_retry_after_is_honoured(cloud: FakeCloud, start_bridge: Any) -> None:
    cloud.refuse = (503, '{"error": "draining"}', {"Retry-After": "1"})
    await start_bridge()
    await wait_until(lambda: len(cloud.attempts) >= 2)
    gap = cloud.attempts[1] - cloud.attempts[0]
    assert gap >= 1.0  # the backoff alone (cap 0.2 s) would have redialled much sooner


async def test_unreachable_cloud_backs_off(start_bridge: Any, dead_backend_url: str) -> None:
    running = await start_bridge(cloud_url=dead_backend_url)
    await asyncio.sleep(0.8)
    attempts = running.bridge.backoff.attempt
    assert 2 <= attempts <= 40  # retried, with delays (base 0.05 s, cap 0.2 s), never a tight loop
    assert running.bridge.status.snapshot.state in ("disconnected", "connecting")
    assert "cannot reach the cloud" in (running.bridge.status.snapshot.last_error or "")


async def test_silent_cloud_is_declared_dead(cloud: FakeCloud, start_bridge: Any) -> None:
    cloud.heartbeat_interval_s = 0.2
    await start_bridge()
    first = await cloud.next_link()
    second = await cloud.next_link(timeout=3)  # nothing for 3 x 0.2 s: reconnected
    assert second is not first


async def test_reauth_sends_the_renewed_token(cloud: FakeCloud, start_bridge: Any, tmp_path: Any) -> None:
    from cloudtolocalllm.bridge.token import TokenSource
    from cloudtolocalllm.protocol import Reauth, ReauthOk

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    cloud.token_ttl_s = 30.5  # reauth at max(0, min(0.8 * 30.5, 30.5 - 30)) = 0.5 s
    await start_bridge(token_source=TokenSource(token_file=token_file))
    link = await cloud.next_link()
    token_file.write_text("tok-2")
    reauth = await link.control_frame(Reauth, timeout=3)
    assert reauth.token == "tok-2"
    await link.send(ReauthOk(time.time() + 3600))
    await asyncio.sleep(0.3)
    assert not link.closed.is_set()


async def test_bridge_status_on_backend_change(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    await start_bridge(status_interval_s=0.1)
    link = await cloud.next_link()
    backend.models = ["llama3:8b", "qwen3:4b", "smollm2:135m"]
    status = await link.control_frame(BridgeStatus, timeout=3)
    assert status.backend_reachable is True and status.models == ["llama3:8b", "qwen3:4b", "smollm2:135m"]


async def test_a_model_changing_request_reports_the_new_models_at_once(
    cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any
) -> None:
    await start_bridge()  # polls every 30 s: only the pull can explain a report within seconds
    link = await cloud.next_link()
    backend.pull_bytes = 1
    backend.models = ["llama3:8b", "qwen3:4b", "smollm2:135m"]
    stream = await link.open("POST", "/api/pull", body=b'{"model":"qwen3:4b"}')
    head = await stream.head()
    assert isinstance(head, ResponseHead) and head.status == 200
    await stream.body()
    status = await link.control_frame(BridgeStatus, timeout=3)
    assert status.models == ["llama3:8b", "qwen3:4b", "smollm2:135m"]


async def test_shutdown_drains_in_flight_streams(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    backend.generate_chunks = 10  # half a second
    running = await start_bridge()
    link = await cloud.next_link()
    stream = await link.open("POST", "/api/generate", body=b"{}")
    assert isinstance(await stream.head(), ResponseHead)
    running.bridge.request_stop()
    late = await link.open("GET", "/api/tags")
    refused = await late.head()
    assert isinstance(refused, StreamError) and refused.code == "refused"
    body = await stream.body()
    assert body.count(b"\n") == 10
    assert await asyncio.wait_for(running.task, 5) == 0
    await asyncio.wait_for(link.closed.wait(), 3)
    assert link.close_code == 1000


async def test_shutdown_deadline_cuts_endless_streams(
    cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any
) -> None:
    running = await start_bridge(drain_timeout_s=0.3)
    link = await cloud.next_link()
    stream = await link.open("POST", "/api/generate", body=b"{}")  # streams until its client goes away
    assert isinstance(await stream.head(), ResponseHead)
    started = time.monotonic()
    assert await running.stop() == 0
    assert time.monotonic() - started < 2.0
    await wait_until(lambda: backend.generate_disconnected_at is not None, timeout=2)
    await asyncio.wait_for(link.closed.wait(), 3)
    assert link.close_code == 1000


async def test_status_file_tracks_the_connection(cloud: FakeCloud, start_bridge: Any) -> None:
    from cloudtolocalllm.bridge.state import BridgeStatusFile

    running = await start_bridge()
    await cloud.next_link()
    await wait_until(lambda: running.bridge.status.snapshot.state == "connected")
    running.bridge.status.flush(force=True)
    snap = BridgeStatusFile.read(running.bridge.state_dir)
    assert snap is not None and snap.state == "connected" and snap.session_id == "s-1"
    assert snap.backend_reachable and snap.models == ["llama3:8b", "smollm2:135m"]
    await running.stop()
    snap = BridgeStatusFile.read(running.bridge.state_dir)
    assert snap is not None and snap.state == "stopped"


async def test_report_ignores_unchanged_state(cloud: FakeCloud, start_bridge: Any) -> None:
    running = await start_bridge()
    link = await cloud.next_link()
    session = running.bridge.sessions[-1]
    session.report(BackendState(True, ("llama3:8b", "smollm2:135m")))
    session.report(BackendState(False, ()))
    status = await link.control_frame(BridgeStatus)
    assert status.backend_reachable is False
    assert link.control.empty()


async def test_reauth_refused_close_4001_stops_an_env_token_bridge(cloud: FakeCloud, start_bridge: Any) -> None:
    running = await start_bridge()
    link = await cloud.next_link()
    await link.close(CloseCode.UNAUTHORIZED, "bridge token is invalid or expired; sign in again")
    assert await asyncio.wait_for(running.task, 5) == EXIT_SIGN_IN
    assert (running.bridge.exit_message or "").startswith("token invalid or expired (the cloud closed the connection")
    assert len(cloud.attempts) == 1


async def test_second_stop_cuts_the_drain_short(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    running = await start_bridge(drain_timeout_s=30)
    link = await cloud.next_link()
    stream = await link.open("POST", "/api/generate", body=b"{}")  # endless
    assert isinstance(await stream.head(), ResponseHead)
    running.bridge.request_stop()
    await asyncio.sleep(0.2)
    assert not running.task.done()  # draining
    started = time.monotonic()
    running.bridge.request_stop()  # the second Ctrl-C
    assert await asyncio.wait_for(running.task, 3) == 0
    assert time.monotonic() - started < 1.0
