"""Hop-by-hop header fields are dropped, and so is every field the Connection header names."""

from __future__ import annotations

from cloudtolocalllm.protocol.hop_by_hop import HOP_BY_HOP, drop_hop_by_hop


def test_rfc_9110_fields_and_the_old_lists_are_all_there() -> None:
    rfc_9110 = {"connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade"}
    old_cloud = {"proxy-authenticate", "proxy-authorization", "proxy-connection", "trailer"}
    old_bridge = {"trailer", "trailers"}
    assert rfc_9110 | old_cloud | old_bridge == HOP_BY_HOP


def test_str_pairs_lose_hop_by_hop_and_connection_named_fields() -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("Connection", "keep-alive, X-Private , ,x-other"),
        ("Keep-Alive", "timeout=5"),
        ("X-Private", "1"),
        ("x-other", "2"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "h2c"),
        ("Content-Length", "12"),
    ]
    assert drop_hop_by_hop(headers) == [("Content-Type", "application/json"), ("Content-Length", "12")]


def test_bytes_pairs_keep_their_type_and_also_drops_more() -> None:
    raw = [(b"host", b"cloud"), (b"connection", b"close"), (b"accept", b"*/*"), (b"Authorization", b"Bearer x")]
    assert drop_hop_by_hop(raw, also=frozenset({"host", "authorization"})) == [(b"accept", b"*/*")]


def test_the_fields_every_connection_field_names_are_dropped() -> None:
    raw = [(b"Connection", b"A, b"), (b"a", b"1"), (b"B", b"2"), (b"connection", b"C"), (b"c", b"3"), (b"X", b"d")]
    assert drop_hop_by_hop(raw) == [(b"X", b"d")]


def test_a_field_the_connection_header_does_not_name_is_kept() -> None:
    assert drop_hop_by_hop([("X-Private", "1")]) == [("X-Private", "1")]
