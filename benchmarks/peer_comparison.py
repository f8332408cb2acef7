"""The same four calls to the same backend through each peer, in interleaved rounds: the backend directly,
OpenSSH's reverse tunnel (``ssh -R``, the peer a user would pick instead), the tunnel, and floors that show
what is left to win (two plain TCP relays; the libraries the tunnel is built from, benchmarks/library_floor.py).

Each round runs every call through every peer before the next call, so a shared machine's drift lands on all
peers alike. A peer that cannot carry a call honestly (the library floor buffers whole bodies: no 256 MB
upload, no long streams) names the calls it takes (``Peer.calls``) and is left out of the others.
:func:`measure` collects the samples, :func:`report` turns them into ``tunnel.*`` keys; the targets beside
them are read, never enforced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .http_calls import BLOB_PATH, burst_ttfb_ms, lines_per_s, sequential_ttfb_ms, upload_seconds
from .proc_cpu import cpu_ms
from .stats import median, percentile

DIRECT, SSH, TUNNEL, TWO_HOP_RELAY, LIBRARY_FLOOR = "direct", "ssh", "tunnel", "two_hop_relay", "library_floor"

# The four calls (http_calls), as a peer names those it takes.
UPLOAD, SEQUENTIAL, BURST, LINES = "upload", "sequential", "burst", "lines"
ALL_CALLS = frozenset({UPLOAD, SEQUENTIAL, BURST, LINES})

# Issue 14's targets for the tunnel against ssh -R (they replace issue 3's bulk_ratio_vs_direct >= 0.3).
TARGETS = {
    "tunnel.bulk_ratio_vs_ssh": ">= 1.0",
    "tunnel.chunks_ratio_vs_ssh": ">= 1.0",
    "tunnel.seq_ttfb_overhead_ratio_vs_ssh": "<= 2",
    "tunnel.burst_ttfb_overhead_ratio_vs_ssh": "<= 3",
    "tunnel.cpu_ms_per_request": "<= 0.5",
}


@dataclass(frozen=True)
class Peer:
    """Where a peer answers: ``prefix`` goes before the backend's paths (``/api/ollama`` for the tunnel).

    ``cpu_pids`` names the processes that carry the peer's requests, whose CPU per request is reported.
    ``calls``: the calls it takes (all by default); it is left out of the others, which it has no samples for.
    """

    name: str
    port: int
    prefix: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    cpu_pids: Callable[[], Sequence[int]] | None = None
    calls: frozenset[str] = ALL_CALLS


@dataclass(frozen=True)
class Workload:
    rounds: int = 3
    upload_bytes: int = 256 * 1024 * 1024
    sequential_requests: int = 200
    burst_streams: int = 60
    bursts_per_round: int = 3
    line_streams: int = 60
    lines_each: int = 2000


@dataclass
class Samples:
    """One peer's samples, one list entry per round."""

    upload_s: list[float] = field(default_factory=list)
    seq_ttfb_ms: list[list[float]] = field(default_factory=list)
    burst_ttfb_ms: list[list[float]] = field(default_factory=list)
    lines_per_s: list[float] = field(default_factory=list)
    cpu_ms_per_request: list[float] = field(default_factory=list)  # one request at a time
    burst_cpu_ms_per_request: list[float] = field(default_factory=list)  # many at once: work is shared


