"""Build the chat web app (apps/chat) into a deployable directory for the flutter-app container.

The npm packages are installed exactly as ``apps/chat/package-lock.json`` pins them (``npm ci``, skipped
when node_modules already matches the lock), then esbuild bundles ``src/main.js`` (markdown-it, DOMPurify,
highlight.js and the app's modules) into one minified ``app.js`` and ``src/styles.css`` into ``app.css``.
Every bundle gets a content-hashed name (the static server caches it for a year, immutable) and
``index.html`` is rewritten to point at it; the service worker is given the list of shell files and a
version derived from their hashes. A ``.gz`` is written next to every text file (the static server picks it
by Accept-Encoding), and the first load (everything index.html pulls in, compressed) is checked against
the budget. ``config.json`` keeps its name: it is per environment and revalidated on every load, so one
build serves every environment.

    python scripts/build_chat_app.py OUT_DIR
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "apps" / "chat"
BUDGET_BYTES = 150 * 1024
TEXT = {".html", ".css", ".js", ".json", ".svg", ".txt", ".webmanifest"}
BUNDLES = {"app.js": "src/main.js", "app.css": "src/styles.css"}  # output name -> esbuild entry point
COPIED = ("config.json", "manifest.webmanifest", "icons")  # served under their own names
HTML_REF = re.compile(r"""\b(href|src)="([^":]+\.(?:js|css))\"""")
LOCK_STAMP = "node_modules/.lock-sha256"


def npm_ci(app: Path) -> None:
    """Install node_modules exactly from package-lock.json, unless they already match it."""
    lock = hashlib.sha256((app / "package-lock.json").read_bytes()).hexdigest()
    stamp = app / LOCK_STAMP
    if stamp.exists() and stamp.read_text() == lock:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed: run scripts/system-deps.sh (it installs Node.js and npm)")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=app, check=True, stdout=subprocess.DEVNULL
    )
    stamp.write_text(lock)


def bundle(app: Path, staging: Path) -> None:
    """esbuild: one minified ES module and one stylesheet; licences of bundled packages in licenses.txt."""
    esbuild = app / "node_modules" / ".bin" / "esbuild"
    for name, entry in BUNDLES.items():
        subprocess.run(
            [
                str(esbuild),
                entry,
                "--bundle",
                "--minify",
                "--format=esm",
                "--target=es2020,chrome100,firefox100,safari15",
                "--legal-comments=external",
                "--log-level=warning",
                f"--outfile={staging / name}",
            ],
            cwd=app,
            check=True,
        )
    legal = [p.read_text(encoding="utf-8") for p in sorted(staging.glob("*.LEGAL.txt"))]
    (staging / "licenses.txt").write_text("\n".join(legal), encoding="utf-8")
    for path in staging.glob("*.LEGAL.txt"):
        path.unlink()


def hashed_name(name: str, content: bytes) -> str:
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}.{hashlib.sha256(content).hexdigest()[:10]}.{suffix}"


def build(out: Path, app: Path = SOURCE) -> tuple[dict[str, int], int]:
    npm_ci(app)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    renamed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        bundle(app, staging)
        for name in BUNDLES:
            content = (staging / name).read_bytes()
            renamed[name] = hashed_name(name, content)
            (out / renamed[name]).write_bytes(content)
        shutil.copy2(staging / "licenses.txt", out / "licenses.txt")
    for name in COPIED:
        source = app / name
        if source.is_dir():
            shutil.copytree(source, out / name)
        else:
            shutil.copy2(source, out / name)

    def ref(match: re.Match[str]) -> str:
        if match.group(2) not in renamed:
            raise SystemExit(f"index.html refers to {match.group(2)}, which the build does not make")
        return f'{match.group(1)}="{renamed[match.group(2)]}"'

    (out / "index.html").write_text(HTML_REF.sub(ref, (app / "index.html").read_text(encoding="utf-8")))

    # The service worker caches the app shell only (never config.json, never /api/): the list and a
    # version that changes whenever any shell file does, so an update replaces the old cache.
    shell = ["./", *sorted(renamed.values()), "manifest.webmanifest"]
    shell += sorted(str(p.relative_to(out)) for p in (out / "icons").rglob("*") if p.is_file())
    version = hashlib.sha256("".join(shell).encode() + (out / "index.html").read_bytes()).hexdigest()[:12]
    worker = (app / "sw.js").read_text(encoding="utf-8")
    worker = worker.replace("__SHELL__", json.dumps(shell)).replace("__VERSION__", version)
    (out / "sw.js").write_text(worker, encoding="utf-8")

    first_load = ["index.html", "config.json", *renamed.values()]

    for path in sorted(out.rglob("*")):
        if path.is_file() and path.suffix in TEXT:
            gz = path.with_name(path.name + ".gz")
            gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
            stat = path.stat()
            os.utime(gz, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # never older than its source

    def sent(name: str) -> int:  # what the static server sends: the .gz sibling when there is one
        gz = out / f"{name}.gz"
        return (gz if gz.exists() else out / name).stat().st_size

    first = {name: sent(name) for name in sorted(first_load)}
    shell_files = ["index.html" if name == "./" else name for name in shell] + ["sw.js"]
    return first, sum(sent(name) for name in shell_files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    sizes, shell = build(args.out.resolve())
    total = sum(sizes.values())
    report = {
        "first_load_gzip_bytes": total,
        "app_shell_gzip_bytes": shell,  # everything the service worker caches, plus the worker itself
        "budget_bytes": BUDGET_BYTES,
        "files": sizes,
    }
    (args.out / "build-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if max(total, shell) > BUDGET_BYTES:
        sys.exit(f"first load {total} / app shell {shell} bytes compressed: over the {BUDGET_BYTES}-byte budget")


if __name__ == "__main__":
    main()
