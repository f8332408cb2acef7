"""The edge cache (nginx proxy_cache) on the static routes, against real nginx and a counting origin.

Every test uses its own paths under ``/site/<id>/``, so what the origin saw (``Shared.seen``) is that test's
own traffic: a request the cache answered never shows up there.
"""

from __future__ import annotations

import gzip
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cloudtolocalllm.edge.render import render

from .edge_harness import Edge, UpstreamServers, assert_security_headers, pool_instances, start_edge
from .edge_upstream import IMMUTABLE, site_body

HOST = "localhost"  # the home site: static-site, cached by default


@pytest.fixture(scope="module")
def cached_edge(
    upstreams: UpstreamServers, tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    """The default routing with the cache's status header on and a freshness no test outlives."""
    overrides = {"cache": {"status_header": True, "revalidate_after": 300}}
    instance = start_edge(tmp_path_factory, tls_files, pool_instances(upstreams), overrides)
    try:
        yield instance
    finally:
        instance.close()


def _path(name: str) -> str:
    return f"/site/{uuid.uuid4().hex[:12]}/{name}"


def _status(response: httpx.Response) -> str:
    return str(response.headers.get("x-cache-status", ""))


def _once(response: httpx.Response, tls: bool = True) -> None:
    """Security headers exactly once (the origin's X-Frame-Options: DENY hidden), one Cache-Status."""
    assert_security_headers(response, tls=tls)
    assert len(response.headers.get_list("x-cache-status")) <= 1


def test_a_hashed_asset_is_served_from_the_cache_the_second_time(cached_edge: Edge, upstreams: UpstreamServers) -> None:
    path = _path("assets/app.3f2a9c1b.js")
    first = cached_edge.get(HOST, path)
    second = cached_edge.get(HOST, path)
    assert (first.status_code, _status(first)) == (200, "MISS")
    assert (second.status_code, _status(second)) == (200, "HIT")
    assert second.content == first.content == site_body(path)
    assert len(upstreams.shared.seen(path)) == 1  # the second request never reached the origin
    for response in (first, second):
        _once(response)
        assert response.headers.get_list("cache-control") == [IMMUTABLE]
    # The key is scheme + host + path: another host is another entry, a query string is not part of it.
    assert _status(cached_edge.get("docs.localhost", path)) == "MISS"
    assert _status(cached_edge.get(HOST, path + "?v=2")) == "HIT"
    # Cookies are not part of the key and do not bypass: the static routes are public.
    cookie = cached_edge.get(HOST, path, headers={"Cookie": "session=abc"})
    assert (_status(cookie), cookie.content) == ("HIT", first.content)
    assert len(upstreams.shared.seen(path)) == 2


def _cache_files(edge: Edge) -> list[Path]:
    root = Path(edge.config.cache.path or Path(edge.config.nginx.runtime_dir) / "cache")
    return [path for path in root.rglob("*") if path.is_file()]


def test_query_strings_never_reach_the_cache_files_nor_multiply_the_entries(
    cached_edge: Edge, upstreams: UpstreamServers
) -> None:
    """A sign-in redirect (``/?code=...&state=...``) or a ``?token=`` must not be written to disk."""
    page, asset = _path("index.html"), _path("assets/app.3f2a9c1b.js")
    before = len(_cache_files(cached_edge))
    secrets = [f"eyJQUERY{n}SECRET" for n in range(6)]
    for n, secret in enumerate(secrets):
        for path in (page, asset):
            query = f"?token={secret}" if n % 2 else f"?code={secret}&state=st{secret}"
            response = cached_edge.get(HOST, path + query)
            assert (response.status_code, response.content) == (200, site_body(path))
            assert _status(response) == ("MISS" if n == 0 else "HIT")
    files = _cache_files(cached_edge)
    assert len(files) == before + 2  # one entry per path, whatever the queries
    for file in files:
        data = file.read_bytes()
        assert not any(secret.encode() in data for secret in secrets), file
        assert b"?token=" not in data and b"?code=" not in data, file
    # The origin saw the first request of each path, query included: the key drops it, the request keeps it.
    assert [hit["query"] for hit in upstreams.shared.seen(page)] == [f"code={secrets[0]}&state=st{secrets[0]}"]


def test_a_conditional_request_is_answered_304_from_the_cache(cached_edge: Edge, upstreams: UpstreamServers) -> None:
    path = _path("assets/logo-0a1b2c3d4e.png")
    etag = cached_edge.get(HOST, path).headers["etag"]
    not_modified = cached_edge.get(HOST, path, headers={"If-None-Match": etag})
    assert (not_modified.status_code, _status(not_modified)) == (304, "HIT")
    assert not_modified.content == b""
    _once(not_modified)
    assert len(upstreams.shared.seen(path)) == 1


def test_html_is_revalidated_with_the_origin_and_served_from_the_cache(
    make_edge: Callable[..., Edge], upstreams: UpstreamServers
) -> None:
    edge = make_edge({"cache": {"status_header": True, "revalidate_after": 1}})
    path = _path("index.html")
    first = edge.get(HOST, path)
    assert (first.status_code, _status(first)) == (200, "MISS")
    time.sleep(2.1)  # due for revalidation (nginx counts whole seconds: 1 s means up to 2 s)
    second = edge.get(HOST, path)
    assert (second.status_code, _status(second)) == (200, "REVALIDATED")
    assert second.content == first.content == site_body(path)
    seen = upstreams.shared.seen(path)
    assert [hit["status"] for hit in seen] == ["200", "304"]
    assert seen[1]["if-none-match"] == '"v1"'  # a conditional request: the origin sent no body
    for response in (first, second):
        _once(response)
        assert response.headers.get_list("cache-control") == ["no-cache"]


@pytest.mark.parametrize(
    "query",
    [
        "cc=private,%20max-age=600",
        "cc=no-store",
        "cc=none",  # no Cache-Control at all: the origin did not say it may be stored
        "cookie=1",  # Set-Cookie
    ],
)
def test_private_responses_are_never_stored(cached_edge: Edge, upstreams: UpstreamServers, query: str) -> None:
    path = _path("assets/app.3f2a9c1b.js")
    responses = [cached_edge.get(HOST, f"{path}?{query}") for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 200]
    assert [_status(r) for r in responses] == ["MISS", "MISS"]
    assert len(upstreams.shared.seen(path)) == 2
    if query == "cookie=1":
        assert all(r.headers.get_list("set-cookie") for r in responses)


def test_requests_with_authorization_bypass_the_cache(cached_edge: Edge, upstreams: UpstreamServers) -> None:
    path = _path("assets/app.3f2a9c1b.js")
    auth = {"Authorization": "Bearer secret-token"}
    responses = [cached_edge.get(HOST, path, headers=auth) for _ in range(2)]
    assert [_status(r) for r in responses] == ["BYPASS", "BYPASS"]
    # What an authorized request fetched was not stored either: the next anonymous request is a miss.
    assert _status(cached_edge.get(HOST, path)) == "MISS"
    seen = upstreams.shared.seen(path)
    assert [hit["authorization"] for hit in seen] == ["Bearer secret-token", "Bearer secret-token", ""]


def test_the_api_is_never_cached(cached_edge: Edge, upstreams: UpstreamServers) -> None:
    # The origin says "public, max-age=31536000, immutable"; /api/ still goes to the backend every time.
    path = "/api" + _path("assets/app.3f2a9c1b.js")
    responses = [cached_edge.get("app.localhost", path) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all("x-cache-status" not in r.headers for r in responses)
    assert len(upstreams.shared.seen(path)) == 3


def test_the_api_and_websocket_locations_have_no_cache_directives(cached_edge: Edge) -> None:
    text = cached_edge.nginx.conf_path.read_text()
    for prefix in ("/api/", "/ws/"):
        block = text[text.index(f"location {prefix} {{") :]
        block = block[: block.index("\n        }")]
        assert "proxy_cache" not in block, prefix
    assert text.count("proxy_cache edge_cache;") == 3  # home, docs, app "/"


def test_vary_accept_encoding_keeps_one_variant_per_encoding(cached_edge: Edge, upstreams: UpstreamServers) -> None:
    path = _path("data/report.bin")
    url = f"{path}?enc=1"
    plain = site_body(path)
    client = cached_edge.client()

    def fetch(encoding: str) -> tuple[str, str, bytes]:
        headers = {"Host": HOST, "Accept-Encoding": encoding}
        with client.stream("GET", cached_edge.url(url), headers=headers) as response:
            raw = b"".join(response.iter_raw())
            return response.headers.get("content-encoding", ""), _status(response), raw

    coding, status, raw = fetch("gzip")
    assert (coding, status) == ("gzip", "MISS")
    assert gzip.decompress(raw) == plain
    # A client that did not ask for gzip never gets the stored gzip variant.
    coding, status, raw = fetch("identity")
    assert (coding, status, raw) == ("", "MISS", plain)
    assert fetch("gzip")[:2] == ("gzip", "HIT")
    assert fetch("identity") == ("", "HIT", plain)
    assert [hit["accept-encoding"] for hit in upstreams.shared.seen(path)] == ["gzip", "identity"]


def test_range_requests_are_served_from_the_cached_file(cached_edge: Edge, upstreams: UpstreamServers) -> None:
    path = _path("downloads/model.bin")
    body = site_body(path)
    # A range on a miss: the edge fetches (and stores) the whole file, the client gets its part.
    first = cached_edge.get(HOST, path, headers={"Range": "bytes=1000-1999"})
    assert (first.status_code, _status(first)) == (206, "MISS")
    assert first.content == body[1000:2000]
    assert first.headers["content-range"] == f"bytes 1000-1999/{len(body)}"
    second = cached_edge.get(HOST, path, headers={"Range": "bytes=-100"})
    assert (second.status_code, _status(second)) == (206, "HIT")
    assert second.content == body[-100:]
    _once(second)
    full = cached_edge.get(HOST, path)
    assert (full.status_code, _status(full), full.content) == (200, "HIT", body)
    assert [hit["range"] for hit in upstreams.shared.seen(path)] == [""]


def test_errors_are_not_stored(cached_edge: Edge, upstreams: UpstreamServers) -> None:
    path = _path("assets/missing.3f2a9c1b.js")
    upstreams.shared.failing.add(path)
    try:
        responses = [cached_edge.get(HOST, path) for _ in range(2)]
    finally:
        upstreams.shared.failing.discard(path)
    assert [r.status_code for r in responses] == [500, 500]
    _once(responses[0])
    fixed = cached_edge.get(HOST, path)  # the origin recovered: no stored error stands in the way
    assert (fixed.status_code, _status(fixed)) == (200, "MISS")
    assert len(upstreams.shared.seen(path)) == 3


def test_stale_copies_are_served_while_the_origin_is_down(
    make_edge: Callable[..., Edge], upstreams: UpstreamServers
) -> None:
    origin = UpstreamServers(["static-site#1"])
    origin.start()
    try:
        instances = {**pool_instances(upstreams), "static-site": [origin.addresses["static-site#1"]]}
        edge = make_edge({"cache": {"status_header": True, "revalidate_after": 1}}, instances=instances)
        asset, page = _path("assets/app.3f2a9c1b.js"), _path("index.html")
        for path in (asset, page):
            assert _status(edge.get(HOST, path)) == "MISS"
        # The origin answers 500 while it is sick: the stored copy is served instead.
        origin.shared.failing.add(asset)
        time.sleep(2.1)
        sick = edge.get(HOST, asset)
        assert (sick.status_code, _status(sick), sick.content) == (200, "STALE", site_body(asset))
    finally:
        origin.stop()
    # The origin is gone (connection refused).
    for path in (asset, page):
        response = edge.get(HOST, path)
        assert (response.status_code, _status(response), response.content) == (200, "STALE", site_body(path))
        _once(response)
    never_cached = edge.get(HOST, _path("other.html"))
    assert never_cached.status_code == 503
    # The controller takes the dead instance out of its pool: the cached routes still serve stale copies.
    healthy = {pool: list(addresses) for pool, addresses in instances.items() if pool != "static-site"}
    edge.apply(render(edge.config, healthy=healthy))
    assert "server 127.0.0.1:9 down;" in edge.nginx.conf_path.read_text()
    response = edge.get(HOST, asset)
    assert (response.status_code, _status(response), response.content) == (200, "STALE", site_body(asset))
    _once(response)
    missing = edge.get(HOST, _path("other.html"))
    assert missing.status_code == 503
    assert missing.headers["retry-after"] == "5"
    _once(missing)
