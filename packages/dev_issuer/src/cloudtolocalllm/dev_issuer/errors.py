"""The one error type of the dev issuer's endpoints: an OAuth error response (RFC 6749 section 5.2)."""

from __future__ import annotations

from typing import Final

from starlette.responses import JSONResponse

__all__ = ["NO_STORE", "OAuthError"]

NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """``error`` and ``error_description`` as JSON, never cached; both flows raise it."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> JSONResponse:
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, status_code=self.status, headers=NO_STORE)
