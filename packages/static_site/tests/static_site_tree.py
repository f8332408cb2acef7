"""Test helpers: a served tree with every kind of file the rules care about, and secrets outside (and inside) it."""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import httpx

from cloudtolocalllm.core import ServiceApp

# Must never appear in any response.
SECRET = "TOP-SECRET-c0ffee-7d1e5a"
INDEX_HTML = "<!doctype html><title>home</title>app shell"
BIG_SIZE = 300 * 1024  # above the small-file limit: served by streaming

# Stand-ins for brotli output: the server picks files, it never compresses, so any bytes do.
BR_BODY = b"\x1b\x2a\x00br-bytes-for-app"


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _same_mtime(target: Path, source: Path) -> None:
    stat = source.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@functools.cache
def big_content() -> bytes:
    pattern = bytes(range(251))  # a prime length, so no chunk boundary lines up with a repeat
    return (pattern * (BIG_SIZE // len(pattern) + 1))[:BIG_SIZE]


def build_tree(tmp_path: Path) -> Path:
    """``tmp_path/site`` is served; ``tmp_path/secret.txt`` and ``tmp_path/outside/`` must stay unreachable."""
    _write(tmp_path / "secret.txt", SECRET)
    _write(tmp_path / "outside" / "secret2.txt", SECRET)
    site = tmp_path / "site"
    _write(site / "index.html", INDEX_HTML)
    _write(site / "app.js", "console.log('unhashed app');\n" * 20)
    _write(site / "main.dart.js", "main();\n")
    js = _write(site / "assets" / "app.3f2a9c1b.js", "console.log('hashed');\n" * 50)
    _write(js.with_name(js.name + ".gz"), gzip.compress(js.read_bytes(), mtime=0))
    _write(js.with_name(js.name + ".br"), BR_BODY)
    _same_mtime(js.with_name(js.name + ".gz"), js)
    _same_mtime(js.with_name(js.name + ".br"), js)
    _write(site / "assets" / "main.9f8e7d6c5b.css", "body{}")
    _write(site / "assets" / "logo.png", b"\x89PNG\r\n\x1a\nnot-really")
    _write(site / "docs" / "index.html", "<h1>docs</h1>")
    _write(site / "docs" / "guide.html", "<h1>guide</h1>")
    (site / "docs" / "empty-dir").mkdir()
    _write(site / "docs" / ".hidden.html", SECRET)
    _write(site / "version.json", '{"version": "1.2.3"}')
    _write(site / "manifest.json", "{}")
    _write(site / "site.webmanifest", "{}")
    _write(site / "flutter_service_worker.js", "self.addEventListener('fetch', () => {});")
    _write(site / "app.wasm", b"\x00asm\x01\x00\x00\x00")
    _write(site / "mod.mjs", "export default 1;")
    _write(site / "logo.svg", "<svg xmlns='http://www.w3.org/2000/svg'/>")
    _write(site / "data.json", "[]")
    _write(site / "downloads" / "bridge_0.1.0_amd64.deb", b"!<arch>\ndebian-binary")
    _write(site / "downloads" / "bridge-0.1.0-py3-none-any.whl", b"PK\x03\x04wheel")
    _write(site / "downloads" / "bridge_0.1.0_amd64.deb.sha256", "abc  bridge_0.1.0_amd64.deb\n")
    _write(site / "downloads" / "big.bin", big_content())
    _write(site / "empty.txt", b"")
    _write(site / "health", "a file called health, not core's endpoint")
    _write(site / ".env", f"API_KEY={SECRET}")
    _write(site / ".git" / "config", SECRET)
    (site / "link-in.html").symlink_to("index.html")
    (site / "link-out.txt").symlink_to(tmp_path / "secret.txt")
    (site / "link-dir-out").symlink_to(tmp_path / "outside", target_is_directory=True)
    (site / "link-to-dotenv.txt").symlink_to(".env")
    return site


def asgi_client(app: ServiceApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://static.test")
