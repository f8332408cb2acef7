"""Hypothesis fuzzing of the Connection state machine.

1. Hostile peer: random (often invalid) frames and bytes, mixed with the application's own calls, must
   only ever yield frames, None or ProtocolError, and buffered bytes stay within the windows.
2. Two honest peers over a link that delivers in order but at random moments: whatever one side's
   send() accepts, the other side's receive() accepts, even with cancels racing in-flight frames.
"""

from __future__ import annotations

from collections import deque
from contextlib import suppress

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cloudtolocalllm.protocol import (
    PROTOCOL_VERSION,
    BackendKind,
    BridgeStatus,
    Cancel,
    Connection,
    ConnectionProtocolError,
    Credit,
    Data,
    End,
    ErrorCode,
    Frame,
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
    StreamError,
    StreamProtocolError,
    Welcome,
    encode,
)

LIMITS = Limits(max_frame_bytes=4096, initial_window=64, max_concurrent_streams=3)
BOUND = LIMITS.max_concurrent_streams * LIMITS.initial_window
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HELLO = Hello(PROTOCOL_VERSION, "b", "n", "1", "linux", BackendKind.OLLAMA, True, ["m"])
WELCOME = Welcome(PROTOCOL_VERSION, "s", 15.0, LIMITS)

sids = st.integers(1, 9)
payloads = st.binary(max_size=80)


def stream_frames(ids: st.SearchStrategy[int]) -> st.SearchStrategy[Frame]:
    """Stream frames, valid and not, for the stream ids ``ids`` draws."""
    return st.one_of(
        st.builds(
            Open,
            ids,
            st.sampled_from(["GET", "POST", "B AD"]),
            st.sampled_from(["/api/chat", "x"]),
            st.just(""),
            st.just([("a", "b")]),
            st.booleans(),
        ),
        st.builds(ResponseHead, ids, st.sampled_from([200, 404, 42]), st.just([])),
        st.builds(Data, ids, payloads),
        st.builds(End, ids),
        st.builds(Credit, ids, st.integers(0, 100)),
        st.builds(Cancel, ids, st.just("bye")),
        st.builds(StreamError, ids, st.sampled_from(ErrorCode).map(str), st.just("oops")),
    )


any_frame: st.SearchStrategy[Frame] = st.one_of(
    stream_frames(sids),
    st.sampled_from(
        [HELLO, WELCOME, Ping(1), Pong(1), Reauth("t"), ReauthOk(), BridgeStatus(False, []), GoAway("x", 1.0)]
    ),
    st.builds(
        Hello,
        st.integers(0, 3),
        *[st.just(v) for v in ("b", "n", "1", "l")],
        st.just(BackendKind.OPENAI),
        st.booleans(),
        st.just([]),
    ),
)


def check_invariants(conn: Connection) -> None:
    assert 0 <= conn.buffered_bytes <= BOUND
    assert len(conn.stream_ids) <= LIMITS.max_concurrent_streams


# Weighted: mostly frames for live streams, so runs get past the first fatal error and reach the
# per-stream rules; sometimes frames for any id and the application's own calls. Raw bytes come last.
ACTIONS = [
    "open",
    "open",
    "stream",
    "stream",
    "stream",
    "stream",
    "frame",
    "bytes",
    "consume",
    "consume",
    "send",
]


def receive(conn: Connection, message: bytes, unconsumed: dict[int, int]) -> bool:
    """Feed one message as an application would; False once the connection has failed."""
    stream_error: StreamProtocolError | None = None
    fatal: ConnectionProtocolError | None = None
    frame: Frame | None = None
    try:
        frame = conn.receive(message)
    except StreamProtocolError as exc:
        stream_error = exc
    except ConnectionProtocolError as exc:
        fatal = exc
    if fatal is not None:
        event(f"fatal: {fatal.reason.split(' ')[0]}")
        assert conn.is_closed
        assert fatal.close_code is not None
        assert conn.buffered_bytes == 0
        return False
    if stream_error is not None:
        event(f"stream error: {stream_error.code}")
        assert not conn.is_closed
        assert stream_error.reply.stream_id == stream_error.stream_id
        unconsumed.pop(stream_error.stream_id, None)
    elif isinstance(frame, Data):
        unconsumed[frame.stream_id] = unconsumed.get(frame.stream_id, 0) + len(frame.payload)
    elif isinstance(frame, Cancel | StreamError):
        unconsumed.pop(frame.stream_id, None)
    return True


@FUZZ
@given(st.sampled_from(Role), st.integers(0, 3).map(bool), st.data())
def test_hostile_peer(role: Role, handshaken: bool, data: st.DataObject) -> None:
    conn = Connection(role)
    if handshaken and role is Role.CLOUD:
        conn.receive(encode(HELLO))
        conn.send(WELCOME)
    elif handshaken:
        conn.receive(encode(WELCOME))
    unconsumed: dict[int, int] = {}  # what the application holds, per stream
    next_open = -1
    for _ in range(data.draw(st.integers(0, 60))):
        action = data.draw(st.sampled_from(ACTIONS))
        if action == "open" and conn.is_ready:
            # Valid Opens keep streams alive, so the other actions reach the per-stream rules.
            if role is Role.BRIDGE:
                next_open += 2 * data.draw(st.integers(1, 2))
                opened = Open(next_open, "GET", "/api/tags", "", [], data.draw(st.booleans()))
                if not receive(conn, encode(opened), unconsumed):
                    return
            else:
                with suppress(LocalProtocolError):
                    conn.send(Open(conn.next_stream_id, "GET", "/api/tags", "", [], True))
        elif action == "stream" and conn.stream_ids:
            sid = data.draw(st.sampled_from(conn.stream_ids))
            if not receive(conn, encode(data.draw(stream_frames(st.just(sid)))), unconsumed):
                return
        elif action == "frame":
            if not receive(conn, encode(data.draw(any_frame)), unconsumed):
                return
        elif action == "consume":
            sid = data.draw(sids)
            n = min(data.draw(st.integers(0, 80)), unconsumed.get(sid, 0))
            credit = conn.consumed(sid, n)  # must never raise for bytes the application really holds
            unconsumed[sid] = unconsumed.get(sid, 0) - n
            assert credit is None or credit.increment >= LIMITS.initial_window // 2
        else:
            frame = data.draw(any_frame)
            try:
                conn.send(frame)
            except LocalProtocolError:
                continue
            if isinstance(frame, Cancel | StreamError):
                unconsumed.pop(frame.stream_id, None)
        check_invariants(conn)
    if data.draw(st.booleans()):
        receive(conn, data.draw(st.binary(max_size=20)), unconsumed)
        check_invariants(conn)


