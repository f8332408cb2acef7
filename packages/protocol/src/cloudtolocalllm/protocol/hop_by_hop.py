"""Hop-by-hop header fields: they describe one connection, so no relay passes them on.

Every hop of the tunnel (client -> cloud, cloud -> replica, bridge -> backend and the answers back) drops
them with :func:`drop_hop_by_hop`, which takes raw ``bytes`` pairs (ASGI, aiohttp's ``raw_headers``) as
well as ``str`` pairs (the protocol's Headers) and keeps the type it is given.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import AnyStr, Final

__all__ = ["HOP_BY_HOP", "drop_hop_by_hop"]

HOP_BY_HOP: Final = frozenset(
    {
        # RFC 9110 §7.6.1: Connection itself and the fields it lists as examples.
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        # RFC 2616 §13.5.1's list: credentials for one proxy, and the trailers of a chunked body this hop
        # decodes ("trailers" is that RFC's spelling, "trailer" the field's real name).
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
        "trailers",
    }
)


def _lower(name: str | bytes) -> str:
    return name.decode("latin-1").lower() if isinstance(name, bytes) else name.lower()


_NONE: Final[frozenset[str]] = frozenset()


def _listed(values: list[AnyStr]) -> frozenset[str]:
    """The lower-case field names the ``Connection:`` values list: hop-by-hop too (RFC 9110 §7.6.1)."""
    if not values:
        return _NONE
    return frozenset(token for value in values for part in _lower(value).split(",") if (token := part.strip()))


def drop_hop_by_hop(
    headers: Iterable[tuple[AnyStr, AnyStr]], *, also: Collection[str] = ()
) -> list[tuple[AnyStr, AnyStr]]:
    """``headers`` without hop-by-hop fields, those ``Connection:`` lists, and the lower-case names ``also``."""
    # Each name is lowered once; this runs on every hop of the relay's hot path, both ways.
    named = [(_lower(name), name, value) for name, value in headers]
    listed = _listed([value for lower, _, value in named if lower == "connection"])
    return [
        (name, value)
        for lower, name, value in named
        if lower not in HOP_BY_HOP and lower not in also and lower not in listed
    ]