async def measure(peers: Sequence[Peer], workload: Workload) -> dict[str, Samples]:
    """Every call through every peer that takes it, ``workload.rounds`` times."""
    samples = {peer.name: Samples() for peer in peers}
    for _ in range(workload.rounds):
        for peer in _taking(peers, UPLOAD):
            seconds = await upload_seconds(peer.port, peer.prefix + BLOB_PATH, peer.headers, workload.upload_bytes)
            samples[peer.name].upload_s.append(seconds)
        for peer in _taking(peers, SEQUENTIAL):
            before = _cpu_ms(peer)
            seq = await sequential_ttfb_ms(peer.port, peer.prefix, peer.headers, workload.sequential_requests)
            samples[peer.name].seq_ttfb_ms.append(seq)
            if peer.cpu_pids is not None:
                samples[peer.name].cpu_ms_per_request.append((_cpu_ms(peer) - before) / len(seq))
        bursting = _taking(peers, BURST)
        bursts: dict[str, list[float]] = {peer.name: [] for peer in bursting}
        burst_cpu = dict.fromkeys(bursts, 0.0)
        for _ in range(workload.bursts_per_round):
            for peer in bursting:
                before = _cpu_ms(peer)
                bursts[peer.name] += await burst_ttfb_ms(peer.port, peer.prefix, peer.headers, workload.burst_streams)
                burst_cpu[peer.name] += _cpu_ms(peer) - before
        for peer in bursting:
            samples[peer.name].burst_ttfb_ms.append(bursts[peer.name])
            if peer.cpu_pids is not None:
                samples[peer.name].burst_cpu_ms_per_request.append(burst_cpu[peer.name] / len(bursts[peer.name]))
        for peer in _taking(peers, LINES):
            rate = await lines_per_s(peer.port, peer.prefix, peer.headers, workload.line_streams, workload.lines_each)
            samples[peer.name].lines_per_s.append(rate)
    return samples


def _taking(peers: Sequence[Peer], call: str) -> list[Peer]:
    return [peer for peer in peers if call in peer.calls]


def _cpu_ms(peer: Peer) -> float:
    return cpu_ms(peer.cpu_pids()) if peer.cpu_pids is not None else 0.0


def report(samples: Mapping[str, Samples], workload: Workload) -> dict[str, object]:
    """``tunnel.*`` keys: each peer's figures (for the calls it took), the tunnel against ssh -R, against direct
    and against the floors, and the targets. Direct, ssh and the tunnel take every call."""
    out: dict[str, object] = {"tunnel.peer_rounds": workload.rounds}
    for name, peer in samples.items():
        if peer.upload_s:
            # From the median time, as the ratios below are: with an even number of rounds the median of the
            # rates would be another figure.
            out[f"tunnel.bulk_{name}_mb_s"] = round(workload.upload_bytes / median(peer.upload_s) / 1e6, 1)
            out[f"tunnel.bulk_{name}_mb_s.rounds"] = [round(workload.upload_bytes / s / 1e6) for s in peer.upload_s]
    for name, peer in samples.items():
        if peer.seq_ttfb_ms:
            out[f"tunnel.{name}_seq_ttfb_ms.p50"] = round(percentile(_pooled(peer.seq_ttfb_ms), 50), 3)
        if peer.burst_ttfb_ms:
            out[f"tunnel.{name}_burst_ttfb_ms.p50"] = round(percentile(_pooled(peer.burst_ttfb_ms), 50), 3)
        if peer.lines_per_s:
            out[f"tunnel.{name}_lines_per_s"] = round(median(peer.lines_per_s))
            out[f"tunnel.{name}_lines_per_s.rounds"] = [round(rate) for rate in peer.lines_per_s]
        # The tunnel's own CPU keys carry no peer name: tunnel.cpu_ms_per_request is a target.
        named = "" if name == TUNNEL else f"{name}_"
        for key, per_round in (
            (f"tunnel.{named}cpu_ms_per_request", peer.cpu_ms_per_request),
            (f"tunnel.{named}burst_cpu_ms_per_request", peer.burst_cpu_ms_per_request),
        ):
            if per_round:
                out[key] = round(median(per_round), 3)
                out[f"{key}.rounds"] = [round(ms, 3) for ms in per_round]
    direct, ssh, tunnel = samples[DIRECT], samples[SSH], samples[TUNNEL]
    # Issue 3's key, still reported; no longer a target (docs/performance.md says why).
    out["tunnel.bulk_ratio_vs_direct"] = round(median(direct.upload_s) / median(tunnel.upload_s), 3)
    seq_p50 = {name: percentile(_pooled(samples[name].seq_ttfb_ms), 50) for name in (DIRECT, TUNNEL)}
    out["tunnel.seq_ttfb_overhead_ms.p50"] = round(seq_p50[TUNNEL] - seq_p50[DIRECT], 3)
    # Throughput ratios: above 1 the tunnel is the faster (uploads compare times, so ssh's over the tunnel's).
    out["tunnel.bulk_ratio_vs_ssh"] = round(median(ssh.upload_s) / median(tunnel.upload_s), 3)
    out["tunnel.bulk_ratio_vs_ssh.rounds"] = _ratios(ssh.upload_s, tunnel.upload_s)
    out["tunnel.chunks_ratio_vs_ssh"] = round(median(tunnel.lines_per_s) / median(ssh.lines_per_s), 3)
    out["tunnel.chunks_ratio_vs_ssh.rounds"] = _ratios(tunnel.lines_per_s, ssh.lines_per_s)
    for kind in ("seq", "burst"):
        by_peer = [getattr(peer, f"{kind}_ttfb_ms") for peer in (direct, ssh, tunnel)]
        out.update(_overhead_ratio_keys(f"tunnel.{kind}_ttfb_overhead_ratio_vs_ssh", *by_peer))
    if relay := samples.get(TWO_HOP_RELAY):
        # The tunnel's CPU in units of the least a two-process Python relay costs: what library and code
        # changes can still win, on any machine (the relay parses nothing; ssh -R is C).
        out.update(_cpu_ratio_key("tunnel.cpu_ratio_vs_two_hop_relay", tunnel, relay))
    if floor := samples.get(LIBRARY_FLOOR):
        # The tunnel's CPU in units of what its libraries alone cost (what project code can still win), and
        # whether even they meet the targets for the time added (<= 2 one at a time, <= 3 sixty at once).
        out.update(_cpu_ratio_key("tunnel.cpu_ratio_vs_library_floor", tunnel, floor))
        for kind in ("seq", "burst"):
            if floor_ms := getattr(floor, f"{kind}_ttfb_ms"):
                key = f"tunnel.library_floor_{kind}_ttfb_overhead_ratio_vs_ssh"
                direct_ms, ssh_ms = getattr(direct, f"{kind}_ttfb_ms"), getattr(ssh, f"{kind}_ttfb_ms")
                out.update(_overhead_ratio_keys(key, direct_ms, ssh_ms, floor_ms))
    out.update({f"{key}.target": target for key, target in TARGETS.items()})
    return out


