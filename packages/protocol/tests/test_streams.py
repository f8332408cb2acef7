"""Stream lifecycle and every ordering rule, with the exact error each one raises."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloudtolocalllm.protocol import (
    Cancel,
    CloseCode,
    Connection,
    ConnectionProtocolError,
    Credit,
    Data,
    End,
    ErrorCode,
    Frame,
    GoAway,
    Headers,
    LocalProtocolError,
    Open,
    ResponseHead,
    StreamClosedError,
    StreamError,
    StreamProtocolError,
    encode,
)

Relay = Callable[[Frame], "Frame | None"]
Opener = Callable[..., int]


def stream_error(receive: Callable[[bytes], object], frame: Frame) -> StreamProtocolError:
    with pytest.raises(StreamProtocolError) as info:
        receive(encode(frame))
    err = info.value
    assert not err.fatal
    assert err.close_code is None
    assert err.reply == StreamError(err.stream_id, err.code.value, err.reason)
    return err


def fatal(receive: Callable[[bytes], object], frame: Frame) -> ConnectionProtocolError:
    with pytest.raises(ConnectionProtocolError) as info:
        receive(encode(frame))
    assert info.value.close_code is CloseCode.PROTOCOL_VIOLATION
    return info.value


def test_full_exchange_closes_the_stream_on_both_sides(
    cloud: Connection, bridge: Connection, to_bridge: Relay, to_cloud: Relay, open_stream: Opener
) -> None:
    sid = open_stream()
    assert bridge.stream_ids == (sid,)
    to_bridge(Data(sid, b'{"model":"x"}'))
    to_bridge(End(sid))
    to_cloud(ResponseHead(sid, 200, [("content-type", "application/x-ndjson")]))
    to_cloud(Data(sid, b"{}\n"))
    assert cloud.stream_ids == (sid,)
    assert bridge.stream_ids == (sid,)
    to_cloud(End(sid))
    assert not cloud.stream_ids
    assert not bridge.stream_ids


class TestBridgeReceiving:
    def test_data_for_a_stream_never_opened_is_fatal(self, bridge: Connection) -> None:
        err = fatal(bridge.receive, Data(1, b"x"))
        assert err.reason == "Data for stream 1, which was never opened"
        assert bridge.is_closed

    def test_open_with_a_live_id(self, bridge: Connection, open_stream: Opener) -> None:
        sid = open_stream()
        err = fatal(bridge.receive, Open(sid, "GET", "/", "", [], False))
        assert err.reason == "Open for stream 1, which is already open"

    def test_open_with_an_even_id(self, cloud: Connection, bridge: Connection) -> None:
        err = fatal(bridge.receive, Open(2, "GET", "/", "", [], False))
        assert err.reason == "Open with even stream id 2; the cloud opens odd ids"

    def test_open_with_a_decreasing_id(self, bridge: Connection, to_bridge: Relay) -> None:
        to_bridge(Open(5, "GET", "/", "", [], False))
        err = fatal(bridge.receive, Open(3, "GET", "/", "", [], False))
        assert err.reason == "Open with stream id 3, not above the previous 5"

    def test_skipped_ids_count_as_closed(self, bridge: Connection, to_bridge: Relay) -> None:
        to_bridge(Open(5, "GET", "/", "", [], False))
        err = stream_error(bridge.receive, Data(3, b"x"))
        assert err.reason == "Data for stream 3, which is closed"

    def test_open_after_go_away(self, bridge: Connection, to_bridge: Relay) -> None:
        to_bridge(GoAway("deploy", 5))
        err = fatal(bridge.receive, Open(1, "GET", "/", "", [], False))
        assert err.reason == "Open for stream 1 after GoAway"

    @pytest.mark.parametrize(
        ("method", "path", "query", "headers", "problem"),
        [
            ("GE T", "/", "", [], "invalid method"),
            ("GET", "api/tags", "", [], "invalid path: must start with '/'"),
            ("GET", "/a b", "", [], "invalid path"),
            ("GET", "/a?b", "", [], "invalid path"),
            ("GET", "/a", "x#y", [], "invalid query string"),
            ("GET", "/a", "", [("bad name", "v")], "invalid header name"),
            ("GET", "/a", "", [("x-a", "v\r\nInjected: 1")], "invalid value for header x-a"),
            ("GET", "/a", "", [("x-a", "v")] * 257, "more than 256 header fields"),
        ],
    )
    def test_malformed_open_fails_only_that_stream(
        self, method: str, path: str, query: str, headers: Headers, problem: str, bridge: Connection
    ) -> None:
        err = stream_error(bridge.receive, Open(1, method, path, query, headers, True))
        assert err.stream_id == 1
        assert err.code is ErrorCode.PROTOCOL
        assert err.reason.startswith(f"Open for stream 1: {problem}")
        assert bridge.stream_ids == ()
        # The id is used up, the connection carries on, and late Data for it is dropped quietly.
        assert bridge.receive(encode(Data(1, b"x"))) is None
        assert bridge.receive(encode(Open(3, "GET", "/", "", [], False))) is not None

    def test_stream_limit_refuses_the_stream(self, bridge: Connection, open_stream: Opener) -> None:
        for _ in range(3):
            open_stream()
        err = stream_error(bridge.receive, Open(7, "GET", "/", "", [], False))
        assert err.code is ErrorCode.REFUSED
        assert err.reason == "too many concurrent streams (limit 3)"
        assert bridge.stream_ids == (1, 3, 5)

    def test_data_after_end(self, bridge: Connection, to_bridge: Relay, open_stream: Opener) -> None:
        sid = open_stream()
        to_bridge(End(sid))
        err = stream_error(bridge.receive, Data(sid, b"late"))
        assert err.reason == "Data after the end of the body on stream 1"
        assert bridge.stream_ids == ()

    def test_data_for_a_request_without_body(self, bridge: Connection, open_stream: Opener) -> None:
        sid = open_stream(has_body=False)
        err = stream_error(bridge.receive, Data(sid, b"x"))
        assert err.reason == "Data after the end of the body on stream 1"

    def test_end_twice(self, bridge: Connection, to_bridge: Relay, open_stream: Opener) -> None:
        sid = open_stream()
        to_bridge(End(sid))
        assert stream_error(bridge.receive, End(sid)).reason == "End after the end of the body on stream 1"

    def test_cancel_from_the_cloud(
        self, cloud: Connection, bridge: Connection, to_bridge: Relay, open_stream: Opener
    ) -> None:
        sid = open_stream()
        assert to_bridge(Cancel(sid, "browser left")) == Cancel(sid, "browser left")
        assert bridge.stream_ids == ()
        assert cloud.stream_ids == ()
        # A Cancel for an ended stream, or a late one, is ignored; one for a stream never opened is not.
        assert bridge.receive(encode(Cancel(sid))) is None
        assert fatal(bridge.receive, Cancel(9)).reason == "Cancel for stream 9, which was never opened"


class TestCloudReceiving:
    def test_response_head_twice(self, cloud: Connection, to_cloud: Relay, open_stream: Opener) -> None:
        sid = open_stream()
        to_cloud(ResponseHead(sid, 200, []))
        err = stream_error(cloud.receive, ResponseHead(sid, 200, []))
        assert err.reason == "second ResponseHead on stream 1"

    def test_data_before_response_head(self, cloud: Connection, open_stream: Opener) -> None:
        sid = open_stream()
        assert stream_error(cloud.receive, Data(sid, b"x")).reason == "Data before ResponseHead on stream 1"

    def test_end_before_response_head(self, cloud: Connection, open_stream: Opener) -> None:
        sid = open_stream()
        assert stream_error(cloud.receive, End(sid)).reason == "End before ResponseHead on stream 1"

    @pytest.mark.parametrize("status", [0, 99, 600, -1])
    def test_bad_status(self, status: int, cloud: Connection, open_stream: Opener) -> None:
        sid = open_stream()
        err = stream_error(cloud.receive, ResponseHead(sid, status, []))
        assert err.reason == f"ResponseHead on stream 1: invalid status {status}"

    def test_response_for_a_stream_never_opened(self, cloud: Connection) -> None:
        err = fatal(cloud.receive, ResponseHead(1, 200, []))
        assert err.reason == "ResponseHead for stream 1, which was never opened"

    def test_frames_after_a_cancel_are_dropped(
        self, cloud: Connection, bridge: Connection, open_stream: Opener
    ) -> None:
        sid = open_stream()
        cloud.send(Cancel(sid, "browser left"))  # not yet delivered: the bridge keeps answering
        for frame in (ResponseHead(sid, 200, []), Data(sid, b"tok"), End(sid)):
            assert cloud.receive(bridge.send(frame)) is None
        assert cloud.receive(bridge.send(StreamError(sid, ErrorCode.TIMEOUT, "slow"))) is None

    def test_bridge_stream_error(self, cloud: Connection, to_cloud: Relay, open_stream: Opener) -> None:
        sid = open_stream()
        frame = to_cloud(StreamError(sid, ErrorCode.READ_ONLY, "DELETE refused"))
        assert isinstance(frame, StreamError)
        assert frame.error_code is ErrorCode.READ_ONLY
        assert cloud.stream_ids == ()

    def test_data_on_a_finished_stream(self, cloud: Connection, to_cloud: Relay, open_stream: Opener) -> None:
        sid = open_stream(has_body=False)
        to_cloud(ResponseHead(sid, 204, []))
        to_cloud(End(sid))
        err = stream_error(cloud.receive, Data(sid, b"x"))
        assert err.reason == "Data for stream 1, which is closed"
        # Having answered once, further late frames for it are dropped.
        assert cloud.receive(encode(Data(sid, b"x"))) is None


class TestSending:
    def test_cloud_must_use_increasing_odd_ids(self, cloud: Connection, open_stream: Opener) -> None:
        open_stream()
        for sid in (1, 2, 4, 2**31 + 1):
            with pytest.raises(LocalProtocolError, match=f"stream id {sid} is not valid here"):
                cloud.send(Open(sid, "GET", "/", "", [], False))
        assert cloud.next_stream_id == 3

    def test_cloud_respects_the_stream_limit(self, cloud: Connection, open_stream: Opener) -> None:
        for _ in range(3):
            open_stream()
        with pytest.raises(LocalProtocolError, match=r"too many concurrent streams \(limit 3\)") as info:
            cloud.send(Open(cloud.next_stream_id, "GET", "/", "", [], False))
        assert info.value.code is ErrorCode.REFUSED

    def test_cloud_cannot_open_after_go_away(self, cloud: Connection) -> None:
        cloud.send(GoAway("deploy", 1.0))
        assert cloud.going_away
        with pytest.raises(LocalProtocolError, match="cannot open streams after GoAway"):
            cloud.send(Open(1, "GET", "/", "", [], False))

    def test_cloud_cannot_send_a_bad_request_line(self, cloud: Connection) -> None:
        with pytest.raises(LocalProtocolError, match="Open: invalid path"):
            cloud.send(Open(1, "GET", "/x\n", "", [], False))
        assert cloud.next_stream_id == 1  # nothing was recorded

    def test_bridge_must_send_the_head_first(self, bridge: Connection, open_stream: Opener) -> None:
        sid = open_stream()
        with pytest.raises(LocalProtocolError, match="Data before ResponseHead on stream 1"):
            bridge.send(Data(sid, b"x"))
        with pytest.raises(LocalProtocolError, match="End before ResponseHead on stream 1"):
            bridge.send(End(sid))
        with pytest.raises(LocalProtocolError, match="ResponseHead: invalid status 999"):
            bridge.send(ResponseHead(sid, 999, []))
        bridge.send(ResponseHead(sid, 200, []))
        with pytest.raises(LocalProtocolError, match="ResponseHead was already sent on stream 1"):
            bridge.send(ResponseHead(sid, 200, []))

    def test_no_body_after_end(self, cloud: Connection, open_stream: Opener) -> None:
        sid = open_stream(has_body=False)
        with pytest.raises(LocalProtocolError, match="Data after the end of the body on stream 1"):
            cloud.send(Data(sid, b"x"))

    def test_sending_on_a_stream_the_peer_cancelled(
        self, bridge: Connection, to_bridge: Relay, open_stream: Opener
    ) -> None:
        sid = open_stream()
        to_bridge(Cancel(sid))
        with pytest.raises(StreamClosedError, match="ResponseHead on stream 1, which has ended"):
            bridge.send(ResponseHead(sid, 200, []))
        # Resetting an ended stream is allowed (harmless), resetting one never opened is not.
        bridge.send(StreamError(sid, ErrorCode.CANCELLED))
        with pytest.raises(LocalProtocolError, match="Cancel for stream 7, which was never opened"):
            bridge.send(Cancel(7))

    def test_credit_is_not_sent_by_hand(self, bridge: Connection, open_stream: Opener) -> None:
        sid = open_stream()
        with pytest.raises(LocalProtocolError, match=r"Credit of 10 bytes on stream 1 was not granted by consumed\(\)"):
            bridge.send(Credit(sid, 10))
        with pytest.raises(LocalProtocolError, match="Credit for stream 9, which was never opened"):
            bridge.send(Credit(9, 10))

    def test_credit_from_consumed_is_sent_once(
        self, cloud: Connection, bridge: Connection, to_bridge: Relay, open_stream: Opener
    ) -> None:
        sid = open_stream()
        to_bridge(Data(sid, b"x" * 600))
        credit = bridge.consumed(sid, 600)
        assert credit == Credit(sid, 600)
        assert cloud.receive(bridge.send(credit)) == credit
        with pytest.raises(LocalProtocolError, match="was not granted by consumed"):
            bridge.send(credit)  # the same grant twice would let the cloud overrun the window

    def test_credit_for_a_stream_that_ended_meanwhile_is_harmless(
        self, bridge: Connection, to_bridge: Relay, open_stream: Opener
    ) -> None:
        sid = open_stream()
        to_bridge(Data(sid, b"x" * 600))
        credit = bridge.consumed(sid, 600)
        assert credit is not None
        to_bridge(Cancel(sid))
        assert bridge.send(credit)  # encoded: the peer drops Credit for an ended stream

    def test_frames_of_the_other_side(self, cloud: Connection, bridge: Connection) -> None:
        with pytest.raises(LocalProtocolError, match="Open frames are not sent by the bridge"):
            bridge.send(Open(1, "GET", "/", "", [], False))
        with pytest.raises(LocalProtocolError, match="only the cloud opens streams"):
            _ = bridge.next_stream_id

    def test_frame_too_large_to_send(self, cloud: Connection) -> None:
        with pytest.raises(LocalProtocolError, match=r"Open frame of \d+ bytes exceeds max_frame_bytes=4096"):
            cloud.send(Open(1, "GET", "/" + "a" * 5000, "", [], False))

    def test_connection_close_ends_every_stream(
        self, bridge: Connection, to_bridge: Relay, open_stream: Opener
    ) -> None:
        a, b = open_stream(), open_stream()
        to_bridge(Data(a, b"x" * 10))
        assert bridge.buffered_bytes == 10
        assert bridge.close(reason="websocket closed") == [a, b]
        assert bridge.stream_ids == ()
        assert bridge.buffered_bytes == 0
