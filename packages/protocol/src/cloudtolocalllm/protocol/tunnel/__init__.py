"""The tunnel runtime: one async shell around the sans-IO protocol ``Connection``, used by both ends.

- ``transport``: what a WebSocket must offer (adapters: ``websockets_transport`` for the bridge,
  ``asgi_transport`` for the cloud; import those modules directly: they need the `websockets` or `asgi`
  extra);
- ``handshake``: Hello -> Welcome, the client and server roles;
- ``runtime``: :class:`Tunnel`, the reader, dispatch, heartbeat and streams of one connection;
- ``writer``: the one writer, with a control lane that never waits behind body bytes;
- ``stream``: :class:`TunnelStream`, one stream's inbound body (consumption becomes Credit) and outbound
  body (credit-paced).

Standard library and the protocol only, like ``cloudtolocalllm.protocol``.
"""

from cloudtolocalllm.protocol.tunnel.handshake import HandshakeFailed, accept_hello, greet, send_welcome
from cloudtolocalllm.protocol.tunnel.runtime import Heartbeat, Tunnel
from cloudtolocalllm.protocol.tunnel.stream import COALESCE_BYTES, StreamFailed, TunnelStream
from cloudtolocalllm.protocol.tunnel.transport import MessageTransport, TransportClosed
from cloudtolocalllm.protocol.tunnel.writer import DEFAULT_HIGH_WATER, Writer

__all__ = [
    "COALESCE_BYTES",
    "DEFAULT_HIGH_WATER",
    "HandshakeFailed",
    "Heartbeat",
    "MessageTransport",
    "StreamFailed",
    "TransportClosed",
    "Tunnel",
    "TunnelStream",
    "Writer",
    "accept_hello",
    "greet",
    "send_welcome",
]