def _overhead_ratio_keys(
    key: str, direct: Sequence[Sequence[float]], ssh: Sequence[Sequence[float]], other: Sequence[Sequence[float]]
) -> dict[str, object]:
    """:func:`overhead_ratio` of the pooled p50s (``key``) and of each round's (``key.rounds``); one list of
    samples per round for each peer."""
    by_peer = (direct, ssh, other)  # overhead_ratio's order
    return {
        key: overhead_ratio(*(percentile(_pooled(rounds), 50) for rounds in by_peer)),
        f"{key}.rounds": [
            overhead_ratio(*(percentile(one_peer, 50) for one_peer in one_round))
            for one_round in zip(*by_peer, strict=True)
        ],
    }


def _cpu_ratio_key(key: str, tunnel: Samples, floor: Samples) -> dict[str, object]:
    """The tunnel's CPU per request (one at a time) in units of ``floor``'s, when both were read."""
    if not (tunnel.cpu_ms_per_request and floor.cpu_ms_per_request):
        return {}
    return {key: round(median(tunnel.cpu_ms_per_request) / median(floor.cpu_ms_per_request), 2)}


def overhead_ratio(direct_ms: float, ssh_ms: float, tunnel_ms: float) -> float | None:
    """The time the tunnel adds over direct divided by the time ssh -R adds; None when ssh added nothing
    measurable (a ratio to noise would mean nothing)."""
    ssh_added = ssh_ms - direct_ms
    if ssh_added <= 0.001:
        return None
    return round((tunnel_ms - direct_ms) / ssh_added, 3)


def _ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    return [round(n / d, 3) for n, d in zip(numerators, denominators, strict=True)]


def _pooled(rounds: Sequence[Sequence[float]]) -> list[float]:
    return [sample for one_round in rounds for sample in one_round]
