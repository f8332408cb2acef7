"""The two ends of the tunnel as test doubles, each for testing the other real end: the fake cloud
(``fake_cloud``) for the bridge's tests, the fake bridge (``fake_bridge``) for api-backend's.

Both run the real tunnel runtime (``cloudtolocalllm.protocol.tunnel``) and keep only the scripting a test
needs, plus a way to misbehave on purpose (``wire_tap``, raw bytes). The `peers` extra installs what they
import (the protocol's `websockets` adapter).
"""

from cloudtolocalllm.devkit.peers.fake_bridge import FakeBridge, Handler, Reply, chunks_of, echo_handler
from cloudtolocalllm.devkit.peers.fake_cloud import SMALL_LIMITS, CloudLink, CloudStream, FakeCloud
from cloudtolocalllm.devkit.peers.wire_tap import WireTap

__all__ = [
    "SMALL_LIMITS",
    "CloudLink",
    "CloudStream",
    "FakeBridge",
    "FakeCloud",
    "Handler",
    "Reply",
    "WireTap",
    "chunks_of",
    "echo_handler",
]
