"""Close codes and their reasons."""

from __future__ import annotations

import pytest

from cloudtolocalllm.protocol import (
    CLOSE_REASONS,
    MAX_CLOSE_REASON_BYTES,
    CloseCode,
    ConnectionProtocolError,
    VersionMismatchError,
    check_compatible,
    clip_reason,
    close_reason,
    is_compatible,
    should_reconnect,
    version_mismatch_reason,
)


def test_codes_are_private_range_and_distinct() -> None:
    values = [int(code) for code in CloseCode]
    assert all(4000 <= value <= 4999 for value in values)
    assert len(set(values)) == len(values)


@pytest.mark.parametrize("code", list(CloseCode))
def test_every_code_has_a_reason_that_fits(code: CloseCode) -> None:
    assert len(CLOSE_REASONS[code].encode()) <= MAX_CLOSE_REASON_BYTES
    assert len(close_reason(code, "x" * 500).encode()) <= MAX_CLOSE_REASON_BYTES


def test_close_reason_appends_detail() -> None:
    reason = close_reason(CloseCode.PROTOCOL_VIOLATION, "duplicate Hello")
    assert reason == "protocol violation: duplicate Hello"
    assert close_reason(CloseCode.REPLACED) == "replaced by a newer connection from the same bridge"


def test_clip_never_splits_a_character() -> None:
    clipped = clip_reason("é" * 200)
    assert len(clipped.encode()) <= MAX_CLOSE_REASON_BYTES
    assert clipped.endswith("...")
    assert set(clipped[:-3]) == {"é"}
    assert clip_reason("short") == "short"


@pytest.mark.parametrize(("bridge", "cloud"), [(1, 2), (3, 2), (0, 2**31), (2**31, 1)])
def test_version_reason_names_both_versions(bridge: int, cloud: int) -> None:
    reason = version_mismatch_reason(bridge, cloud)
    assert len(reason.encode()) <= MAX_CLOSE_REASON_BYTES
    assert f"v{bridge}" in reason
    assert f"v{cloud}" in reason
    if bridge < cloud:
        assert reason.endswith("upgrade the bridge")


def test_version_check() -> None:
    assert is_compatible(1)
    assert not is_compatible(2)
    check_compatible(1, peer="bridge")
    with pytest.raises(VersionMismatchError) as info:
        check_compatible(0, peer="bridge")
    err = info.value
    assert (err.bridge_version, err.cloud_version) == (0, 1)
    assert err.close_code is CloseCode.VERSION_INCOMPATIBLE
    assert err.close_reason == "bridge speaks protocol v0, cloud needs v1: upgrade the bridge"
    with pytest.raises(VersionMismatchError) as info:
        check_compatible(2, peer="cloud")
    assert (info.value.bridge_version, info.value.cloud_version) == (1, 2)


def test_connection_error_close_reason_fits() -> None:
    err = ConnectionProtocolError("y" * 300)
    assert err.fatal
    assert err.close_code is CloseCode.PROTOCOL_VIOLATION
    assert err.close_reason.startswith("protocol violation: yyy")
    assert len(err.close_reason.encode()) <= MAX_CLOSE_REASON_BYTES


def test_should_reconnect() -> None:
    assert not should_reconnect(CloseCode.REPLACED)
    assert not should_reconnect(CloseCode.VERSION_INCOMPATIBLE)
    assert not should_reconnect(CloseCode.UNAUTHORIZED)
    assert should_reconnect(CloseCode.GOING_AWAY)
    assert should_reconnect(CloseCode.HEARTBEAT_TIMEOUT)
    assert should_reconnect(1006)
