"""Hello/Welcome handshake, version negotiation and connection-level frame rules."""

from __future__ import annotations

import msgspec
import pytest

from cloudtolocalllm.protocol import (
    BATCH,
    DEFAULT_LIMITS,
    HANDSHAKE_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    BackendKind,
    Batch,
    BridgeStatus,
    CloseCode,
    Connection,
    ConnectionProtocolError,
    Data,
    FrameDecodeError,
    FrameTooLargeError,
    GoAway,
    Hello,
    Limits,
    LocalProtocolError,
    Open,
    Ping,
    Pong,
    Reauth,
    ReauthOk,
    ResponseHead,
    Role,
    VersionMismatchError,
    Welcome,
    agreed_features,
    encode,
    encode_batch,
)


def fatal(conn: Connection, data: bytes) -> ConnectionProtocolError:
    with pytest.raises(ConnectionProtocolError) as info:
        conn.receive(data)
    assert conn.is_closed
    return info.value


def test_handshake_adopts_the_welcome_limits(hello: Hello, welcome: Welcome) -> None:
    cloud, bridge = Connection(Role.CLOUD), Connection(Role.BRIDGE)
    assert cloud.max_frame_bytes == bridge.max_frame_bytes == HANDSHAKE_MAX_FRAME_BYTES
    assert cloud.receive(bridge.send(hello)) == hello
    assert cloud.peer_hello == hello
    assert not cloud.is_ready
    assert bridge.receive(cloud.send(welcome)) == welcome
    assert cloud.is_ready
    assert bridge.is_ready
    assert cloud.limits == bridge.limits == welcome.limits
    assert bridge.welcome == welcome
    assert bridge.max_frame_bytes == 4096
    assert bridge.max_data_payload == 4096 - 12


def test_hello_must_come_first() -> None:
    err = fatal(Connection(Role.CLOUD), encode(Ping(1)))
    assert err.reason == "expected Hello as the first frame, got Ping"
    assert err.close_code is CloseCode.PROTOCOL_VIOLATION
    assert err.close_reason == "protocol violation: expected Hello as the first frame, got Ping"


def test_welcome_must_come_first() -> None:
    err = fatal(Connection(Role.BRIDGE), encode(Open(1, "GET", "/", "", [], False)))
    assert err.reason == "expected Welcome as the first frame, got Open"


def test_nothing_but_hello_before_welcome(hello: Hello) -> None:
    cloud = Connection(Role.CLOUD)
    cloud.receive(encode(hello))
    assert fatal(cloud, encode(Pong(1))).reason == "Pong frame before the Welcome was sent"


def test_duplicate_hello(hello: Hello, welcome: Welcome) -> None:
    cloud = Connection(Role.CLOUD)
    cloud.receive(encode(hello))
    cloud.send(welcome)
    assert fatal(cloud, encode(hello)).reason == "duplicate Hello"


def test_duplicate_welcome(welcome: Welcome) -> None:
    bridge = Connection(Role.BRIDGE)
    bridge.receive(encode(welcome))
    assert fatal(bridge, encode(welcome)).reason == "duplicate Welcome"


def test_old_bridge_is_told_to_upgrade(hello: Hello) -> None:
    old = msgspec.structs.replace(hello, version=PROTOCOL_VERSION - 1)
    err = fatal(Connection(Role.CLOUD), encode(old))
    assert isinstance(err, VersionMismatchError)
    assert err.close_code is CloseCode.VERSION_INCOMPATIBLE
    assert err.close_reason == (
        f"bridge speaks protocol v{PROTOCOL_VERSION - 1}, cloud needs v{PROTOCOL_VERSION}: upgrade the bridge"
    )


def test_future_hello_with_another_layout_still_gets_a_version_reason() -> None:
    future = msgspec.msgpack.encode([1, PROTOCOL_VERSION + 1, {"capabilities": ["x"]}])
    err = fatal(Connection(Role.CLOUD), future)
    assert isinstance(err, VersionMismatchError)
    assert err.bridge_version == PROTOCOL_VERSION + 1
    assert f"v{PROTOCOL_VERSION + 1}" in err.close_reason


def test_same_version_with_a_broken_hello_is_a_decode_error() -> None:
    broken = msgspec.msgpack.encode([1, PROTOCOL_VERSION, 42])
    err = fatal(Connection(Role.CLOUD), broken)
    assert isinstance(err, FrameDecodeError)


