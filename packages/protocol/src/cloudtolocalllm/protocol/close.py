"""WebSocket close codes (private-use range 4000-4999) and their human reasons.

A close reason travels in the WebSocket close frame, whose payload is at most 125 bytes: two for the code,
so at most 123 bytes of UTF-8 for the reason. Every reason built here is clipped to fit, because a peer
that gets a too-long reason fails the close handshake and the user sees a bare 1006 instead of the text.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "CLOSE_REASONS",
    "MAX_CLOSE_REASON_BYTES",
    "CloseCode",
    "clip_reason",
    "close_reason",
    "should_reconnect",
    "version_mismatch_reason",
]

MAX_CLOSE_REASON_BYTES = 123


class CloseCode(IntEnum):
    """Why the cloud or the bridge closed the tunnel WebSocket."""

    UNAUTHORIZED = 4001
    """The bearer token is invalid or expired (also: a Reauth was refused)."""
    VERSION_INCOMPATIBLE = 4002
    """The peers speak different major protocol versions."""
    PROTOCOL_VIOLATION = 4003
    """The peer sent garbage, a frame out of order, or broke a connection-wide rule."""
    FRAME_TOO_LARGE = 4004
    """A frame exceeded the negotiated max_frame_bytes."""
    HEARTBEAT_TIMEOUT = 4005
    """No Pong (or any frame) came back within the heartbeat deadline."""
    REAUTH_DEADLINE = 4006
    """The token expired and the bridge did not send a Reauth in time."""
    REPLACED = 4007
    """The same bridge connected again; the older connection is closed."""
    GOING_AWAY = 4008
    """The server is shutting down or draining (deploys); reconnect, honouring any GoAway hint."""


CLOSE_REASONS: dict[CloseCode, str] = {
    CloseCode.UNAUTHORIZED: "bridge token is invalid or expired; sign in again",
    CloseCode.VERSION_INCOMPATIBLE: "bridge protocol version not supported by the cloud; upgrade the bridge",
    CloseCode.PROTOCOL_VIOLATION: "protocol violation",
    CloseCode.FRAME_TOO_LARGE: "frame larger than the negotiated max_frame_bytes",
    CloseCode.HEARTBEAT_TIMEOUT: "heartbeat timeout: no answer from the peer in time",
    CloseCode.REAUTH_DEADLINE: "token expired without a reauth; reconnect with a fresh token",
    CloseCode.REPLACED: "replaced by a newer connection from the same bridge",
    CloseCode.GOING_AWAY: "server going away; reconnect shortly",
}

# Codes after which redialling at once cannot help: the user must act (upgrade, sign in) or another
# instance of the bridge owns the slot now (redialling would make the two fight over it forever).
_NO_RECONNECT = frozenset({CloseCode.UNAUTHORIZED, CloseCode.VERSION_INCOMPATIBLE, CloseCode.REPLACED})


def clip_reason(text: str) -> str:
    """Clip ``text`` to MAX_CLOSE_REASON_BYTES of UTF-8 without splitting a character."""
    raw = text.encode()
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return text
    return raw[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


def close_reason(code: CloseCode, detail: str | None = None) -> str:
    """The standard reason for ``code``, optionally followed by a short detail, clipped to fit."""
    base = CLOSE_REASONS[code]
    return clip_reason(f"{base}: {detail}" if detail else base)


def version_mismatch_reason(bridge_version: int, cloud_version: int) -> str:
    """A close reason naming both protocol versions and telling the user what to do about it."""
    if bridge_version < cloud_version:
        text = f"bridge speaks protocol v{bridge_version}, cloud needs v{cloud_version}: upgrade the bridge"
    else:
        text = (
            f"bridge speaks protocol v{bridge_version}, cloud speaks v{cloud_version}: "
            "install the bridge release that matches this cloud"
        )
    return clip_reason(text)


def should_reconnect(code: int) -> bool:
    """Whether a bridge should redial (with backoff) after the cloud closed with ``code``.

    False for UNAUTHORIZED (redial only once a fresh token is at hand), VERSION_INCOMPATIBLE (the user
    must upgrade) and REPLACED (another instance of this bridge took over). Any other code, including
    standard ones such as 1001/1006/1011, is worth a retry.
    """
    return code not in _NO_RECONNECT
