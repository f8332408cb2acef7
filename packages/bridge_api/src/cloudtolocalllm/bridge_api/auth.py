"""api-backend's authentication: a bearer token is a JWT or an API key (``ctllm_...``), verified behind the
one starlette backend every route uses, so a key is accepted wherever a JWT is."""

from __future__ import annotations

from starlette.authentication import AuthCredentials, BaseUser
from starlette.requests import HTTPConnection

from cloudtolocalllm.bridge_api.keys.format import looks_like_key
from cloudtolocalllm.bridge_api.keys.scopes import key_id_of
from cloudtolocalllm.bridge_api.keys.usage import UsageRecorder
from cloudtolocalllm.bridge_api.keys.verifier import KeyVerifier
from cloudtolocalllm.bridge_api.routing import FORWARDED_HEADER
from cloudtolocalllm.core.auth import AuthenticatedUser, BearerAuthBackend, Principal, TokenVerifier

__all__ = ["ApiAuthBackend", "CredentialVerifier"]


class CredentialVerifier:
    """JWTs to the JWT verifier, API keys to the key verifier (also used for a bridge's Reauth)."""

    def __init__(self, tokens: TokenVerifier, keys: KeyVerifier) -> None:
        self.tokens = tokens
        self.keys = keys

    async def verify(self, token: str) -> Principal:
        if looks_like_key(token):
            return await self.keys.verify(token)
        return await self.tokens.verify(token)

    async def aclose(self) -> None:
        await self.tokens.aclose()


class ApiAuthBackend(BearerAuthBackend):
    """Also counts each key's uses (the request a client sent, not a replica's forwarded hop of it)."""

    def __init__(self, verifier: CredentialVerifier, usage: UsageRecorder) -> None:
        super().__init__(verifier)
        self.usage = usage

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        result = await super().authenticate(conn)
        if result is not None and isinstance(user := result[1], AuthenticatedUser):
            key_id = key_id_of(user.principal)
            if key_id is not None and FORWARDED_HEADER not in conn.headers:
                self.usage.record(key_id)
        return result
