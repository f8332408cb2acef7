"""The development OAuth issuer: discovery, JWKS, token minting, browser sign-in (code + PKCE) and the device
flow, so every service and the bridge run offline without Auth0. Never installed in a production image.

- :class:`DevIssuer`: the signing key and the tokens it mints; :func:`dev_issuer_from` builds it from
  ``DEV_ISSUER_*``; :func:`dev_verifier` trusts it (``DEV_AUTH=true``).
- :class:`DevCodeFlow` (``code_flow``) and :class:`DevDeviceFlow` (``device_flow``): the two sign-in flows,
  which share one :class:`RefreshTokens` store (``store``) and one :class:`OAuthError` (``errors``).
- ``cloudtolocalllm-dev-issuer``: mint a token, or serve the issuer on its own (``cli``).
"""

from cloudtolocalllm.dev_issuer.code_flow import DevCodeFlow, DevCodeFlowSettings, dev_code_flow_from_env
from cloudtolocalllm.dev_issuer.device_flow import DevDeviceFlow, dev_issuer_routes
from cloudtolocalllm.dev_issuer.errors import OAuthError
from cloudtolocalllm.dev_issuer.issuer import DevIssuer, dev_issuer_from, dev_verifier
from cloudtolocalllm.dev_issuer.store import RefreshTokens
from cloudtolocalllm.dev_issuer.version import __version__

__all__ = [
    "DevCodeFlow",
    "DevCodeFlowSettings",
    "DevDeviceFlow",
    "DevIssuer",
    "OAuthError",
    "RefreshTokens",
    "__version__",
    "dev_code_flow_from_env",
    "dev_issuer_from",
    "dev_issuer_routes",
    "dev_verifier",
]