def test_bridge_checks_the_welcome_version(welcome: Welcome) -> None:
    newer = msgspec.structs.replace(welcome, version=PROTOCOL_VERSION + 1)
    err = fatal(Connection(Role.BRIDGE), encode(newer))
    assert isinstance(err, VersionMismatchError)
    assert (err.bridge_version, err.cloud_version) == (PROTOCOL_VERSION, PROTOCOL_VERSION + 1)


def test_bridge_refuses_insane_limits_from_receive_frame(welcome: Welcome) -> None:
    bad = msgspec.structs.replace(welcome, limits=Limits(10, 1, 1))
    bridge = Connection(Role.BRIDGE)
    with pytest.raises(ConnectionProtocolError, match="Welcome limits: max_frame_bytes must be within"):
        bridge.receive_frame(bad)


def test_go_away_may_replace_the_welcome() -> None:
    bridge = Connection(Role.BRIDGE)
    assert bridge.receive(encode(GoAway("draining", 30.0))) == GoAway("draining", 30.0)
    assert bridge.going_away
    assert not bridge.is_ready


@pytest.mark.parametrize(
    ("role", "frame", "reason"),
    [
        (Role.CLOUD, Open(1, "GET", "/", "", [], False), "Open frames are not sent by the bridge"),
        (Role.CLOUD, ReauthOk(), "ReauthOk frames are not sent by the bridge"),
        (Role.CLOUD, GoAway("x"), "GoAway frames are not sent by the bridge"),
        (Role.BRIDGE, Reauth("t"), "Reauth frames are not sent by the cloud"),
        (Role.BRIDGE, BridgeStatus(True, []), "BridgeStatus frames are not sent by the cloud"),
        (Role.BRIDGE, ResponseHead(1, 200, []), "ResponseHead frames are not sent by the cloud"),
        (
            Role.BRIDGE,
            Hello(1, "", "", "", "", BackendKind.OLLAMA, True, []),
            "Hello frames are not sent by the cloud",
        ),
    ],
)
def test_frames_from_the_wrong_side(role: Role, frame: object, reason: str) -> None:
    conn = Connection(role)
    with pytest.raises(ConnectionProtocolError) as info:
        conn.receive_frame(frame)  # type: ignore[arg-type]
    assert info.value.reason == reason
    assert conn.is_closed


def test_garbage_closes_the_connection() -> None:
    cloud = Connection(Role.CLOUD)
    err = fatal(cloud, b"\x00\x01garbage")
    assert isinstance(err, FrameDecodeError)
    with pytest.raises(ConnectionProtocolError, match="the connection is closed"):
        cloud.receive(b"")


def test_oversized_frame_closes_with_frame_too_large(hello: Hello, welcome: Welcome) -> None:
    cloud = Connection(Role.CLOUD)
    cloud.receive(encode(hello))
    cloud.send(welcome)
    err = fatal(cloud, encode(Data(1, b"x" * 5000)))
    assert isinstance(err, FrameTooLargeError)
    assert err.close_code is CloseCode.FRAME_TOO_LARGE


def test_reauth_round_trip_and_unsolicited_reauth_ok(hello: Hello, welcome: Welcome) -> None:
    cloud, bridge = Connection(Role.CLOUD), Connection(Role.BRIDGE)
    cloud.receive(bridge.send(hello))
    bridge.receive(cloud.send(welcome))
    assert cloud.receive(bridge.send(Reauth("fresh"))) == Reauth("fresh")
    assert bridge.receive(cloud.send(ReauthOk(2_000_000_000.0))) == ReauthOk(2_000_000_000.0)
    assert fatal(bridge, cloud.send(ReauthOk())).reason == "ReauthOk without a pending Reauth"


def test_sending_rules_during_handshake(hello: Hello, welcome: Welcome) -> None:
    bridge = Connection(Role.BRIDGE)
    with pytest.raises(LocalProtocolError, match="cannot send Ping before the handshake has completed"):
        bridge.send(Ping(1))
    with pytest.raises(LocalProtocolError, match="Hello must carry version"):
        bridge.send(msgspec.structs.replace(hello, version=99))
    bridge.send(hello)
    with pytest.raises(LocalProtocolError, match="Hello was already sent"):
        bridge.send(hello)
    cloud = Connection(Role.CLOUD)
    with pytest.raises(LocalProtocolError, match="cannot send Welcome before receiving Hello"):
        cloud.send(welcome)
    with pytest.raises(LocalProtocolError, match="Welcome frames are not sent by the bridge"):
        bridge.send(welcome)
    cloud.receive(encode(hello))
    with pytest.raises(LocalProtocolError, match="Welcome limits: initial_window must be within"):
        cloud.send(msgspec.structs.replace(welcome, limits=Limits(4096, 0, 1)))
    cloud.send(welcome)
    with pytest.raises(LocalProtocolError, match="Welcome was already sent"):
        cloud.send(welcome)


