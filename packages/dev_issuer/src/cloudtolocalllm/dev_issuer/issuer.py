"""An embedded OIDC-style issuer for development and tests, so every service runs offline without Auth0.

It keeps one RSA key in a directory (created on first use, mode 0600), serves its discovery document and
JWKS, and mints tokens for any user. Services enable it only with ``DEV_AUTH=true``; production images
do not even install it (it is the ``cloudtolocalllm-dev-issuer`` distribution, a development extra).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloudtolocalllm.core.auth import AuthSettings, StaticJwks, TokenVerifier, build_verifier

__all__ = ["DevIssuer", "dev_issuer_from", "dev_verifier"]

log = logging.getLogger(__name__)

KEY_FILE: Final = "signing-key.pem"
ALGORITHM: Final = "RS256"


def _thumbprint(public_jwk: dict[str, Any]) -> str:
    # RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
    canonical = json.dumps({k: public_jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _load_or_create_key(directory: Path) -> rsa.RSAPrivateKey:
    path = directory / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        return key
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # Write then rename so a concurrent reader never sees half a key; O_EXCL + 0600 keeps it private.
    tmp = directory / f".{KEY_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    try:
        os.link(tmp, path)  # fails if another process won the race: use its key instead
    except FileExistsError:
        tmp.unlink()
        return _load_or_create_key(directory)
    tmp.unlink()
    return key


class DevIssuer:
    def __init__(self, directory: Path, *, issuer: str, audience: str) -> None:
        self.issuer = issuer
        self.audience = audience
        self._private_key = _load_or_create_key(directory)
        public_jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self._private_key.public_key(), as_dict=True)
        self.kid = _thumbprint(public_jwk)
        self._public_jwk = {**public_jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._public_jwk)]}

    def key_source(self) -> StaticJwks:
        return StaticJwks(self.jwks())

    def mint(
        self,
        subject: str,
        *,
        scopes: Iterable[str] = (),
        ttl_s: float = 3600,
        audience: str | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience or self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl_s),
            "scope": " ".join(scopes),
            **(extra_claims or {}),
        }
        return jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def routes(self) -> list[Route]:
        """Discovery and JWKS, to mount at the issuer URL's path."""

        async def discovery(request: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.issuer.rstrip("/") + "/.well-known/jwks.json",
                    "id_token_signing_alg_values_supported": [ALGORITHM],
                    "subject_types_supported": ["public"],
                }
            )

        async def jwks(request: Request) -> JSONResponse:
            return JSONResponse(self.jwks(), headers={"Cache-Control": "public, max-age=300"})

        return [
            Route("/.well-known/openid-configuration", discovery),
            Route("/.well-known/jwks.json", jwks),
        ]


def dev_issuer_from(settings: AuthSettings) -> DevIssuer:
    """The issuer ``DEV_ISSUER_DIR``, ``DEV_ISSUER_URL`` and ``DEV_AUDIENCE`` describe."""
    return DevIssuer(Path(settings.dev_issuer_dir), issuer=settings.dev_issuer_url, audience=settings.dev_audience)


def dev_verifier(settings: AuthSettings) -> TokenVerifier:
    """A verifier that trusts the dev issuer's own key (``DEV_AUTH=true``)."""
    log.warning("DEV_AUTH is on: tokens from the embedded dev issuer are accepted; never use this in production")
    return build_verifier(settings, keys=dev_issuer_from(settings).key_source())
