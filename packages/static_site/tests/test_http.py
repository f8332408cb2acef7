"""Behaviour over HTTP, in process (httpx ASGITransport through core's full middleware stack)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import httpx
import pytest

from cloudtolocalllm.core.app import DEFAULT_CSP
from cloudtolocalllm.static_site import Settings, build_app
from cloudtolocalllm.static_site.cache import IMMUTABLE, NO_CACHE
from cloudtolocalllm.static_site.validators import http_date

from .static_site_tree import BIG_SIZE, BR_BODY, INDEX_HTML, SECRET, asgi_client, big_content

IDENTITY = {"accept-encoding": "identity"}
HTML_NAV = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8", "accept-encoding": "identity"}
HASHED = "/assets/app.3f2a9c1b.js"


async def raw_get(client: httpx.AsyncClient, path: str, **headers: str) -> tuple[httpx.Response, bytes]:
    """GET without httpx decoding Content-Encoding: the bytes exactly as sent."""
    async with client.stream("GET", path, headers=headers) as response:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, body


# --- validators and 304 -------------------------------------------------------------------------------


async def test_etag_and_last_modified_then_304_on_if_none_match(client: httpx.AsyncClient, tree: Path) -> None:
    first = await client.get("/app.js", headers=IDENTITY)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert first.headers["last-modified"] == http_date((tree / "app.js").stat().st_mtime)

    again = await client.get("/app.js", headers={**IDENTITY, "if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == "public, max-age=300"
    assert "content-length" not in again.headers or again.headers["content-length"] == "0"

    for header in (f'"nope", W/{etag}', "*"):
        assert (await client.get("/app.js", headers={**IDENTITY, "if-none-match": header})).status_code == 304
    assert (await client.get("/app.js", headers={**IDENTITY, "if-none-match": '"nope"'})).status_code == 200


async def test_if_modified_since(client: httpx.AsyncClient, tree: Path) -> None:
    mtime = (tree / "app.js").stat().st_mtime
    current = await client.get("/app.js", headers={**IDENTITY, "if-modified-since": http_date(mtime)})
    assert current.status_code == 304
    older = await client.get("/app.js", headers={**IDENTITY, "if-modified-since": http_date(mtime - 60)})
    assert older.status_code == 200
    assert older.text.startswith("console.log")
    # If-None-Match decides alone when present.
    both = await client.get(
        "/app.js", headers={**IDENTITY, "if-modified-since": http_date(mtime), "if-none-match": '"x"'}
    )
    assert both.status_code == 200


async def test_etag_changes_when_the_file_changes(client: httpx.AsyncClient, tree: Path) -> None:
    before = (await client.get("/data.json", headers=IDENTITY)).headers["etag"]
    (tree / "data.json").write_text("[1]")
    after = await client.get("/data.json", headers={**IDENTITY, "if-none-match": before})
    assert after.status_code == 200
    assert after.text == "[1]"
    assert after.headers["etag"] != before


# --- precompressed siblings --------------------------------------------------------------------------


async def test_precompressed_sibling_chosen_by_accept_encoding(client: httpx.AsyncClient, tree: Path) -> None:
    js = tree / "assets" / "app.3f2a9c1b.js"
    br, br_body = await raw_get(client, HASHED, **{"accept-encoding": "gzip, deflate, br"})
    assert br.headers["content-encoding"] == "br"
    assert br_body == BR_BODY
    assert int(br.headers["content-length"]) == len(BR_BODY)

    gz, gz_body = await raw_get(client, HASHED, **{"accept-encoding": "br;q=0, gzip"})
    assert gz.headers["content-encoding"] == "gzip"
    assert gzip.decompress(gz_body) == js.read_bytes()

    plain, plain_body = await raw_get(client, HASHED, **{"accept-encoding": "gzip;q=0, br;q=0"})
    assert "content-encoding" not in plain.headers
    assert plain_body == js.read_bytes()

    no_header, _ = await raw_get(client, HASHED, **{"accept-encoding": ""})
    assert "content-encoding" not in no_header.headers

    for response in (br, gz, plain, no_header):
        assert response.headers["vary"] == "Accept-Encoding"
        assert response.headers["content-type"] == "text/javascript; charset=utf-8"
        assert response.headers["cache-control"] == IMMUTABLE
    assert len({br.headers["etag"], gz.headers["etag"], plain.headers["etag"]}) == 3

    # 304 only for the representation the tag names.
    revalidate = await client.get(HASHED, headers={"accept-encoding": "br", "if-none-match": br.headers["etag"]})
    assert revalidate.status_code == 304
    assert revalidate.headers["vary"] == "Accept-Encoding"
    switched = await raw_get(client, HASHED, **{"accept-encoding": "gzip", "if-none-match": br.headers["etag"]})
    assert switched[0].status_code == 200
    assert switched[0].headers["content-encoding"] == "gzip"


async def test_vary_on_compressible_files_only(client: httpx.AsyncClient) -> None:
    js = await client.get("/app.js", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in js.headers  # no sibling: sent as is
    assert js.headers["vary"] == "Accept-Encoding"
    png = await client.get("/assets/logo.png", headers={"accept-encoding": "gzip"})
    assert "vary" not in png.headers


async def test_stale_sibling_is_not_served(client: httpx.AsyncClient, tree: Path) -> None:
    js = tree / "assets" / "app.3f2a9c1b.js"
    gz = js.with_name(js.name + ".gz")
    stat = js.stat()
    os.utime(gz, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))  # the .gz predates the file
    response, body = await raw_get(client, HASHED, **{"accept-encoding": "gzip"})
    assert "content-encoding" not in response.headers
    assert body == js.read_bytes()


async def test_sibling_without_the_file_serves_nothing(client: httpx.AsyncClient, tree: Path) -> None:
    (tree / "only-gz.js.gz").write_bytes(gzip.compress(b"x"))
    response = await client.get("/only-gz.js", headers={"accept-encoding": "gzip"})
    assert response.status_code == 404


# --- ranges --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/downloads/big.bin", "/app.js"])  # streamed and in-memory paths
async def test_single_ranges(client: httpx.AsyncClient, tree: Path, path: str) -> None:
    content = (tree / path.lstrip("/")).read_bytes()
    size = len(content)
    cases = {"bytes=0-9": (0, 9), "bytes=100-": (100, size - 1), "bytes=-10": (size - 10, size - 1)}
    for header, (first, last) in cases.items():
        response = await client.get(path, headers={**IDENTITY, "range": header})
        assert response.status_code == 206, header
        assert response.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert response.content == content[first : last + 1]
        assert int(response.headers["content-length"]) == last - first + 1
        assert response.headers["accept-ranges"] == "bytes"


async def test_unsatisfiable_range_is_416(client: httpx.AsyncClient) -> None:
    response = await client.get("/downloads/big.bin", headers={"range": f"bytes={BIG_SIZE}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{BIG_SIZE}"
    assert SECRET not in response.text
    empty = await client.get("/empty.txt", headers={"range": "bytes=0-"})
    assert empty.status_code == 416
    assert empty.headers["content-range"] == "bytes */0"


async def test_ignored_ranges_send_the_whole_file(client: httpx.AsyncClient) -> None:
    for header in ("bytes=9-3", "bytes=0-1,5-6", "lines=1-2"):
        response = await client.get("/downloads/big.bin", headers={"range": header})
        assert response.status_code == 200, header
        assert response.content == big_content()


async def test_if_range(client: httpx.AsyncClient, tree: Path) -> None:
    first = await client.get("/downloads/big.bin")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert modified == http_date((tree / "downloads" / "big.bin").stat().st_mtime)
    for validator, status in ((etag, 206), (modified, 206), ('"stale"', 200), (f"W/{etag}", 200)):
        response = await client.get("/downloads/big.bin", headers={"range": "bytes=0-3", "if-range": validator})
        assert response.status_code == status, validator
        assert response.content == (big_content()[:4] if status == 206 else big_content())


async def test_range_applies_to_the_encoded_representation(client: httpx.AsyncClient) -> None:
    response, body = await raw_get(client, HASHED, **{"accept-encoding": "br", "range": "bytes=0-3"})
    assert response.status_code == 206
    assert response.headers["content-encoding"] == "br"
    assert response.headers["content-range"] == f"bytes 0-3/{len(BR_BODY)}"
    assert body == BR_BODY[:4]


async def test_head_ignores_range_and_sends_no_body(client: httpx.AsyncClient) -> None:
    response = await client.head("/downloads/big.bin", headers={"range": "bytes=0-3"})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(BIG_SIZE)
    assert response.content == b""


# --- cache rules and types on the wire ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "cache"),
    [
        (HASHED, IMMUTABLE),
        ("/assets/main.9f8e7d6c5b.css", IMMUTABLE),
        ("/app.js", "public, max-age=300"),
        ("/main.dart.js", "public, max-age=300"),
        ("/", NO_CACHE),
        ("/index.html", NO_CACHE),
        ("/docs/", NO_CACHE),
        ("/version.json", NO_CACHE),
        ("/manifest.json", NO_CACHE),
        ("/site.webmanifest", NO_CACHE),
        ("/flutter_service_worker.js", NO_CACHE),
        ("/downloads/bridge_0.1.0_amd64.deb", "public, max-age=300"),
    ],
)
async def test_cache_control_on_the_wire(client: httpx.AsyncClient, path: str, cache: str) -> None:
    response = await client.get(path, headers=IDENTITY)
    assert response.status_code == 200
    assert response.headers["cache-control"] == cache


async def test_unhashed_bundles_never_get_the_year(client: httpx.AsyncClient) -> None:
    for path in ("/app.js", "/main.dart.js"):
        cache = (await client.get(path)).headers["cache-control"]
        assert "immutable" not in cache and "31536000" not in cache


async def test_max_age_setting(tree: Path) -> None:
    async with asgi_client(build_app(Settings(root=str(tree), max_age=42))) as client:
        assert (await client.get("/app.js")).headers["cache-control"] == "public, max-age=42"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/app.wasm", "application/wasm"),
        ("/mod.mjs", "text/javascript; charset=utf-8"),
        ("/site.webmanifest", "application/manifest+json; charset=utf-8"),
        ("/downloads/bridge_0.1.0_amd64.deb", "application/vnd.debian.binary-package"),
        ("/downloads/bridge-0.1.0-py3-none-any.whl", "application/octet-stream"),
        ("/downloads/bridge_0.1.0_amd64.deb.sha256", "text/plain; charset=utf-8"),
        ("/data.json", "application/json; charset=utf-8"),
        ("/logo.svg", "image/svg+xml; charset=utf-8"),
        ("/", "text/html; charset=utf-8"),
    ],
)
async def test_content_type_on_the_wire(client: httpx.AsyncClient, path: str, content_type: str) -> None:
    response = await client.get(path, headers=IDENTITY)
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"


# --- SPA fallback --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/chat", "/chat/", "/chat/42/settings", "/login?next=%2Fchat"])
async def test_spa_fallback_serves_index_for_app_routes(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers=HTML_NAV)
    assert response.status_code == 200
    assert response.text == INDEX_HTML
    assert response.headers["cache-control"] == NO_CACHE
    assert response.headers["content-type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize(
    "path",
    [
        "/assets/x.js",  # a missing asset is a real 404
        "/missing.png",
        "/docs/missing.html",
        "/chat/avatar.webp",
        "/.env",  # refused paths never fall back
        "/%2e%2e/secret.txt",
        "/link-out.txt",
        "/docs/empty-dir/",  # a directory without an index is not an app route
    ],
)
async def test_spa_fallback_never_hides_a_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers=HTML_NAV)
    assert response.status_code == 404, path
    assert INDEX_HTML not in response.text
    assert SECRET not in response.text


async def test_spa_fallback_needs_an_html_navigation(client: httpx.AsyncClient) -> None:
    for accept in ("*/*", "application/json", "text/html;q=0"):
        response = await client.get("/chat", headers={"accept": accept})
        assert response.status_code == 404, accept


async def test_without_spa_app_routes_are_404(plain_client: httpx.AsyncClient) -> None:
    response = await plain_client.get("/chat", headers=HTML_NAV)
    assert response.status_code == 404
    assert INDEX_HTML not in response.text


async def test_spa_fallback_revalidates(client: httpx.AsyncClient) -> None:
    first = await client.get("/chat", headers=HTML_NAV)
    again = await client.get("/other-route", headers={**HTML_NAV, "if-none-match": first.headers["etag"]})
    assert again.status_code == 304


# --- methods, directories, dotfiles, 404 page ----------------------------------------------------------


async def test_head_matches_get_without_a_body(client: httpx.AsyncClient) -> None:
    get = await client.get("/app.js", headers=IDENTITY)
    head = await client.head("/app.js", headers=IDENTITY)
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-length", "content-type", "etag", "last-modified", "cache-control", "vary"):
        assert head.headers[name] == get.headers[name]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"])
async def test_other_methods_are_405(client: httpx.AsyncClient, method: str) -> None:
    for path in ("/app.js", "/missing", "/health"):
        response = await client.request(method, path)
        assert response.status_code == 405, (method, path)
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert allowed == {"GET", "HEAD"}
        assert response.headers["x-frame-options"] == "SAMEORIGIN"


async def test_directory_index_and_redirect(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs/", headers=IDENTITY)
    assert docs.status_code == 200
    assert docs.text == "<h1>docs</h1>"
    redirect = await client.get("/docs", headers=HTML_NAV)
    assert redirect.status_code == 301
    assert redirect.headers["location"] == "docs/"
    with_query = await client.get("/docs?page=2&q=a%20b")
    assert with_query.headers["location"] == "docs/?page=2&q=a%20b"
    # Followed by a browser, the relative Location lands on the directory.
    assert httpx.URL("http://static.test/docs?x=1").join(with_query.headers["location"]).path == "/docs/"
    root = await client.get("/", headers=IDENTITY)
    assert root.text == INDEX_HTML


async def test_no_directory_listing(plain_client: httpx.AsyncClient) -> None:
    for path in ("/docs/empty-dir/", "/downloads/", "/assets/"):
        response = await plain_client.get(path, headers=HTML_NAV)
        assert response.status_code == 404, path
        assert "big.bin" not in response.text and "logo.png" not in response.text


async def test_file_with_trailing_slash_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/app.js/")).status_code == 404


@pytest.mark.parametrize(
    "path", ["/.env", "/.git/config", "/.git/", "/docs/.hidden.html", "/link-to-dotenv.txt", "/.git"]
)
async def test_dotfiles_are_never_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers=HTML_NAV)
    assert response.status_code == 404
    assert SECRET not in response.text


async def test_symlink_inside_the_root_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/link-in.html", headers=IDENTITY)
    assert response.status_code == 200
    assert response.text == INDEX_HTML


async def test_custom_404_page(client: httpx.AsyncClient, tree: Path) -> None:
    (tree / "404.html").write_text("<h1>lost</h1>")
    response = await client.get("/nope.png", headers={"if-none-match": "*", **IDENTITY})
    assert response.status_code == 404
    assert response.text == "<h1>lost</h1>"
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == NO_CACHE
    assert "etag" not in response.headers
    head = await client.head("/nope.png")
    assert head.status_code == 404
    assert head.content == b""


# --- core integration ----------------------------------------------------------------------------------


async def test_core_health_wins_over_a_file_named_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "static-site", "version": "0.1.0"}
    head = await client.head("/health")
    assert head.status_code == 200


async def test_security_headers_and_csp_on_every_kind_of_response(client: httpx.AsyncClient) -> None:
    etag = (await client.get("/app.js")).headers["etag"]
    responses = [
        await client.get("/app.js"),
        await client.get("/app.js", headers={"if-none-match": etag}),
        await client.get("/app.js", headers={"range": "bytes=0-1"}),
        await client.get("/app.js", headers={"range": "bytes=99999-"}),
        await client.get("/missing.js"),
        await client.get("/docs"),
        await client.post("/app.js"),
        await client.get("/%2e%2e/secret.txt"),
    ]
    assert [r.status_code for r in responses] == [200, 304, 206, 416, 404, 301, 405, 404]
    for response in responses:
        assert response.headers["content-security-policy"] == DEFAULT_CSP
        assert response.headers["x-frame-options"] == "SAMEORIGIN"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
        assert response.headers["x-request-id"]


async def test_csp_setting(tree: Path) -> None:
    policy = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'"
    async with asgi_client(build_app(Settings(root=str(tree), csp=policy))) as client:
        assert (await client.get("/")).headers["content-security-policy"] == policy
    async with asgi_client(build_app(Settings(root=str(tree), csp=""))) as client:
        response = await client.get("/")
        assert "content-security-policy" not in response.headers
        assert response.headers["x-frame-options"] == "SAMEORIGIN"


async def test_service_name_in_health(tree: Path) -> None:
    async with asgi_client(build_app(Settings(root=str(tree), service_name="flutter-app"))) as client:
        assert (await client.get("/health")).json()["service"] == "flutter-app"


async def test_metrics_label_files_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/app.js")
    await client.get("/secret-name-of-a-missing-file.js")
    metrics = (await client.get("/metrics")).text
    assert 'route="/{path:path}"' in metrics
    assert "secret-name-of-a-missing-file" not in metrics
    assert "app.js" not in metrics


async def test_conditional_head_is_304_too(client: httpx.AsyncClient) -> None:
    etag = (await client.head("/app.js")).headers["etag"]
    response = await client.head("/app.js", headers={"if-none-match": etag})
    assert response.status_code == 304
    assert response.headers["etag"] == etag