def test_ping_pong_both_ways(hello: Hello) -> None:
    cloud, bridge = Connection(Role.CLOUD), Connection(Role.BRIDGE)
    cloud.receive(bridge.send(hello))
    bridge.receive(cloud.send(Welcome(PROTOCOL_VERSION, "s", 10.0, DEFAULT_LIMITS)))
    ping = bridge.receive(cloud.send(Ping(42)))
    assert isinstance(ping, Ping)
    assert cloud.receive(bridge.send(Pong(ping.nonce))) == Pong(42)
    assert bridge.receive(cloud.send(Ping(1))) == Ping(1)
    assert cloud.receive(bridge.send(Ping(2))) == Ping(2)
    assert cloud.receive(bridge.send(BridgeStatus(False, []))) == BridgeStatus(False, [])


def test_close_is_idempotent_and_blocks_sending(hello: Hello) -> None:
    bridge = Connection(Role.BRIDGE)
    assert bridge.close() == []
    assert bridge.close() == []
    with pytest.raises(LocalProtocolError, match="the connection is closed"):
        bridge.send(hello)


# --- features -------------------------------------------------------------------------------------


def _greeted(offered: list[str]) -> tuple[Connection, Connection, Hello]:
    cloud, bridge = Connection(Role.CLOUD), Connection(Role.BRIDGE)
    hello = Hello(PROTOCOL_VERSION, "bridge-1", "home pc", "0.1.0", "linux", BackendKind.OLLAMA, True, [], offered)
    cloud.receive(bridge.send(hello))
    return cloud, bridge, hello


def test_the_welcome_turns_on_the_features_both_sides_know() -> None:
    cloud, bridge, hello = _greeted(["from-the-future", BATCH])
    welcome = Welcome(PROTOCOL_VERSION, "s", 20.0, DEFAULT_LIMITS, features=agreed_features(hello.features))
    assert welcome.features == [BATCH]
    bridge.receive(cloud.send(welcome))
    assert cloud.features == bridge.features == frozenset({BATCH})


def test_an_older_bridge_offers_nothing_and_gets_nothing() -> None:
    # A Hello from before features existed: one element shorter on the wire.
    old = msgspec.msgpack.encode([1, PROTOCOL_VERSION, "bridge-1", "pc", "0.0.9", "linux", "ollama", True, []])
    cloud = Connection(Role.CLOUD)
    hello = cloud.receive(old)
    assert isinstance(hello, Hello) and hello.features == []
    assert agreed_features(hello.features) == []


def test_no_side_turns_on_a_feature_the_hello_did_not_offer() -> None:
    cloud, bridge, _ = _greeted([])
    with pytest.raises(LocalProtocolError, match="not both offered and known"):
        cloud.send(Welcome(PROTOCOL_VERSION, "s", 20.0, DEFAULT_LIMITS, features=[BATCH]))
    assert not cloud.is_ready
    err = fatal(bridge, encode(Welcome(PROTOCOL_VERSION, "s", 20.0, DEFAULT_LIMITS, features=[BATCH])))
    assert err.reason == "Welcome turns on features the Hello did not offer: ['batch']"


def test_a_batch_needs_the_feature() -> None:
    cloud, bridge, _ = _greeted([BATCH])
    bridge.receive(cloud.send(Welcome(PROTOCOL_VERSION, "s", 20.0, DEFAULT_LIMITS)))  # features left off
    err = fatal(cloud, encode_batch([encode(Ping(1)), encode(Ping(2))]))
    assert err.reason == "a Batch frame, but the Welcome did not turn the batch feature on"


def test_a_batch_is_handed_over_whole_and_its_frames_checked_one_by_one() -> None:
    cloud, bridge, _ = _greeted([BATCH])
    bridge.receive(cloud.send(Welcome(PROTOCOL_VERSION, "s", 20.0, DEFAULT_LIMITS, features=[BATCH])))
    batch = bridge.receive(encode_batch([cloud.send(Ping(1)), cloud.send(Open(1, "GET", "/api/tags", "", [], False))]))
    assert isinstance(batch, Batch)
    assert [bridge.receive_frame(frame) for frame in batch.frames] == batch.frames
    assert set(bridge.stream_ids) == {1}
    with pytest.raises(ConnectionProtocolError, match="Batch frames are not sent"):
        bridge.receive_frame(batch)  # a Batch is unpacked by the caller, never validated as one frame
