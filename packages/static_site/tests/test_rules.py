"""The pure rules, table by table: cache policy, content types, content negotiation, validators, ranges."""

from __future__ import annotations

import pytest

from cloudtolocalllm.static_site.cache import IMMUTABLE, NO_CACHE, cache_control
from cloudtolocalllm.static_site.content_types import content_type, is_compressible
from cloudtolocalllm.static_site.negotiation import acceptable_codings, accepts_html
from cloudtolocalllm.static_site.validators import (
    UNSATISFIABLE,
    etag_for,
    http_date,
    if_range_allows,
    not_modified,
    parse_range,
)

SHORT = "public, max-age=300"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("app.3f2a9c1b.js", IMMUTABLE),
        ("main.9f8e7d6c5b.css", IMMUTABLE),
        ("chunk.123.ABCDEF0123.js", IMMUTABLE),
        ("3f2a9c1b.js", IMMUTABLE),
        ("app.3f2a9c1b.js.gz", IMMUTABLE),
        # unhashed bundles: the earlier edge gave these a year by mistake
        ("app.js", SHORT),
        ("main.dart.js", SHORT),
        ("flutter_bootstrap.js", SHORT),
        ("app.3f2a9c1.js", SHORT),  # 7 hex characters: not a hash
        ("app-3f2a9c1b.js", SHORT),  # not dot-separated
        ("app.3f2a9c1g.js", SHORT),  # not hex
        ("report.20240101.pdf", SHORT),  # a date is all digits, not a hash
        ("3f2a9c1b", SHORT),  # no extension: the whole name is not a segment before one
        ("logo.png", SHORT),
        # revalidated on every use, even when a hash-like segment is present
        ("index.html", NO_CACHE),
        ("guide.htm", NO_CACHE),
        ("index.3f2a9c1b.html", NO_CACHE),
        ("version.json", NO_CACHE),
        ("manifest.json", NO_CACHE),
        ("asset-manifest.json", NO_CACHE),
        ("site.webmanifest", NO_CACHE),
        ("manifest.3f2a9c1b.webmanifest", NO_CACHE),
        ("flutter_service_worker.js", NO_CACHE),
        ("sw.js", NO_CACHE),
        ("service-worker.js", NO_CACHE),
    ],
)
def test_cache_policy(name: str, expected: str) -> None:
    assert cache_control(name, max_age=300) == expected


def test_short_max_age_is_configurable() -> None:
    assert cache_control("app.js", max_age=60) == "public, max-age=60"


@pytest.mark.parametrize(
    ("name", "expected", "compressible"),
    [
        ("index.html", "text/html; charset=utf-8", True),
        ("style.css", "text/css; charset=utf-8", True),
        ("app.js", "text/javascript; charset=utf-8", True),
        ("mod.mjs", "text/javascript; charset=utf-8", True),
        ("app.wasm", "application/wasm", True),
        ("data.json", "application/json; charset=utf-8", True),
        ("app.js.map", "application/json; charset=utf-8", True),
        ("site.webmanifest", "application/manifest+json; charset=utf-8", True),
        ("logo.svg", "image/svg+xml; charset=utf-8", True),
        ("notes.txt", "text/plain; charset=utf-8", True),
        ("bridge_0.1.0_amd64.deb", "application/vnd.debian.binary-package", False),
        ("bridge-0.1.0-py3-none-any.whl", "application/octet-stream", False),
        ("bridge_0.1.0_amd64.deb.sha256", "text/plain; charset=utf-8", True),
        ("logo.png", "image/png", False),
        ("font.woff2", "font/woff2", False),
        ("archive.tar.gz", "application/gzip", False),
        ("LOGO.PNG", "image/png", False),
        ("Makefile", "application/octet-stream", False),
        ("unknown.qqq", "application/octet-stream", False),
    ],
)
def test_content_types(name: str, expected: str, compressible: bool) -> None:
    assert content_type(name) == expected
    assert is_compressible(name) is compressible


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ()),
        ("", ()),
        ("identity", ()),
        ("gzip", ("gzip",)),
        ("gzip, deflate, br, zstd", ("br", "gzip")),  # equal q: brotli first
        ("GZip, BR", ("br", "gzip")),
        ("x-gzip", ("gzip",)),
        ("br;q=0, gzip", ("gzip",)),
        ("br;q=0.0, gzip;q=0.000", ()),
        ("gzip;q=1.0, br;q=0.5", ("gzip", "br")),
        ("gzip;q=0.8, br;q=0.9", ("br", "gzip")),
        ("br ; q=0.2 , gzip ; q=0.1", ("br", "gzip")),
        ("*", ("br", "gzip")),
        ("*;q=0", ()),
        ("*, br;q=0", ("gzip",)),
        ("gzip;q=0, *;q=0.5", ("br",)),
        ("gzip;q=abc", ()),  # malformed q: dropped, never guessed up to 1
        ("gzip;q=1.5", ()),
        ("gzip;q=0.0001", ()),
        ("gzip, gzip;q=0", ()),  # listed twice: the lower q wins
    ],
)
def test_accept_encoding(header: str | None, expected: tuple[str, ...]) -> None:
    assert acceptable_codings(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("TEXT/HTML", True),
        ("*/*", False),
        ("text/*", False),
        ("application/json", False),
        ("text/html;q=0", False),
        (None, False),
    ],
)
def test_accepts_html(header: str | None, expected: bool) -> None:
    assert accepts_html(header) is expected


