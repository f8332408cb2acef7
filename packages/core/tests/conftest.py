from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.dev_issuer import DevIssuer

ISSUER = "https://issuer.test/"
AUDIENCE = "https://api.cloudtolocalllm.test"


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer(tmp_path / "issuer", issuer=ISSUER, audience=AUDIENCE)


class JwksServer:
    """A real HTTP JWKS endpoint on loopback whose key set a test can rotate, counting fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        self.url = ""

    async def endpoint(self, request: Request) -> JSONResponse:
        self.fetches += 1
        return JSONResponse(self.document)


@pytest.fixture
async def jwks_server(issuer: DevIssuer) -> AsyncIterator[JwksServer]:
    server = JwksServer(issuer.jwks())
    app = Starlette(routes=[Route("/.well-known/jwks.json", server.endpoint)])
    async with running_server(app) as base_url:
        server.url = base_url + "/.well-known/jwks.json"
        yield server
