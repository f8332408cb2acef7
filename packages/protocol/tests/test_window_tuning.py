"""Receive-window auto-tuning: windows grow only when the window, not the consumer, holds a stream back."""

from __future__ import annotations

import pytest

from cloudtolocalllm.protocol import Cancel, Connection, Credit, Data, End, Limits, Open, Ping, Pong, Role, encode

from .conftest import SMALL_LIMITS, make_hello, make_welcome

WINDOW = SMALL_LIMITS.initial_window  # 1000
RTT = 0.010


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tuned_pair(
    max_window: int = 8 * WINDOW, budget: int = 0, limits: Limits = SMALL_LIMITS
) -> tuple[Connection, Connection, Clock]:
    clock = Clock()
    cloud = Connection(Role.CLOUD)
    bridge = Connection(Role.BRIDGE, max_recv_window=max_window, recv_window_budget=budget, clock=clock)
    cloud.receive(bridge.send(make_hello()))
    bridge.receive(cloud.send(make_welcome(limits)))
    bridge.rtt_s = RTT
    return cloud, bridge, clock


def open_upload(cloud: Connection, bridge: Connection) -> int:
    sid = cloud.next_stream_id
    bridge.receive(cloud.send(Open(sid, "POST", "/api/blobs/sha256:00", "", [], True)))
    return sid


def move(cloud: Connection, bridge: Connection, sid: int, n: int) -> Credit | None:
    """The cloud sends ``n`` bytes, the bridge consumes them; the Credit (if any) goes back to the cloud."""
    bridge.receive(cloud.send(Data(sid, b"x" * n)))
    credit = bridge.consumed(sid, n)
    if credit is not None:
        cloud.receive(encode(credit))
    return credit


