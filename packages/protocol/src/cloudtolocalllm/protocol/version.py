"""The protocol's major version and the compatibility rule.

Evolution rule: within one PROTOCOL_VERSION, frames may only gain *optional trailing* fields (older
decoders ignore extra trailing array elements, newer ones fill in the default) and ErrorCode may gain
values. A new frame kind or behaviour may come as a *feature*: the bridge lists the features it knows in
its Hello, the cloud turns on the ones it knows too in its Welcome, and neither side uses one the Welcome
did not name, so peers of either age keep working. Anything else (a removed or retyped field, new
semantics for everyone) bumps the version.
Hello (tag 1) and Welcome (tag 2) keep ``version`` as their first field forever, so a peer can always read
the other side's version and explain a mismatch instead of failing with a decode error.
"""

from __future__ import annotations

from typing import Literal

from cloudtolocalllm.protocol.errors import VersionMismatchError

__all__ = ["BATCH", "FEATURES", "PROTOCOL_VERSION", "agreed_features", "check_compatible", "is_compatible"]

PROTOCOL_VERSION = 1

BATCH = "batch"
"""Feature: several frames may share one WebSocket message (``frames.Batch``)."""
FEATURES: tuple[str, ...] = (BATCH,)
"""The features this implementation knows, in the order a Hello lists them."""


def agreed_features(offered: list[str]) -> list[str]:
    """The features of a Hello's ``offered`` list that this side knows too: the Welcome's list."""
    return [feature for feature in FEATURES if feature in offered]


def is_compatible(peer_version: int) -> bool:
    """Whether a peer announcing ``peer_version`` can talk to this implementation."""
    return peer_version == PROTOCOL_VERSION


def check_compatible(peer_version: int, *, peer: Literal["bridge", "cloud"]) -> None:
    """Raise VersionMismatchError (close code VERSION_INCOMPATIBLE) unless ``peer_version`` is compatible.

    ``peer`` says which side announced ``peer_version``, so the reason names the bridge's and the cloud's
    version the right way round.
    """
    if not is_compatible(peer_version):
        raise mismatch_error(peer_version, peer=peer)


def mismatch_error(peer_version: int, *, peer: Literal["bridge", "cloud"]) -> VersionMismatchError:
    """The error for a peer announcing ``peer_version``, with bridge and cloud versions placed right."""
    if peer == "bridge":
        return VersionMismatchError(bridge_version=peer_version, cloud_version=PROTOCOL_VERSION)
    return VersionMismatchError(bridge_version=PROTOCOL_VERSION, cloud_version=peer_version)
