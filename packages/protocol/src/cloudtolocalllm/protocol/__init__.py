"""The bridge wire protocol: frames, codec, close codes and the sans-IO connection state machine.

Both ends of the tunnel import this package (it depends on msgspec and the standard library only). One
frame travels per binary WebSocket message, encoded as MessagePack (see ``frames``). A typical loop::

    conn = Connection(Role.BRIDGE)
    await ws.send_bytes(conn.send(Hello(PROTOCOL_VERSION, bridge_id, name, version, platform,
                                        BackendKind.OLLAMA, True, models)))
    async for message in ws:
        frame = conn.receive(message)       # raises ProtocolError subclasses, see ``connection``
        ...

What both ends know about the HTTP they relay is imported from its own module: ``routes`` (the table of
Ollama and OpenAI paths), ``hop_by_hop`` (header fields no hop passes on) and ``models`` (model names as
Ollama compares them).
"""

from cloudtolocalllm.protocol.close import (
    CLOSE_REASONS,
    MAX_CLOSE_REASON_BYTES,
    CloseCode,
    clip_reason,
    close_reason,
    should_reconnect,
    version_mismatch_reason,
)
from cloudtolocalllm.protocol.codec import decode, encode, encode_batch, peek_version
from cloudtolocalllm.protocol.connection import Connection, Role
from cloudtolocalllm.protocol.errors import (
    ConnectionProtocolError,
    ErrorCode,
    FrameDecodeError,
    FrameTooLargeError,
    LocalProtocolError,
    ProtocolError,
    StreamClosedError,
    StreamProtocolError,
    VersionMismatchError,
)
from cloudtolocalllm.protocol.frames import (
    DATA_FRAME_OVERHEAD,
    DEFAULT_FRAME_PAYLOAD,
    DEFAULT_LIMITS,
    HANDSHAKE_MAX_FRAME_BYTES,
    MAX_STREAM_ID,
    MAX_WINDOW,
    BackendKind,
    Batch,
    BridgeStatus,
    Cancel,
    Credit,
    Data,
    End,
    Frame,
    GoAway,
    Headers,
    Hello,
    Limits,
    Open,
    Ping,
    Pong,
    Reauth,
    ReauthOk,
    ResponseHead,
    StreamError,
    StreamFrame,
    Welcome,
)
from cloudtolocalllm.protocol.version import (
    BATCH,
    FEATURES,
    PROTOCOL_VERSION,
    agreed_features,
    check_compatible,
    is_compatible,
)

__all__ = [
    "BATCH",
    "CLOSE_REASONS",
    "DATA_FRAME_OVERHEAD",
    "DEFAULT_FRAME_PAYLOAD",
    "DEFAULT_LIMITS",
    "FEATURES",
    "HANDSHAKE_MAX_FRAME_BYTES",
    "MAX_CLOSE_REASON_BYTES",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "PROTOCOL_VERSION",
    "BackendKind",
    "Batch",
    "BridgeStatus",
    "Cancel",
    "CloseCode",
    "Connection",
    "ConnectionProtocolError",
    "Credit",
    "Data",
    "End",
    "ErrorCode",
    "Frame",
    "FrameDecodeError",
    "FrameTooLargeError",
    "GoAway",
    "Headers",
    "Hello",
    "Limits",
    "LocalProtocolError",
    "Open",
    "Ping",
    "Pong",
    "ProtocolError",
    "Reauth",
    "ReauthOk",
    "ResponseHead",
    "Role",
    "StreamClosedError",
    "StreamError",
    "StreamFrame",
    "StreamProtocolError",
    "VersionMismatchError",
    "Welcome",
    "agreed_features",
    "check_compatible",
    "clip_reason",
    "close_reason",
    "decode",
    "encode",
    "encode_batch",
    "is_compatible",
    "peek_version",
    "should_reconnect",
    "version_mismatch_reason",
]