def test_etag_is_strong_and_differs_per_coding_size_and_time() -> None:
    plain = etag_for(100, 5, None)
    assert plain.startswith('"') and plain.endswith('"') and not plain.startswith("W/")
    tags = {plain, etag_for(100, 5, "br"), etag_for(100, 5, "gzip"), etag_for(101, 5, None), etag_for(100, 6, None)}
    assert len(tags) == 5


MTIME = 1_700_000_000.25
TAG = etag_for(10, 1, None)


@pytest.mark.parametrize(
    ("inm", "ims", "expected"),
    [
        (None, None, False),
        (TAG, None, True),
        (f'"other", {TAG}', None, True),
        (f"W/{TAG}", None, True),  # If-None-Match compares weakly
        ("*", None, True),
        ('"other"', None, False),
        (None, http_date(int(MTIME)), True),
        (None, http_date(MTIME + 3600), True),
        (None, http_date(MTIME - 1), False),
        (None, "not a date", False),
        ('"other"', http_date(MTIME + 3600), False),  # If-None-Match wins over If-Modified-Since
    ],
)
def test_not_modified(inm: str | None, ims: str | None, expected: bool) -> None:
    assert not_modified(TAG, MTIME, if_none_match=inm, if_modified_since=ims) is expected


@pytest.mark.parametrize(
    ("if_range", "expected"),
    [
        (None, True),
        (TAG, True),
        ('"stale"', False),
        (f"W/{TAG}", False),  # strong comparison only
        (http_date(MTIME), True),
        (http_date(MTIME - 10), False),
        ("garbage", False),
    ],
)
def test_if_range(if_range: str | None, expected: bool) -> None:
    assert if_range_allows(if_range, TAG, MTIME) is expected


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),  # suffix longer than the file: the whole file
        ("bytes=90-1000", 100, (90, 99)),  # last-pos clamped
        ("bytes=99-99", 100, (99, 99)),
        ("BYTES=0-0", 100, (0, 0)),
        ("bytes= 5 - 6", 100, (5, 6)),
        ("bytes=100-", 100, UNSATISFIABLE),
        ("bytes=100-200", 100, UNSATISFIABLE),
        ("bytes=-0", 100, UNSATISFIABLE),
        ("bytes=0-", 0, UNSATISFIABLE),
        ("bytes=-5", 0, UNSATISFIABLE),
        ("bytes=9-3", 100, None),  # invalid: ignored, whole file
        ("bytes=-", 100, None),
        ("bytes=0-1,5-6", 100, None),  # several ranges: whole file
        ("items=0-9", 100, None),
        ("bytes=a-b", 100, None),
        ("bytes=-+5", 100, None),
        ("bytes=" + "9" * 40 + "-", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected
