"""Reconnect delays: full jitter within bounds, the cap, reset only after a stable connection, hints."""

from __future__ import annotations

import random

import pytest

from cloudtolocalllm.bridge.backoff import MAX_HINT_S, Backoff
from cloudtolocalllm.bridge.tunnel import reauth_delay


def test_full_jitter_bounds_and_cap() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(1))
    for attempt in range(30):
        ceiling = min(60.0, 2.0**attempt)
        assert backoff.ceiling() == ceiling
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
    assert backoff.attempt == 30
    assert backoff.ceiling() == 60.0


def test_jitter_is_spread_over_the_window() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(2))
    backoff.attempt = 10  # ceiling at the cap
    delays = []
    for _ in range(2000):
        backoff.attempt = 10
        delays.append(backoff.next_delay())
    assert min(delays) < 3.0 and max(delays) > 57.0  # full jitter: the whole [0, cap] range is used
    assert 25.0 < sum(delays) / len(delays) < 35.0


def test_same_seed_same_delays() -> None:
    first = Backoff(rng=random.Random(42))
    second = Backoff(rng=random.Random(42))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


def test_huge_attempt_counts_do_not_overflow() -> None:
    backoff = Backoff(rng=random.Random(3))
    backoff.attempt = 10_000
    assert 0.0 <= backoff.next_delay() <= 60.0


def test_reset_only_after_the_stable_period() -> None:
    backoff = Backoff(stable_after_s=30.0, rng=random.Random(4))
    for _ in range(5):
        backoff.next_delay()
    backoff.connection_ended(uptime_s=29.9)  # flapping: accepted, then dropped
    assert backoff.attempt == 5
    backoff.connection_ended(uptime_s=30.0)
    assert backoff.attempt == 0
    assert backoff.ceiling() == 1.0


def test_flapping_connections_keep_growing_the_delay() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, stable_after_s=30.0, rng=random.Random(5))
    ceilings = []
    for _ in range(8):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
        backoff.connection_ended(uptime_s=1.0)
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60]


def test_retry_hint_is_a_floor_with_jitter() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(6))
    for _ in range(200):
        backoff.attempt = 0
        delay = backoff.next_delay(hint_s=10.0)
        assert 10.0 <= delay <= 15.0  # hint + up to max(1, hint / 2)
    assert backoff.hint_delay(0.0) <= 1.0


def test_hint_above_the_cap_is_honoured_but_clipped() -> None:
    backoff = Backoff(cap_s=60.0, rng=random.Random(7))
    assert backoff.next_delay(hint_s=300.0) >= 300.0
    assert backoff.next_delay(hint_s=10 * 86400.0) <= MAX_HINT_S * 1.5
    assert backoff.hint_delay(-5.0) <= 1.0


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=0)
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=10, cap_s=5)


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [(3600.0, 2880.0), (100.0, 70.0), (150.0, 120.0), (31.0, 1.0), (30.0, 0.0), (5.0, 0.0), (-10.0, 0.0)],
)
def test_reauth_delay(remaining: float, expected: float) -> None:
    assert reauth_delay(remaining) == pytest.approx(expected)
