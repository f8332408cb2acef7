"""The API key format: ``ctllm_`` + 43 base62 characters (256 bits of randomness) + a 6-character checksum.

Like GitHub's ``ghp_`` tokens: the fixed prefix lets secret scanners (GitHub secret scanning, gitleaks,
trufflehog) find a leaked key with one regular expression, ``ctllm_[0-9A-Za-z]{49}``, and the CRC32 checksum
of the random part (base62, 6 characters) lets them, and us, reject a random look-alike string without a
database lookup.

Only the SHA-256 of a key is stored. A slow password hash (bcrypt, argon2) exists to make guessing a
low-entropy password expensive; a 256-bit random secret cannot be guessed whatever the hash costs, so a
fast hash loses nothing and lets a key be looked up by its digest (an index) in microseconds.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import zlib
from typing import Final

__all__ = [
    "KEY_PATTERN",
    "KEY_PREFIX",
    "MalformedKey",
    "display_prefix",
    "generate_key",
    "key_digest",
    "looks_like_key",
    "parse_key",
]

KEY_PREFIX: Final = "ctllm_"
_ALPHABET: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
_RANDOM_CHARS: Final = 43  # 43 * log2(62) = 256.03 bits
_CHECKSUM_CHARS: Final = 6  # base62 of a CRC32 (62**6 > 2**32)
KEY_PATTERN: Final = re.compile(rf"{KEY_PREFIX}[0-9A-Za-z]{{{_RANDOM_CHARS + _CHECKSUM_CHARS}}}")
"""What a secret scanner matches (the checksum is then verified with :func:`parse_key`)."""
_SHOWN_CHARS: Final = 8  # of the random part, in listings: ~48 bits shown, ~208 stay secret


class MalformedKey(ValueError):
    """Not a key this service issued: wrong prefix, length, alphabet or checksum."""


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode("ascii")), _CHECKSUM_CHARS)


def generate_key() -> str:
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
    return KEY_PREFIX + random_part + _checksum(random_part)


def looks_like_key(token: str) -> bool:
    """This bearer token claims to be an API key (rather than a JWT)."""
    return token.startswith(KEY_PREFIX)


def parse_key(token: str) -> str:
    """The key itself, checked; raises :class:`MalformedKey` (the message never includes the token)."""
    if not KEY_PATTERN.fullmatch(token):
        raise MalformedKey("malformed API key")
    body = token[len(KEY_PREFIX) :]
    random_part, checksum = body[:_RANDOM_CHARS], body[_RANDOM_CHARS:]
    if not secrets.compare_digest(checksum, _checksum(random_part)):
        raise MalformedKey("malformed API key (checksum mismatch)")
    return token


def key_digest(key: str) -> bytes:
    """What the database stores and is searched by."""
    return hashlib.sha256(key.encode("ascii")).digest()


def display_prefix(key: str) -> str:
    """The non-secret start of a key shown in listings, e.g. ``ctllm_AbC12xYz``."""
    return key[: len(KEY_PREFIX) + _SHOWN_CHARS]
