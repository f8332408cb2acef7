"""Content types from an explicit table, so the answer never depends on the host's ``/etc/mime.types``.

Browsers enforce some of these (``X-Content-Type-Options: nosniff`` is on every response, module scripts
need a JavaScript type, ``WebAssembly.instantiateStreaming`` needs ``application/wasm``), so they are part
of the server's contract rather than a guess. Textual types carry ``charset=utf-8``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_CONTENT_TYPE", "content_type", "is_compressible"]

DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"

_UTF8: Final = "; charset=utf-8"

# Extension (lower case, without the dot) -> media type without parameters.
_TYPES: Final[dict[str, str]] = {
    # documents and code
    "html": "text/html",
    "htm": "text/html",
    "css": "text/css",
    "js": "text/javascript",  # RFC 9239: text/javascript is the one JavaScript type
    "mjs": "text/javascript",
    "cjs": "text/javascript",
    "json": "application/json",
    "map": "application/json",  # source maps
    "webmanifest": "application/manifest+json",
    "xml": "application/xml",
    "rss": "application/rss+xml",
    "atom": "application/atom+xml",
    "txt": "text/plain",
    "md": "text/markdown",
    "csv": "text/csv",
    "sha256": "text/plain",  # checksum files: `sha256sum -c` input
    "sha512": "text/plain",
    "asc": "application/pgp-signature",
    "sig": "application/pgp-signature",
    "sh": "text/plain",  # shown, not executed, by a browser
    "wasm": "application/wasm",
    # images
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "ico": "image/vnd.microsoft.icon",
    # fonts
    "woff2": "font/woff2",
    "woff": "font/woff",
    "ttf": "font/ttf",
    "otf": "font/otf",
    # media
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    # downloads and archives
    "pdf": "application/pdf",
    "deb": "application/vnd.debian.binary-package",
    "rpm": "application/x-rpm",
    # No registered type for wheels; they are zip files meant for pip, not for a browser to open or
    # unpack, so they download as opaque bytes.
    "whl": "application/octet-stream",
    "zip": "application/zip",
    "gz": "application/gzip",
    "tgz": "application/gzip",
    "br": "application/octet-stream",
    "xz": "application/x-xz",
    "zst": "application/zstd",
    "tar": "application/x-tar",
}

_TEXTUAL: Final = frozenset(
    {
        "application/json",
        "application/manifest+json",
        "application/xml",
        "application/rss+xml",
        "application/atom+xml",
        "image/svg+xml",
    }
)

# Types worth serving from a precompressed sibling; these responses always carry Vary: Accept-Encoding.
_COMPRESSIBLE: Final = _TEXTUAL | {
    "application/wasm",
    "application/pgp-signature",
    "image/vnd.microsoft.icon",
    "font/ttf",
    "font/otf",
}


def _extension(name: str) -> str:
    _, dot, ext = name.rpartition(".")
    return ext.lower() if dot else ""


def _media_type(name: str) -> str:
    return _TYPES.get(_extension(name), DEFAULT_CONTENT_TYPE)


def content_type(name: str) -> str:
    """The Content-Type header value for a file name (only its last extension counts)."""
    media = _media_type(name)
    if media.startswith("text/") or media in _TEXTUAL:
        return media + _UTF8
    return media


def is_compressible(name: str) -> bool:
    media = _media_type(name)
    return media.startswith("text/") or media in _COMPRESSIBLE
