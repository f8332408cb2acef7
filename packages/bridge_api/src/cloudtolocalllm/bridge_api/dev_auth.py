"""The dev issuer inside api-backend (``DEV_AUTH=true``), from the ``dev`` extra that production images leave out.

With it: the verifier trusts the dev issuer's key, and the issuer's discovery, JWKS, browser sign-in (code +
PKCE) and device flow are served at ``DEV_ISSUER_URL``'s path, the two flows sharing one refresh-token store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from cloudtolocalllm.core.auth import AuthSettings, TokenVerifier

__all__ = ["DevAuth", "DevIssuerMissing", "dev_auth"]

MISSING: Final = "DEV_AUTH=true needs the dev issuer, which is not installed: install cloudtolocalllm-bridge-api[dev]"


class DevIssuerMissing(Exception):
    """DEV_AUTH=true without the ``dev`` extra (a production install): one line for the operator."""

    def __init__(self) -> None:
        super().__init__(MISSING)


@dataclass(frozen=True)
class DevAuth:
    verifier: TokenVerifier
    routes: list[BaseRoute]
    install_cors: Callable[[Starlette], None]  # the dev app's origins (DEV_REDIRECT_URIS) only


def dev_auth(auth: AuthSettings) -> DevAuth:
    """The dev issuer's verifier and routes; :class:`DevIssuerMissing` when it is not installed."""
    try:
        from cloudtolocalllm.dev_issuer import DevDeviceFlow, dev_code_flow_from_env, dev_issuer_from, dev_verifier
    except ModuleNotFoundError as exc:
        if exc.name != "cloudtolocalllm.dev_issuer":
            raise  # installed, but something it needs is not: not the missing extra
        raise DevIssuerMissing from None
    code_flow = dev_code_flow_from_env(dev_issuer_from(auth))
    # `bridge login` (the device flow) in front: it hands the code flow every grant it does not serve.
    device_flow = DevDeviceFlow(code_flow.issuer, refresh_tokens=code_flow.refresh_tokens)
    routes = device_flow.routes(behind=code_flow) + code_flow.routes() + code_flow.issuer.routes()
    prefix = urlsplit(auth.dev_issuer_url).path.rstrip("/")
    return DevAuth(dev_verifier(auth), [Mount(prefix, routes=routes)] if prefix else routes, code_flow.install_cors)
