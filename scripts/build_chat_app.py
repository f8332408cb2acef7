"""Build the chat web app (apps/chat) into a deployable directory for the flutter-app container.

No bundler: the app is plain ES modules. The build gives every JavaScript and CSS file a content-hashed
name (so the static server caches it for a year, immutable) and rewrites the references to it, writes a
``.gz`` next to every text file (the static server picks it by Accept-Encoding), and checks the first load
(everything index.html pulls in, compressed) against the budget. ``config.json`` keeps its name: it is
per environment and revalidated on every load, so one build serves every environment.

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
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "apps" / "chat"
BUDGET_BYTES = 150 * 1024
TEXT = {".html", ".css", ".js", ".json", ".svg", ".txt", ".webmanifest"}
# `from "./x.js"`, `import "./x.js"`, `import("./x.js")`: relative specifiers only.
IMPORT = re.compile(r"""((?:\bfrom|\bimport)\s*\(?\s*)(["'])(\.{1,2}/[^"']+\.js)\2""")
HTML_REF = re.compile(r"""\b(href|src)="([^":]+\.(?:js|css))\"""")


def hashed_name(path: Path, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()[:10]
    return f"{path.stem}.{digest}{path.suffix}"


def build(out: Path) -> dict[str, int]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    renamed: dict[Path, str] = {}  # source file -> hashed file name (same directory)

    def emit_module(path: Path, stack: tuple[Path, ...] = ()) -> str:
        if path in renamed:
            return renamed[path]
        if path in stack:
            raise SystemExit(f"import cycle through {path.relative_to(SOURCE)}")
        text = path.read_text(encoding="utf-8")

        def rewrite(match: re.Match[str]) -> str:
            target = (path.parent / match.group(3)).resolve()
            name = emit_module(target, (*stack, path))
            spec = str(Path(match.group(3)).parent / name)
            spec = spec if spec.startswith(".") else "./" + spec
            return f"{match.group(1)}{match.group(2)}{spec}{match.group(2)}"

        content = IMPORT.sub(rewrite, text).encode("utf-8")
        name = hashed_name(path, content)
        dest = out / path.parent.relative_to(SOURCE) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
        renamed[path] = name
        return name

    for source in sorted(SOURCE.rglob("*")):
        if source.is_dir() or source.name.startswith(".") or source.suffix == ".md":
            continue  # dotfiles and the app's own notes (CHANGELOG.md) are not content
        rel = source.relative_to(SOURCE)
        if source.suffix == ".js":
            emit_module(source.resolve())
        elif source.suffix == ".css":
            content = source.read_bytes()
            name = hashed_name(source, content)
            (out / rel.parent).mkdir(parents=True, exist_ok=True)
            (out / rel.parent / name).write_bytes(content)
            renamed[source.resolve()] = name
        elif source.suffix != ".html":
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out / rel)

    first_load: list[Path] = []
    for page in sorted(SOURCE.rglob("*.html")):
        rel = page.relative_to(SOURCE)

        def ref(match: re.Match[str], page: Path = page) -> str:
            target = (page.parent / match.group(2)).resolve()
            if target not in renamed:
                raise SystemExit(f"{page.name} refers to {match.group(2)}, which is not in the app")
            new = str(Path(match.group(2)).parent / renamed[target]).removeprefix("./")
            return f'{match.group(1)}="{new}"'

        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(HTML_REF.sub(ref, page.read_text(encoding="utf-8")), encoding="utf-8")
    first_load = [out / "index.html", out / "config.json"]
    first_load += [p for p in out.rglob("*") if p.suffix in {".js", ".css"}]  # every module loads at start

    for path in sorted(out.rglob("*")):
        if path.is_file() and path.suffix in TEXT:
            gz = path.with_name(path.name + ".gz")
            gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
            stat = path.stat()
            os.utime(gz, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # never older than its source

    return {str(p.relative_to(out)): (p.with_name(p.name + ".gz")).stat().st_size for p in sorted(set(first_load))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    sizes = build(args.out.resolve())
    total = sum(sizes.values())
    report = {"first_load_gzip_bytes": total, "budget_bytes": BUDGET_BYTES, "files": sizes}
    (args.out / "build-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if total > BUDGET_BYTES:
        sys.exit(f"first load is {total} bytes compressed, over the {BUDGET_BYTES}-byte budget")


if __name__ == "__main__":
    main()
