"""Path validation on the raw bytes, and containment after resolving symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudtolocalllm.static_site.paths import RequestPath, contained, parse_request_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", RequestPath((), True)),
        (b"/index.html", RequestPath(("index.html",), False)),
        (b"/docs/", RequestPath(("docs",), True)),
        (b"/docs", RequestPath(("docs",), False)),
        (b"/docs/guide.html?x=1", RequestPath(("docs", "guide.html"), False)),
        (b"/caf%C3%A9/men%C3%BC.html", RequestPath(("café", "menü.html"), False)),
        (b"/a%20b.txt", RequestPath(("a b.txt",), False)),
    ],
)
def test_accepted_paths(raw: bytes, expected: RequestPath) -> None:
    assert parse_request_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"/../secret.txt",
        b"/docs/../../secret.txt",
        b"/./index.html",
        b"/%2e%2e/secret.txt",
        b"/%2E%2E/secret.txt",
        b"/.%2e/secret.txt",
        b"/%2e%2e%2fsecret.txt",  # encoded slash
        b"/..%2Fsecret.txt",
        b"/docs%2fguide.html",
        b"/%252e%252e%252fsecret.txt",  # double-encoded: '%' left after one decode
        b"/..\\secret.txt",  # raw backslash
        b"/..%5csecret.txt",
        b"/%5C..%5Csecret.txt",
        b"/index.html%00.js",
        b"/index.html\x00",
        b"/%0aindex.html",  # control characters
        b"/%7f",
        b"//etc/passwd",  # empty segment: absolute-path trick
        b"/docs//guide.html",
        b"/.env",
        b"/.git/config",
        b"/docs/.hidden.html",
        b"/..;/secret.txt",
        b"/%c0%ae%c0%ae/secret.txt",  # overlong UTF-8 dots: invalid UTF-8
        b"/%ff.txt",
        b"relative.txt",
        b"",
        b"/" + b"a" * 256,  # one segment longer than any file name
        b"/a" * 2049,  # whole path too long
    ],
)
def test_refused_paths(raw: bytes) -> None:
    assert parse_request_path(raw) is None


def test_containment_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "file.txt").write_text("x")
    (tmp_path / "outside.txt").write_text("secret")
    (root / ".env").write_text("secret")
    (root / "in.txt").symlink_to("file.txt")
    (root / "dir" / "up.txt").symlink_to("../file.txt")
    (root / "out.txt").symlink_to(tmp_path / "outside.txt")
    (root / "out-dir").symlink_to(tmp_path, target_is_directory=True)
    (root / "dotenv.txt").symlink_to(".env")
    real_root = os.path.realpath(root)

    def check(*parts: str) -> str | None:
        return contained(real_root, os.path.join(real_root, *parts))

    assert check("file.txt") == os.path.join(real_root, "file.txt")
    assert check("in.txt") == os.path.join(real_root, "file.txt")
    assert check("dir", "up.txt") == os.path.join(real_root, "file.txt")
    assert check("missing.txt") == os.path.join(real_root, "missing.txt")
    assert check() == real_root
    assert check("out.txt") is None
    assert check("out-dir", "outside.txt") is None
    assert check("dotenv.txt") is None  # a link to a dotfile is a dotfile
    assert check("..", "outside.txt") is None
    assert contained(real_root, str(tmp_path / "outside.txt")) is None
    # A sibling directory whose name starts with the root's name is not inside it.
    (tmp_path / "root-evil").mkdir()
    assert contained(real_root, str(tmp_path / "root-evil" / "x")) is None