class Link:
    """Two connections joined by in-order queues; each delivery happens when the test says so."""

    def __init__(self) -> None:
        self.cloud = Connection(Role.CLOUD)
        self.bridge = Connection(Role.BRIDGE)
        self.to_cloud: deque[bytes] = deque()
        self.to_bridge: deque[bytes] = deque()
        self.unconsumed: dict[Role, dict[int, int]] = {Role.CLOUD: {}, Role.BRIDGE: {}}
        self.to_cloud.append(self.bridge.send(HELLO))

    def side(self, role: Role) -> tuple[Connection, deque[bytes], deque[bytes]]:
        """(connection, its inbox, its outbox)."""
        if role is Role.CLOUD:
            return self.cloud, self.to_cloud, self.to_bridge
        return self.bridge, self.to_bridge, self.to_cloud

    def deliver(self, role: Role) -> None:
        conn, inbox, outbox = self.side(role)
        if not inbox:
            return
        frame = conn.receive(inbox.popleft())  # an honest peer never triggers a ProtocolError
        held = self.unconsumed[role]
        if isinstance(frame, Hello):
            outbox.append(conn.send(WELCOME))
        elif isinstance(frame, Data):
            held[frame.stream_id] = held.get(frame.stream_id, 0) + len(frame.payload)
        elif isinstance(frame, Ping):
            outbox.append(conn.send(Pong(frame.nonce)))

    def consume(self, role: Role, sid: int, n: int) -> None:
        conn, _, outbox = self.side(role)
        held = self.unconsumed[role]
        n = min(n, held.get(sid, 0))
        held[sid] = held.get(sid, 0) - n
        credit = conn.consumed(sid, n)
        if credit is not None:
            outbox.append(encode(credit))

    def attempt(self, role: Role, frame: Frame) -> None:
        conn, _, outbox = self.side(role)
        try:
            outbox.append(conn.send(frame))
        except LocalProtocolError as exc:
            event(f"{role} refused {type(frame).__name__}: {type(exc).__name__}")
            return  # the application asked for something illegal right now; nothing was recorded
        event(f"{role} sent {type(frame).__name__}")
        if isinstance(frame, End) and not conn.stream_ids:
            event("a stream completed")


def frame_for(role: Role, kind: int, sid: int, size: int, conn: Connection) -> Frame:
    """A frame an application on ``role`` might plausibly try to send next."""
    if kind == 0 and role is Role.CLOUD and conn.is_ready:
        return Open(conn.next_stream_id, "POST", "/api/chat", "", [("a", "b")], size % 2 == 0)
    if kind == 0:
        return ResponseHead(sid, 200, [])
    if kind == 1:
        window = conn.send_window(sid) if sid in conn.stream_ids else size
        return Data(sid, b"d" * min(size, window))
    if kind == 2:
        return End(sid)
    if kind == 3:
        return Cancel(sid, "gone") if role is Role.CLOUD else StreamError(sid, ErrorCode.TIMEOUT, "slow")
    return Ping(size)


# Mostly the frames that move a stream forward (0 Open/ResponseHead, 1 Data, 2 End); 3 reset, 4 Ping.
KINDS = [0, 0, 1, 1, 1, 1, 2, 2, 3, 4]


@settings(FUZZ, max_examples=100)  # each example runs up to 80 steps on two connections
@given(st.data())
def test_honest_peers_never_trip_each_other(data: st.DataObject) -> None:
    link = Link()
    for _ in range(data.draw(st.integers(20, 80))):
        action = data.draw(st.sampled_from(["deliver", "deliver", "consume", "send"]))
        role = data.draw(st.sampled_from(Role))
        live = link.side(role)[0].stream_ids
        sid = data.draw(st.sampled_from(live)) if live else 1
        if action == "deliver":
            link.deliver(role)
        elif action == "consume":
            link.consume(role, sid, data.draw(st.integers(0, 64)))
        else:
            conn = link.side(role)[0]
            kind, size = data.draw(st.sampled_from(KINDS)), data.draw(st.integers(0, 70))
            link.attempt(role, frame_for(role, kind, sid, size, conn))
        check_invariants(link.cloud)
        check_invariants(link.bridge)
    # Drain the link: everything in flight must still be accepted.
    while link.to_cloud or link.to_bridge:
        link.deliver(Role.CLOUD)
        link.deliver(Role.BRIDGE)
    assert not link.cloud.is_closed
    assert not link.bridge.is_closed
    # The cloud never believes fewer streams are open than the bridge does.
    assert set(link.bridge.stream_ids) <= set(link.cloud.stream_ids)
