"""The comparison of the tunnel with ssh -R and the floors: its arithmetic on known samples, a peer that takes
only some calls, the library floor's processes relaying a request, and a tiny real run that produces every
key."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from cloudtolocalllm.devkit.launch import alive

from .. import peer_comparison
from ..local_cloud import (
    dev_auth,
    start_cloud_and_bridge,
    start_fast_backend,
    start_library_floor,
    start_tcp_relay,
    wait_bridge,
)
from ..peer_comparison import (
    BURST,
    DIRECT,
    LIBRARY_FLOOR,
    SEQUENTIAL,
    SSH,
    TARGETS,
    TUNNEL,
    TWO_HOP_RELAY,
    Peer,
    Samples,
    Workload,
    measure,
    overhead_ratio,
    report,
)
from ..ssh_peer import ssh_reverse_tunnel

MB = 1_000_000


def _samples(upload_s: float, seq_ms: float, burst_ms: float, lines: float, cpu: list[float]) -> Samples:
    # Many requests at once cost less CPU each than one at a time: a tenth here.
    return Samples(
        upload_s=[upload_s, upload_s * 2],  # the second round slower: medians and rounds stay apart
        seq_ttfb_ms=[[seq_ms] * 3, [seq_ms] * 3],
        burst_ttfb_ms=[[burst_ms] * 3, [burst_ms * 3] * 3],
        lines_per_s=[lines, lines],
        cpu_ms_per_request=cpu,
        burst_cpu_ms_per_request=[ms / 10 for ms in cpu],
    )


def test_report_divides_what_the_tunnel_adds_by_what_ssh_adds() -> None:
    workload = Workload(rounds=2, upload_bytes=100 * MB)
    samples = {
        DIRECT: _samples(0.1, seq_ms=1.0, burst_ms=5.0, lines=100_000, cpu=[]),
        SSH: _samples(0.5, seq_ms=1.5, burst_ms=7.0, lines=80_000, cpu=[0.2, 0.4]),
        TUNNEL: _samples(0.4, seq_ms=2.5, burst_ms=11.0, lines=120_000, cpu=[1.0, 2.0]),
        TWO_HOP_RELAY: _samples(0.2, seq_ms=1.2, burst_ms=6.0, lines=110_000, cpu=[0.5, 0.5]),
    }
    keys = report(samples, workload)
    assert keys["tunnel.bulk_ratio_vs_ssh"] == 1.25  # 0.75 s median for ssh against 0.6 s for the tunnel
    assert keys["tunnel.bulk_ratio_vs_ssh.rounds"] == [1.25, 1.25]
    assert keys["tunnel.bulk_ratio_vs_direct"] == 0.25
    assert keys["tunnel.bulk_tunnel_mb_s"] == pytest.approx(166.7)
    assert keys["tunnel.bulk_two_hop_relay_mb_s"] == pytest.approx(333.3)
    assert keys["tunnel.chunks_ratio_vs_ssh"] == 1.5
    assert keys["tunnel.seq_ttfb_overhead_ratio_vs_ssh"] == 3.0  # 1.5 ms added against 0.5 ms
    assert keys["tunnel.seq_ttfb_overhead_ms.p50"] == 1.5
    # Burst rounds: 6/2 in the first, 18/6 in the second; pooled p50s are the first round's (3 of 6 samples).
    assert keys["tunnel.burst_ttfb_overhead_ratio_vs_ssh.rounds"] == [3.0, 3.0]
    assert keys["tunnel.burst_ttfb_overhead_ratio_vs_ssh"] == 3.0
    assert keys["tunnel.cpu_ms_per_request"] == 1.5
    assert keys["tunnel.ssh_cpu_ms_per_request"] == pytest.approx(0.3)
    assert keys["tunnel.burst_cpu_ms_per_request"] == pytest.approx(0.15)
    assert keys["tunnel.ssh_burst_cpu_ms_per_request.rounds"] == [0.02, 0.04]
    assert "tunnel.direct_cpu_ms_per_request" not in keys  # no processes named for direct
    assert keys["tunnel.two_hop_relay_seq_ttfb_ms.p50"] == 1.2
    assert keys["tunnel.two_hop_relay_cpu_ms_per_request"] == 0.5
    assert keys["tunnel.cpu_ratio_vs_two_hop_relay"] == 3.0
    for key, target in TARGETS.items():
        assert keys[f"{key}.target"] == target


def test_a_peer_that_took_only_the_chats_has_their_keys_and_no_others() -> None:
    workload = Workload(rounds=2, upload_bytes=100 * MB)
    floor = _samples(0, seq_ms=1.25, burst_ms=6.0, lines=0, cpu=[0.5, 1.0])
    floor.upload_s, floor.lines_per_s = [], []  # it took the one-chunk chats only
    samples = {
        DIRECT: _samples(0.1, seq_ms=1.0, burst_ms=5.0, lines=100_000, cpu=[]),
        SSH: _samples(0.5, seq_ms=1.5, burst_ms=7.0, lines=80_000, cpu=[0.2, 0.4]),
        TUNNEL: _samples(0.4, seq_ms=2.5, burst_ms=11.0, lines=120_000, cpu=[1.0, 2.0]),
        LIBRARY_FLOOR: floor,
    }
    keys = report(samples, workload)
    assert keys["tunnel.library_floor_seq_ttfb_ms.p50"] == 1.25
    assert keys["tunnel.library_floor_burst_ttfb_ms.p50"] == 6.0
    assert keys["tunnel.library_floor_cpu_ms_per_request"] == 0.75
    assert keys["tunnel.library_floor_cpu_ms_per_request.rounds"] == [0.5, 1.0]
    assert keys["tunnel.library_floor_burst_cpu_ms_per_request"] == pytest.approx(0.075)
    assert keys["tunnel.cpu_ratio_vs_library_floor"] == 2.0  # 1.5 ms median against 0.75 ms
    # 0.25 ms added over direct against ssh's 0.5 ms, in both rounds.
    assert keys["tunnel.library_floor_seq_ttfb_overhead_ratio_vs_ssh"] == 0.5
    assert keys["tunnel.library_floor_seq_ttfb_overhead_ratio_vs_ssh.rounds"] == [0.5, 0.5]
    # 60 at once: 1.0 ms added against ssh's 2.0 ms.
    assert keys["tunnel.library_floor_burst_ttfb_overhead_ratio_vs_ssh"] == 0.5
    assert not [key for key in keys if key.startswith(("tunnel.bulk_library_floor", "tunnel.library_floor_lines"))]
    # The other peers' keys are unchanged by it.
    assert keys["tunnel.seq_ttfb_overhead_ratio_vs_ssh"] == 3.0
    assert keys["tunnel.bulk_ratio_vs_ssh"] == 1.25
    assert "tunnel.cpu_ratio_vs_two_hop_relay" not in keys  # no two-hop relay in this run


async def test_measure_gives_a_peer_only_the_calls_it_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []

    async def upload_seconds(port: int, path: str, headers: Mapping[str, str], size: int) -> float:
        calls.append(("upload", port))
        return 0.5

    async def sequential_ttfb_ms(port: int, prefix: str, headers: Mapping[str, str], count: int) -> list[float]:
        calls.append(("sequential", port))
        return [1.0] * count

    async def burst_ttfb_ms(port: int, prefix: str, headers: Mapping[str, str], streams: int) -> list[float]:
        calls.append(("burst", port))
        return [2.0] * streams

    async def lines_per_s(port: int, prefix: str, headers: Mapping[str, str], streams: int, each: int) -> float:
        calls.append(("lines", port))
        return 1000.0

    for fake in (upload_seconds, sequential_ttfb_ms, burst_ttfb_ms, lines_per_s):
        monkeypatch.setattr(peer_comparison, fake.__name__, fake)
    every, chats = 1, 2
    peers = [Peer(DIRECT, every), Peer(LIBRARY_FLOOR, chats, calls=frozenset({SEQUENTIAL, BURST}))]
    workload = Workload(rounds=2, sequential_requests=3, burst_streams=4, bursts_per_round=2)
    samples = await measure(peers, workload)
    assert sorted({call for call, port in calls if port == every}) == ["burst", "lines", "sequential", "upload"]
    assert sorted({call for call, port in calls if port == chats}) == ["burst", "sequential"]
    assert calls.count(("burst", chats)) == 4  # two bursts in each of the two rounds
    floor = samples[LIBRARY_FLOOR]
    assert floor.upload_s == [] and floor.lines_per_s == []
    assert floor.seq_ttfb_ms == [[1.0] * 3] * 2
    assert floor.burst_ttfb_ms == [[2.0] * 8] * 2
    assert samples[DIRECT].upload_s == [0.5, 0.5]


def test_no_ratio_to_noise_when_ssh_adds_nothing() -> None:
    assert overhead_ratio(1.0, 1.0, 2.0) is None
    assert overhead_ratio(1.0, 0.9, 2.0) is None
    assert overhead_ratio(1.0, 1.25, 2.0) == 4.0


def _runs_uvloop(pid: int) -> bool:
    return "uvloop" in Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def fast_backend(tmp_path: Path) -> Iterator[int]:
    backend, port = start_fast_backend(tmp_path)
    yield port
    backend.stop()


@pytest.mark.slow
async def test_the_library_floor_relays_the_backends_status_and_body(fast_backend: int, tmp_path: Path) -> None:
    cloud, bridge, port = start_library_floor(tmp_path, fast_backend)
    try:
        assert all(_runs_uvloop(proc.pid) for proc in (cloud, bridge))
        async with httpx.AsyncClient(timeout=10) as client:
            # Three lines: the query reached the backend (without it, the fast backend answers 50). A 404 too.
            for path in ("/api/chat?chunks=3", "/api/nowhere"):
                direct = await client.post(f"http://127.0.0.1:{fast_backend}{path}")
                relayed = await client.post(f"http://127.0.0.1:{port}{path}")
                assert (relayed.status_code, relayed.content) == (direct.status_code, direct.content)
        assert direct.status_code == 404
    finally:
        bridge.stop()
        cloud.stop()
    assert "connected" in bridge.log_text()


@pytest.mark.slow
async def test_a_tiny_run_through_every_peer_reports_every_key(fast_backend: int, tmp_path: Path) -> None:
    auth_env, issuer = dev_auth(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(issuer.mint("bench", ttl_s=600))
    auth = {"authorization": f"Bearer {token_file.read_text()}"}
    api, bridge, api_port = start_cloud_and_bridge(tmp_path, auth_env, token_file, fast_backend)
    second_hop, second_port = start_tcp_relay(tmp_path, fast_backend)
    first_hop, relay_port = start_tcp_relay(tmp_path, second_port)
    floor_cloud, floor_bridge, floor_port = start_library_floor(tmp_path, fast_backend)
    try:
        await wait_bridge(api_port, auth)
        with ssh_reverse_tunnel(fast_backend, tmp_path / "ssh") as ssh:
            ssh_pids = ssh.pids()
            peers = [
                Peer(DIRECT, fast_backend),
                Peer(SSH, ssh.port, cpu_pids=ssh.pids),
                Peer(TUNNEL, api_port, "/api/ollama", auth, cpu_pids=lambda: [api.pid, bridge.pid]),
                Peer(TWO_HOP_RELAY, relay_port, cpu_pids=lambda: [first_hop.pid, second_hop.pid]),
                Peer(
                    LIBRARY_FLOOR,
                    floor_port,
                    cpu_pids=lambda: [floor_cloud.pid, floor_bridge.pid],
                    calls=frozenset({SEQUENTIAL, BURST}),
                ),
            ]
            # The relays are the least a Python hop costs: on uvloop, the bridge's loop, as they document.
            assert all(_runs_uvloop(hop.pid) for hop in (first_hop, second_hop))
            workload = Workload(
                rounds=2,
                upload_bytes=4 * 1024 * 1024,
                sequential_requests=30,
                burst_streams=10,
                bursts_per_round=2,
                line_streams=4,
                lines_each=200,
            )
            keys = report(await measure(peers, workload), workload)
    finally:
        floor_bridge.stop()
        floor_cloud.stop()
        first_hop.stop()
        second_hop.stop()
        bridge.stop()
        api.stop()
    assert [pid for pid in ssh_pids if alive(pid)] == []
    assert keys["tunnel.peer_rounds"] == 2
    for name in (DIRECT, SSH, TUNNEL, TWO_HOP_RELAY):
        assert len(keys[f"tunnel.bulk_{name}_mb_s.rounds"]) == 2  # type: ignore[arg-type]
        assert len(keys[f"tunnel.{name}_lines_per_s.rounds"]) == 2  # type: ignore[arg-type]
        assert keys[f"tunnel.{name}_seq_ttfb_ms.p50"] > 0  # type: ignore[operator]
        assert keys[f"tunnel.{name}_burst_ttfb_ms.p50"] > 0  # type: ignore[operator]
    # The library floor took the chats only: their keys, none for the upload or the streams.
    assert keys["tunnel.library_floor_seq_ttfb_ms.p50"] > 0  # type: ignore[operator]
    assert keys["tunnel.library_floor_burst_ttfb_ms.p50"] > 0  # type: ignore[operator]
    assert len(keys["tunnel.library_floor_cpu_ms_per_request.rounds"]) == 2  # type: ignore[arg-type]
    assert "tunnel.library_floor_seq_ttfb_overhead_ratio_vs_ssh.rounds" in keys
    assert "tunnel.bulk_library_floor_mb_s" not in keys
    assert "tunnel.library_floor_lines_per_s" not in keys
    for key in TARGETS:
        assert isinstance(keys[key], float), (key, keys[key])
        assert keys[key] > 0, key  # type: ignore[operator]
    # Every request is relayed by api-backend and the bridge: their CPU was read from /proc (the targets' loop
    # above saw it above 0 one request at a time; a few requests at once may take less than one clock tick).
    assert len(keys["tunnel.cpu_ms_per_request.rounds"]) == 2  # type: ignore[arg-type]
    assert len(keys["tunnel.burst_cpu_ms_per_request.rounds"]) == 2  # type: ignore[arg-type]
