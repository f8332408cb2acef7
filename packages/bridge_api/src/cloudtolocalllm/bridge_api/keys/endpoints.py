"""``/api/keys``: a signed-in user creates, lists and revokes their API keys (an API key cannot).

POST   /api/keys       {"name": str, "scopes": [...]} -> 201 the record + "key" (shown this once only)
GET    /api/keys       -> 200 {"keys": [record, ...]}
DELETE /api/keys/{id}  -> 204; 404 when the id is not one of the caller's live keys
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cloudtolocalllm.bridge_api.database import DatabaseUnavailable
from cloudtolocalllm.bridge_api.keys.scopes import key_id_of
from cloudtolocalllm.bridge_api.keys.service import KeyService
from cloudtolocalllm.bridge_api.keys.store import KeyRecord, TooManyKeys
from cloudtolocalllm.core.auth import InsufficientScope, MissingCredentials, auth_error_response

__all__ = ["key_routes"]

_MAX_BODY: Final = 4096
_NO_STORE: Final = {"Cache-Control": "no-store"}

ScopeName = Literal["inference", "models:write", "bridge"]


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    scopes: Annotated[list[ScopeName], msgspec.Meta(min_length=1, max_length=3)]


_decode_new_key = msgspec.json.Decoder(NewKey).decode


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={**_NO_STORE, **headers})


def _unavailable() -> JSONResponse:
    return _error(
        503, "API keys are unavailable right now (database unreachable): try again shortly", **{"Retry-After": "5"}
    )


def _owner(request: Request) -> str | Response:
    """The signed-in user managing keys, or the refusal."""
    if not request.user.is_authenticated:
        return auth_error_response(MissingCredentials("authentication required"))
    if key_id_of(request.user.principal) is not None:
        return auth_error_response(
            InsufficientScope("API keys cannot manage API keys: sign in to manage them"), status=403
        )
    return str(request.user.identity)


def _record_json(record: KeyRecord, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = msgspec.to_builtins(record)
    document.update(extra)
    return document


async def _read_body(request: Request) -> bytes | None:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            return None
    return body


def key_routes(keys: KeyService) -> list[BaseRoute]:
    async def create(request: Request) -> Response:
        owner = _owner(request)
        if isinstance(owner, Response):
            return owner
        body = await _read_body(request)
        if body is None:
            return _error(413, f"request body larger than {_MAX_BODY} bytes")
        try:
            new = _decode_new_key(body)
        except msgspec.ValidationError as exc:
            return _error(400, f"invalid key request: {exc} (scopes: inference, models:write, bridge)")
        except msgspec.DecodeError:
            return _error(400, 'invalid key request: expected JSON {"name": "...", "scopes": ["inference"]}')
        try:
            record, key = await keys.create(owner, new.name, list(new.scopes))
        except TooManyKeys as exc:
            return _error(409, str(exc))
        except DatabaseUnavailable:
            return _unavailable()
        return JSONResponse(_record_json(record, key=key), status_code=201, headers=_NO_STORE)

    async def listing(request: Request) -> Response:
        owner = _owner(request)
        if isinstance(owner, Response):
            return owner
        try:
            records = await keys.list(owner)
        except DatabaseUnavailable:
            return _unavailable()
        return JSONResponse({"keys": [_record_json(r) for r in records]}, headers=_NO_STORE)

    async def revoke(request: Request) -> Response:
        owner = _owner(request)
        if isinstance(owner, Response):
            return owner
        try:
            revoked = await keys.revoke(owner, request.path_params["key_id"])
        except DatabaseUnavailable:
            return _unavailable()
        if not revoked:
            return _error(404, "no such API key")
        return Response(status_code=204, headers=_NO_STORE)

    return [
        Route("/api/keys", create, methods=["POST"]),
        Route("/api/keys", listing, methods=["GET"]),
        Route("/api/keys/{key_id}", revoke, methods=["DELETE"]),
    ]