def test_a_window_consumed_within_two_round_trips_doubles_until_the_maximum() -> None:
    cloud, bridge, clock = tuned_pair()
    sid = open_upload(cloud, bridge)
    windows = []
    for _ in range(6):
        clock.now += RTT / 2  # half a window in half a round trip: the sender waits for credit
        window = bridge.recv_window(sid)
        credit = move(cloud, bridge, sid, window // 2)
        assert credit is not None
        windows.append(bridge.recv_window(sid))
        # The Credit returns what was consumed and carries the growth; the sender sees all of it.
        assert cloud.send_window(sid) == bridge.recv_window(sid)
    assert windows == [2000, 4000, 8000, 8000, 8000, 8000]


def test_credits_smaller_than_half_a_window_grow_it_once_per_half_window() -> None:
    # Large windows return credit every 64 KiB consumed; four such Credits in one instant are one half
    # window in no time (grow once), not four measurements that would each double it.
    window = 512 * 1024
    limits = Limits(max_frame_bytes=300_000, initial_window=window, max_concurrent_streams=3)
    cloud, bridge, clock = tuned_pair(max_window=64 * window, budget=64 * window, limits=limits)
    sid = open_upload(cloud, bridge)
    clock.now += RTT / 4
    credits = [move(cloud, bridge, sid, 64 * 1024) for _ in range(4)]
    assert [c.increment if c else None for c in credits] == [64 * 1024] * 3 + [64 * 1024 + window]
    assert bridge.recv_window(sid) == 2 * window


def test_a_slow_stream_keeps_its_window() -> None:
    cloud, bridge, clock = tuned_pair()
    sid = open_upload(cloud, bridge)
    for _ in range(4):
        clock.now += 3 * RTT  # half a window per three round trips: data, not credit, is what it waits for
        assert move(cloud, bridge, sid, WINDOW // 2) == Credit(sid, WINDOW // 2)
    assert bridge.recv_window(sid) == WINDOW


def test_no_growth_without_a_round_trip_estimate_or_a_larger_maximum() -> None:
    cloud, bridge, clock = tuned_pair()
    bridge.rtt_s = 0
    sid = open_upload(cloud, bridge)
    clock.now += 0.0001
    assert move(cloud, bridge, sid, WINDOW // 2) == Credit(sid, WINDOW // 2)
    assert bridge.recv_window(sid) == WINDOW

    default = Connection(Role.BRIDGE)  # no maximum given: windows never grow
    assert default.rtt_s == 0


def test_growth_is_bounded_by_the_connection_budget_and_returned_when_a_stream_ends() -> None:
    cloud, bridge, clock = tuned_pair(max_window=8 * WINDOW, budget=3 * WINDOW)
    first, second = open_upload(cloud, bridge), open_upload(cloud, bridge)
    for sid in (first, second, first, second):
        clock.now += RTT / 10
        move(cloud, bridge, sid, bridge.recv_window(sid) // 2)
    # first 1000 -> 2000, second 1000 -> 2000, first 2000 -> 3000 (only 1000 of the budget left), second stays.
    assert (bridge.recv_window(first), bridge.recv_window(second)) == (3000, 2000)
    bridge.receive(cloud.send(Cancel(first, "done")))
    assert bridge.recv_window(first) == 0
    clock.now += RTT / 10
    move(cloud, bridge, second, bridge.recv_window(second) // 2)
    assert bridge.recv_window(second) == 4000  # the 2000 the first stream held are available again


def test_the_peer_may_never_send_beyond_the_grown_window() -> None:
    cloud, bridge, clock = tuned_pair()
    sid = open_upload(cloud, bridge)
    clock.now += RTT / 4
    move(cloud, bridge, sid, WINDOW // 2)
    window = bridge.recv_window(sid)
    assert window == 2 * WINDOW
    # Unconsumed data is bounded by the grown window: the cloud can send exactly that much, no more.
    assert cloud.send_window(sid) == window
    bridge.receive(cloud.send(Data(sid, b"y" * window)))
    assert bridge.buffered_bytes == window
    assert cloud.send_window(sid) == 0


def test_a_body_that_ended_and_was_consumed_returns_its_growth_at_once() -> None:
    # A big prompt followed by a long answer: the stream stays open, its request window is no longer needed.
    cloud, bridge, clock = tuned_pair(max_window=8 * WINDOW, budget=2 * WINDOW)
    first = open_upload(cloud, bridge)
    clock.now += RTT / 10
    move(cloud, bridge, first, WINDOW // 2)
    clock.now += RTT / 10
    move(cloud, bridge, first, WINDOW)
    assert bridge.recv_window(first) == 3 * WINDOW  # 1000 -> 2000 -> 3000: the budget (2000) is spent
    bridge.receive(cloud.send(Data(first, b"z" * 100)))
    bridge.receive(cloud.send(End(first)))
    assert bridge.recv_window(first) == 3 * WINDOW  # 100 bytes still buffered: the window still bounds them
    assert bridge.consumed(first, 100) is None
    assert bridge.recv_window(first) == WINDOW
    assert first in bridge.stream_ids  # the response half is still going
    second = open_upload(cloud, bridge)
    clock.now += RTT / 10
    move(cloud, bridge, second, WINDOW // 2)
    assert bridge.recv_window(second) == 2 * WINDOW


def test_the_round_trip_is_timed_from_a_ping_to_its_pong_and_the_smallest_real_sample_kept() -> None:
    cloud, bridge, clock = tuned_pair()
    bridge.rtt_s = 0

    def ping_pong(nonce: int, seconds: float, answer: int | None = None) -> None:
        cloud.receive(bridge.send(Ping(nonce)))
        assert bridge.awaiting_pong
        clock.now += seconds
        bridge.receive(cloud.send(Pong(nonce if answer is None else answer)))

    ping_pong(1, 0.0)  # a coarse clock (Windows' monotonic ticks every ~15.6 ms) says nothing
    assert bridge.rtt_s == 0 and not bridge.awaiting_pong
    ping_pong(2, 0.020)
    ping_pong(3, 0.050)
    assert bridge.rtt_s == pytest.approx(0.020)
    ping_pong(4, 0.001, answer=99)  # not the answer to our Ping: no sample
    assert bridge.rtt_s == pytest.approx(0.020) and bridge.awaiting_pong
    ping_pong(5, 0.012)
    assert bridge.rtt_s == pytest.approx(0.012) and not bridge.awaiting_pong
