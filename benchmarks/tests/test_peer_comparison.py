"""The comparison of the tunnel with ssh -R: its arithmetic on known samples, and a tiny real run that
produces every key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudtolocalllm.devkit.launch import alive

from ..local_cloud import dev_auth, start_cloud_and_bridge, start_fast_backend, start_tcp_relay, wait_bridge
from ..peer_comparison import (
    DIRECT,
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
async def test_a_tiny_run_through_every_peer_reports_every_key(fast_backend: int, tmp_path: Path) -> None:
    auth_env, issuer = dev_auth(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(issuer.mint("bench", ttl_s=600))
    auth = {"authorization": f"Bearer {token_file.read_text()}"}
    api, bridge, api_port = start_cloud_and_bridge(tmp_path, auth_env, token_file, fast_backend)
    second_hop, second_port = start_tcp_relay(tmp_path, fast_backend)
    first_hop, relay_port = start_tcp_relay(tmp_path, second_port)
    try:
        await wait_bridge(api_port, auth)
        with ssh_reverse_tunnel(fast_backend, tmp_path / "ssh") as ssh:
            ssh_pids = ssh.pids()
            peers = [
                Peer(DIRECT, fast_backend),
                Peer(SSH, ssh.port, cpu_pids=ssh.pids),
                Peer(TUNNEL, api_port, "/api/ollama", auth, cpu_pids=lambda: [api.pid, bridge.pid]),
                Peer(TWO_HOP_RELAY, relay_port, cpu_pids=lambda: [first_hop.pid, second_hop.pid]),
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
    for key in TARGETS:
        assert isinstance(keys[key], float), (key, keys[key])
        assert keys[key] > 0, key  # type: ignore[operator]
    # Every request is relayed by api-backend and the bridge: their CPU was read from /proc (the targets' loop
    # above saw it above 0 one request at a time; a few requests at once may take less than one clock tick).
    assert len(keys["tunnel.cpu_ms_per_request.rounds"]) == 2  # type: ignore[arg-type]
    assert len(keys["tunnel.burst_cpu_ms_per_request.rounds"]) == 2  # type: ignore[arg-type]
