"""The assembled static site, served by the real static server on loopback, as a browser would see it."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.static_site.app import build_app
from cloudtolocalllm.static_site.settings import Settings

IMMUTABLE = "public, max-age=31536000, immutable"


class Links(HTMLParser):
    """href/src of a page's links, stylesheets, scripts and images."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.inline_scripts = 0
        self.style_attributes = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("href", "src"):
            if values.get(name):
                self.found.append(str(values[name]))
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1
        if "style" in values:
            self.style_attributes += 1


def parse(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


@pytest.fixture
async def site(site_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_server(build_app(Settings(root=str(site_dir)))) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        yield client


async def test_homepage_offers_the_download(site: httpx.AsyncClient, downloads_dir: Path) -> None:
    listing = json.loads((downloads_dir / "index.json").read_text())
    deb = next(f for f in listing["files"] if f["kind"] == "deb")
    r = await site.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "<h1>Your local LLM, from anywhere.</h1>" in r.text
    links = parse(r.text)
    assert f"/downloads/{deb['name']}" in links.found
    assert f"/downloads/{deb['name']}.sha256" in links.found
    assert deb["sha256"] in r.text
    assert f"sudo apt install ./{deb['name']}" in r.text
    assert "systemctl --user enable --now cloudtolocalllm-bridge" in r.text
    assert any(urlsplit(link).netloc.startswith("app.") for link in links.found), "no sign-in link to the app"
    # Strict CSP: nothing inline that it would block.
    assert links.inline_scripts == 0
    assert links.style_attributes == 0


async def test_docs_index_and_a_deep_page(site: httpx.AsyncClient) -> None:
    for path, text in [
        ("/docs/", "CloudToLocalLLM"),
        ("/docs/install-bridge/", "systemctl --user enable --now cloudtolocalllm-bridge"),
        ("/docs/reference/api/", "</h1>"),
    ]:
        r = await site.get(path)
        assert r.status_code == 200, path
        assert text in r.text, path
        assert r.headers["cache-control"] == "no-cache"
        page = parse(r.text)
        # The theme overlay keeps the docs working under the strict CSP: no inline script, nothing from a CDN.
        assert page.inline_scripts == 0, path
        assert not [u for u in page.found if u.startswith(("http://", "https://")) and "cdn" in u], path
    redirect = await site.get("/docs")
    assert redirect.status_code == 301


async def test_every_download_matches_its_checksum(site: httpx.AsyncClient, downloads_dir: Path) -> None:
    listing = json.loads((downloads_dir / "index.json").read_text())
    assert {f["kind"] for f in listing["files"]} == {"deb", "wheel"}
    sums = (await site.get("/downloads/SHA256SUMS")).text
    for entry in listing["files"]:
        body = await site.get(f"/downloads/{entry['name']}")
        assert body.status_code == 200
        digest = hashlib.sha256(body.content).hexdigest()
        assert digest == entry["sha256"]
        assert len(body.content) == entry["size"]
        sidecar = await site.get(f"/downloads/{entry['name']}.sha256")
        assert sidecar.text == f"{digest}  {entry['name']}\n"  # the format `sha256sum -c` reads
        assert f"{digest}  {entry['name']}\n" in sums
        if entry["kind"] == "deb":
            assert body.headers["content-type"] == "application/vnd.debian.binary-package"
    # A resumed download gets the rest of the file.
    deb = next(f for f in listing["files"] if f["kind"] == "deb")
    part = await site.get(f"/downloads/{deb['name']}", headers={"Range": "bytes=100-"})
    assert part.status_code == 206
    assert len(part.content) == deb["size"] - 100


async def test_cache_rules_and_precompression(site: httpx.AsyncClient, site_dir: Path) -> None:
    home = parse((await site.get("/")).text)
    assets = [u for u in home.found if u.startswith("/assets/")]
    assert any(u.endswith(".css") for u in assets)
    for asset in assets:
        r = await site.get(asset)
        assert r.status_code == 200
        assert r.headers["cache-control"] == IMMUTABLE, asset
    css = next(u for u in assets if u.endswith(".css"))
    source = (site_dir / css.lstrip("/")).read_bytes()
    for coding, suffix in (("br", ".br"), ("gzip", ".gz")):
        async with site.stream("GET", css, headers={"Accept-Encoding": coding}) as r:
            raw = b"".join([chunk async for chunk in r.aiter_raw()])
        assert r.headers["content-encoding"] == coding
        assert "accept-encoding" in r.headers["vary"].lower()
        assert raw == (site_dir / (css.lstrip("/") + suffix)).read_bytes()
        assert len(raw) < len(source)
    assert gzip.decompress((site_dir / (css.lstrip("/") + ".gz")).read_bytes()) == source
    for page in ("/", "/downloads/", "/docs/"):
        r = await site.get(page, headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip", page
        assert r.headers["cache-control"] == "no-cache", page
    missing = await site.get("/no/such/page")
    assert missing.status_code == 404
    assert "Page not found" in missing.text


async def test_internal_links_resolve(site: httpx.AsyncClient) -> None:
    """Crawl from the homepage and the downloads page: every same-site link answers 200."""
    base = str(site.base_url)
    start = ["/", "/downloads/", "/404.html"]
    seen: set[str] = set()
    pages = list(start)
    checked = 0
    while pages:
        page = pages.pop()
        r = await site.get(page)
        assert r.status_code == 200, page
        for link in parse(r.text).found:
            absolute = urljoin(base + page, link)
            parts = urlsplit(absolute)
            if f"{parts.scheme}://{parts.netloc}" != base.rstrip("/") or parts.path in seen:
                continue
            seen.add(parts.path)
            target = await site.get(parts.path)
            checked += 1
            assert target.status_code == 200, f"{page} links to {link}: {target.status_code}"
            # Follow the homepage's own pages (not into the whole docs tree, which MkDocs --strict checks).
            if parts.path in ("/downloads/",) and parts.path not in start:
                pages.append(parts.path)
    assert checked >= 10
