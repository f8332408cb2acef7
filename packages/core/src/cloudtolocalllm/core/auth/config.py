"""Auth configuration from the environment, and the verifier it describes.

Exactly one issuer is configured: Auth0 (``AUTH0_DOMAIN`` + ``AUTH0_AUDIENCE``), any OIDC issuer
(``OIDC_ISSUER`` + ``OIDC_AUDIENCE``, optionally ``OIDC_JWKS_URL``, or ``OIDC_JWKS_FILE`` to read its keys
from a JWKS file instead of fetching them), or the dev issuer (``DEV_AUTH=true``), which must be asked for
explicitly and is a separate distribution (``cloudtolocalllm-dev-issuer``) whose ``dev_verifier`` builds the
verifier for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

from cloudtolocalllm.core.auth.jwks import KeySource, RemoteJwks, StaticJwks, parse_jwks
from cloudtolocalllm.core.auth.verifier import ASYMMETRIC_ALGORITHMS, TokenVerifier
from cloudtolocalllm.core.settings import SettingsError

__all__ = ["DEV_AUDIENCE", "DEV_ISSUER_URL", "AuthSettings", "build_verifier", "load_jwks_file"]

DEV_ISSUER_URL: Final = "http://localhost:8080/dev-issuer"
DEV_AUDIENCE: Final = "cloudtolocalllm-dev"
DEV_ISSUER_DIR: Final = ".dev/issuer"

Seconds = Annotated[float, msgspec.Meta(ge=0, le=86400)]


class AuthSettings(msgspec.Struct, frozen=True, kw_only=True):
    auth0_domain: str | None = None
    auth0_audience: str | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    # A JWKS document on disk, read once at start-up instead of fetching the issuer's (keys you hold yourself,
    # e.g. tests that mint their own tokens against a production image).
    oidc_jwks_file: str | None = None
    auth_algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    auth_leeway_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 30.0
    auth_jwks_cache_s: Seconds = 600.0
    auth_jwks_min_refetch_s: Seconds = 30.0
    # Verified tokens remembered (by SHA-256 of the token) to skip repeated signature checks; 0 disables.
    auth_token_cache_size: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1024
    dev_auth: bool = False
    dev_issuer_dir: str = DEV_ISSUER_DIR
    dev_issuer_url: str = DEV_ISSUER_URL
    dev_audience: str = DEV_AUDIENCE

    def __post_init__(self) -> None:
        problems: dict[str, str] = {}
        modes = [
            name
            for name, on in (
                ("AUTH0_DOMAIN", self.auth0_domain),
                ("OIDC_ISSUER", self.oidc_issuer),
                ("DEV_AUTH", self.dev_auth),
            )
            if on
        ]
        if not modes:
            problems["AUTH0_DOMAIN"] = (
                "set AUTH0_DOMAIN + AUTH0_AUDIENCE, OIDC_ISSUER + OIDC_AUDIENCE, or DEV_AUTH=true"
            )
        elif len(modes) > 1:
            problems[modes[1]] = f"conflicts with {modes[0]}: configure exactly one issuer"
        if self.auth0_domain and not self.auth0_audience:
            problems["AUTH0_AUDIENCE"] = "required with AUTH0_DOMAIN (the API identifier tokens are issued for)"
        if self.oidc_issuer and not self.oidc_audience:
            problems["OIDC_AUDIENCE"] = "required with OIDC_ISSUER"
        if self.oidc_jwks_file:
            if not self.oidc_issuer:
                problems["OIDC_JWKS_FILE"] = "only with OIDC_ISSUER (the issuer whose keys the file holds)"
            elif self.oidc_jwks_url:
                problems["OIDC_JWKS_FILE"] = "conflicts with OIDC_JWKS_URL: set one place to take the keys from"
            else:
                try:
                    load_jwks_file(self.oidc_jwks_file)
                except ValueError as exc:
                    problems["OIDC_JWKS_FILE"] = str(exc)
        if bad := sorted(set(self.auth_algorithms) - ASYMMETRIC_ALGORITHMS):
            problems["AUTH_ALGORITHMS"] = f"only asymmetric algorithms are allowed, not {', '.join(bad)}"
        if problems:
            raise SettingsError(problems)

    @property
    def issuer(self) -> str:
        if self.auth0_domain:
            return f"https://{self.auth0_domain.removeprefix('https://').rstrip('/')}/"
        if self.oidc_issuer:
            return self.oidc_issuer
        return self.dev_issuer_url

    @property
    def audience(self) -> str:
        return self.auth0_audience or self.oidc_audience or self.dev_audience


def load_jwks_file(path: str) -> dict[str, Any]:
    """A JWKS document from a file, with at least one usable signing key; ``ValueError`` says what is wrong."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError(f"{path} is not a JWKS (no 'keys' list)")
    if not parse_jwks(document):
        raise ValueError(f"{path} holds no usable signing key (asymmetric, with a kid)")
    return document


def _key_source(settings: AuthSettings) -> KeySource:
    if settings.dev_auth:
        # Core holds no dev issuer: its keys are given by the package that has it (dev_verifier).
        raise SettingsError({"DEV_AUTH": "the dev issuer's keys come from cloudtolocalllm-dev-issuer (dev_verifier)"})
    if settings.oidc_jwks_file:
        return StaticJwks(load_jwks_file(settings.oidc_jwks_file))
    if settings.auth0_domain:
        return RemoteJwks(
            jwks_url=settings.issuer + ".well-known/jwks.json",
            cache_ttl_s=settings.auth_jwks_cache_s,
            min_refetch_interval_s=settings.auth_jwks_min_refetch_s,
        )
    return RemoteJwks(
        jwks_url=settings.oidc_jwks_url,
        issuer=settings.oidc_issuer,
        cache_ttl_s=settings.auth_jwks_cache_s,
        min_refetch_interval_s=settings.auth_jwks_min_refetch_s,
    )


def build_verifier(settings: AuthSettings, *, keys: KeySource | None = None) -> TokenVerifier:
    """The verifier the settings describe; ``keys`` replaces where its signing keys come from."""
    return TokenVerifier(
        issuer=settings.issuer,
        audience=settings.audience,
        keys=keys or _key_source(settings),
        algorithms=settings.auth_algorithms,
        leeway_s=settings.auth_leeway_s,
        cache_size=settings.auth_token_cache_size,
    )
