#!/usr/bin/env python3
"""Assemble the static-site container's content: homepage, docs and downloads, precompressed.

    python3 scripts/build_static_site.py --docs BUILT_DOCS --downloads dist/downloads --out dist/static-site

Layout (one tree for the apex and ``docs.<domain>``, which the edge sends to the same upstream; every link is
root-relative, so it works on both host names):

- ``/``: the homepage (``homepage/index.html``), ``/404.html`` the page every 404 shows;
- ``/assets/``: the stylesheet and icon under content-hashed names (cached a year, immutable);
- ``/docs/``: the MkDocs site (``--docs``, built from ``packaging/mkdocs-site.yml``);
- ``/downloads/``: the files from ``scripts/build_downloads.py``, their ``.sha256``, ``SHA256SUMS``,
  ``index.json`` and a listing page.

Every text file gets ``.gz`` (and ``.br`` when the ``brotli`` command is installed) next to it, with the
source's modification time, which is what the static server requires to pick a sibling. Stdlib only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOMEPAGE = ROOT / "homepage"
DEFAULT_APP_URL = "https://app.cloudtolocalllm.online/"

COMPRESSIBLE = {".html", ".css", ".js", ".json", ".svg", ".xml", ".txt", ".map", ".md", ".webmanifest"}
MIN_COMPRESS_BYTES = 256
_PLACEHOLDER = re.compile(r"\{\{([a-z_0-9]+)\}\}")


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def render(template: str, values: dict[str, str]) -> str:
    """Replace ``{{name}}`` with ``values[name]`` (already HTML); an unknown name is an error."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise SystemExit(f"template placeholder {{{{{name}}}}} has no value")
        return values[name]

    return _PLACEHOLDER.sub(one, template)


def hashed_copy(source: Path, dest_dir: Path) -> str:
    """Copy ``source`` to ``dest_dir/<stem>.<hash>.<ext>``; return the file name."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    name = f"{source.stem}.{digest}{source.suffix}"
    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest_dir / name)
    return name


def load_listing(downloads: Path) -> tuple[str, list[dict[str, Any]]]:
    """The version and the file entries of ``index.json`` (written by build_downloads.py)."""
    listing = json.loads((downloads / "index.json").read_text())
    if not isinstance(listing, dict) or not isinstance(listing.get("files"), list):
        raise SystemExit(f"{downloads / 'index.json'}: not a downloads listing")
    return str(listing["version"]), [f for f in listing["files"] if isinstance(f, dict)]


def download_rows(files: list[dict[str, Any]]) -> str:
    rows = []
    for entry in files:
        name = html.escape(str(entry["name"]))
        size = human_size(int(str(entry["size"])))
        digest = html.escape(str(entry["sha256"]))
        rows.append(
            f'        <tr><td><a href="/downloads/{name}">{name}</a><br>'
            f'<a href="/downloads/{name}.sha256">{name}.sha256</a></td>'
            f"<td>{size}</td><td><code>{digest}</code></td></tr>"
        )
    return "\n".join(rows)


def precompress(root: Path, *, brotli: str | None) -> tuple[int, int]:
    """Write ``.gz`` (and ``.br``) siblings of text files where they are smaller; return the counts."""
    gz_count = br_count = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix not in COMPRESSIBLE or path.stat().st_size < MIN_COMPRESS_BYTES:
            continue
        data = path.read_bytes()
        stat = path.stat()
        packed = gzip.compress(data, compresslevel=9, mtime=0)
        if len(packed) < len(data):
            gz = path.with_name(path.name + ".gz")
            gz.write_bytes(packed)
            os.utime(gz, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            gz_count += 1
        if brotli is not None:
            br = path.with_name(path.name + ".br")
            subprocess.run([brotli, "--force", "--keep", "--best", f"--output={br}", str(path)], check=True)
            if br.stat().st_size >= len(data):
                br.unlink()
                continue
            os.utime(br, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            br_count += 1
    return gz_count, br_count


def build(docs: Path, downloads: Path, out: Path, app_url: str) -> None:
    version, files = load_listing(downloads)
    debs = [f for f in files if f.get("kind") == "deb"]
    if len(debs) != 1:
        raise SystemExit(f"expected one .deb in {downloads / 'index.json'}, found {len(debs)}")
    deb = debs[0]
    wheels = [str(f["name"]) for f in files if f.get("kind") == "wheel"]

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(docs, out / "docs")
    shutil.copytree(downloads, out / "downloads")
    assets = out / "assets"
    css = "/assets/" + hashed_copy(HOMEPAGE / "site.css", assets)
    icon = "/assets/" + hashed_copy(HOMEPAGE / "icon.svg", assets)

    base = {
        "css": css,
        "icon": icon,
        "app_url": html.escape(app_url, quote=True),
        "version": html.escape(version),
    }
    partials = {name: render((HOMEPAGE / f"_{name}.html").read_text(), base) for name in ("head", "header", "footer")}
    values = {
        **base,
        **partials,
        "deb_name": html.escape(str(deb["name"])),
        "deb_size": human_size(int(str(deb["size"]))),
        "deb_sha256": html.escape(str(deb["sha256"])),
        "wheel_names": html.escape(" ".join(sorted(wheels))),
        "rows": download_rows(files),
    }
    (out / "index.html").write_text(render((HOMEPAGE / "index.html").read_text(), values))
    (out / "404.html").write_text(render((HOMEPAGE / "404.html").read_text(), values))
    (out / "downloads" / "index.html").write_text(render((HOMEPAGE / "downloads.html").read_text(), values))

    brotli = shutil.which("brotli")
    if brotli is None:
        print("build_static_site: the brotli command is not installed; writing .gz siblings only", file=sys.stderr)
    gz_count, br_count = precompress(out, brotli=brotli)
    print(f"assembled {out}: {gz_count} .gz and {br_count} .br siblings")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, required=True, help="the built MkDocs site")
    parser.add_argument("--downloads", type=Path, default=ROOT / "dist" / "downloads")
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "static-site", help="output folder (replaced)")
    parser.add_argument(
        "--app-url",
        default=os.environ.get("CTLLM_APP_URL", DEFAULT_APP_URL),
        help=f"where 'Sign in' points (CTLLM_APP_URL; default {DEFAULT_APP_URL})",
    )
    args = parser.parse_args(argv)
    build(args.docs.resolve(), args.downloads.resolve(), args.out.resolve(), args.app_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
