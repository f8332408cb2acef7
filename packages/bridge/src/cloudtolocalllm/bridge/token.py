"""Where the bridge's bearer token comes from, re-read every time it is needed.

Either a token file (``--token-file``; re-read on every connect and every reauth, so a tool that renews
the file keeps a long-running bridge signed in) or the ``CLOUDTOLOCALLLM_TOKEN`` environment variable
(fixed for the life of the process). The token is never logged; only its length and a short fingerprint
(first 8 hex digits of its SHA-256) are, so two log lines can tell whether the token changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

__all__ = [
    "KEY_ENV",
    "TOKEN_ENV",
    "SignInRefused",
    "TokenError",
    "TokenSource",
    "account_of",
    "fingerprint",
    "unverified_claims",
    "unverified_expiry",
]

TOKEN_ENV = "CLOUDTOLOCALLLM_TOKEN"  # noqa: S105 - a variable name, not a secret
KEY_ENV = "CLOUDTOLOCALLLM_BRIDGE_KEY"
"""A bridge key (``ctllm_...``) for headless machines; sent exactly like a token."""
_MAX_TOKEN_BYTES = 64 * 1024


class TokenError(Exception):
    """No usable token: the message says what to do."""


class SignInRefused(TokenError):
    """The sign-in is over (expired with no way to renew it, or its renewal refused): only signing in
    again helps, so the bridge stops instead of retrying (exit status 3)."""


def fingerprint(token: str) -> str:
    """A short, non-reversible tag for logs: tells tokens apart without revealing them."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def unverified_claims(token: str) -> dict[str, object] | None:
    """A JWT's claims, read WITHOUT verifying it (to explain an expired token, to name the account); None
    for anything that is not a JWT (an API key)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, TypeError):
        return None
    return claims if isinstance(claims, dict) else None


def account_of(token: str) -> str:
    """Who a token signs in as, for messages: the JWT's email and subject (unverified), or, for an opaque
    API key, its fingerprint. Never the token itself."""
    claims = unverified_claims(token)
    if claims is None:
        return f"an API key ({fingerprint(token)})"
    subject = str(claims.get("sub") or "?")
    email = claims.get("email")
    return f"{email} ({subject})" if isinstance(email, str) and email and email != subject else subject


def unverified_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read WITHOUT verifying it (only to explain an expired token early)."""
    exp = (unverified_claims(token) or {}).get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class TokenSource:
    """Reads the token from ``token_file`` (preferred) or from ``env_token``."""

    def __init__(self, *, token_file: Path | None = None, env_token: str | None = None, label: str = "") -> None:
        self.token_file = token_file
        self._env_token = env_token.strip() if env_token else None
        self._label = label
        if token_file is None and not self._env_token:
            raise TokenError(f"no token: pass --token-file FILE or set {TOKEN_ENV}")

    @classmethod
    def from_environment(cls, token_file: Path | None) -> TokenSource:
        return cls(token_file=token_file, env_token=os.environ.get(TOKEN_ENV))

    @property
    def can_change(self) -> bool:
        """Whether a later read may return another token (a file can be rewritten; the env cannot)."""
        return self.token_file is not None

    renews_itself: bool = False
    """Whether ``fresh(rejected=...)`` can get a new token by itself (the stored login's refresh token)."""

    def describe(self) -> str:
        """Where the token comes from, for messages (never the token itself)."""
        if self.token_file:
            return f"token file {self.token_file}"
        return self._label or f"environment variable {TOKEN_ENV}"

    def renew_hint(self) -> str | None:
        """What to do when the token is refused, if this source knows better than the generic advice."""
        return None

    async def fresh(self, *, rejected: str | None = None) -> str:
        """The token to use now (on connect and before a reauth). Sources that renew tokens themselves
        (stored login credentials) do it here; ``rejected`` is a token the cloud just refused."""
        return self.read()

    def read(self) -> str:
        """The current token. Raises TokenError with a clear message when there is none."""
        if self.token_file is None:
            assert self._env_token is not None
            return self._env_token
        try:
            with self.token_file.open("rb") as handle:
                info = os.fstat(handle.fileno())
                raw = handle.read(_MAX_TOKEN_BYTES + 1)
        except FileNotFoundError:
            raise TokenError(f"token file {self.token_file} does not exist") from None
        except OSError as exc:
            raise TokenError(f"cannot read token file {self.token_file}: {exc.strerror}") from None
        if len(raw) > _MAX_TOKEN_BYTES:
            raise TokenError(f"token file {self.token_file} is larger than {_MAX_TOKEN_BYTES} bytes")
        try:
            token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise TokenError(f"token file {self.token_file} does not hold an ASCII token") from None
        if not token or any(ch.isspace() for ch in token):
            raise TokenError(f"token file {self.token_file} must hold exactly one token")
        self.world_readable = bool(info.st_mode & (stat.S_IRGRP | stat.S_IROTH))
        return token

    world_readable: bool = False
    """Whether the token file was readable by other users at the last read (the CLI warns)."""
