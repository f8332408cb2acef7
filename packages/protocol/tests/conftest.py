"""Fixtures shared by the protocol tests: a cloud and a bridge Connection that have shaken hands."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloudtolocalllm.protocol import (
    PROTOCOL_VERSION,
    BackendKind,
    Connection,
    Frame,
    Hello,
    Limits,
    Open,
    Role,
    Welcome,
)

SMALL_LIMITS = Limits(max_frame_bytes=4096, initial_window=1000, max_concurrent_streams=3)


def make_hello(version: int = PROTOCOL_VERSION) -> Hello:
    return Hello(version, "bridge-1", "home pc", "0.1.0", "linux", BackendKind.OLLAMA, True, ["llama3"])


def make_welcome(limits: Limits = SMALL_LIMITS, version: int = PROTOCOL_VERSION) -> Welcome:
    return Welcome(version, "session-1", 20.0, limits, token_expires_at=1_900_000_000.0)


class Pair:
    """A handshaken cloud/bridge pair that passes frames through real encoding."""

    def __init__(self, limits: Limits = SMALL_LIMITS) -> None:
        self.cloud = Connection(Role.CLOUD)
        self.bridge = Connection(Role.BRIDGE)
        self.cloud.receive(self.bridge.send(make_hello()))
        self.bridge.receive(self.cloud.send(make_welcome(limits)))

    def to_bridge(self, frame: Frame) -> Frame | None:
        return self.bridge.receive(self.cloud.send(frame))

    def to_cloud(self, frame: Frame) -> Frame | None:
        return self.cloud.receive(self.bridge.send(frame))

    def open(self, *, has_body: bool = True, path: str = "/api/chat") -> int:
        sid = self.cloud.next_stream_id
        self.to_bridge(Open(sid, "POST", path, "", [("content-type", "application/json")], has_body))
        return sid


Relay = Callable[[Frame], "Frame | None"]
Opener = Callable[..., int]


@pytest.fixture
def pair() -> Pair:
    return Pair()


@pytest.fixture
def cloud(pair: Pair) -> Connection:
    """The cloud end of a handshaken pair (limits: SMALL_LIMITS)."""
    return pair.cloud


@pytest.fixture
def bridge(pair: Pair) -> Connection:
    """The bridge end of the same pair."""
    return pair.bridge


@pytest.fixture
def to_bridge(pair: Pair) -> Relay:
    """Send a frame from the cloud and feed its bytes to the bridge."""
    return pair.to_bridge


@pytest.fixture
def to_cloud(pair: Pair) -> Relay:
    """Send a frame from the bridge and feed its bytes to the cloud."""
    return pair.to_cloud


@pytest.fixture
def open_stream(pair: Pair) -> Opener:
    """Open the next stream (keyword args: has_body, path) and return its id."""
    return pair.open


@pytest.fixture
def hello() -> Hello:
    return make_hello()


@pytest.fixture
def welcome() -> Welcome:
    return make_welcome()


@pytest.fixture
def handshake() -> Callable[[Limits], tuple[Connection, Connection]]:
    """Build a (cloud, bridge) pair that shook hands with the given limits."""

    def build(limits: Limits) -> tuple[Connection, Connection]:
        built = Pair(limits)
        return built.cloud, built.bridge

    return build
