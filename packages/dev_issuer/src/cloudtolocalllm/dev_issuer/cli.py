"""``cloudtolocalllm-dev-issuer``: mint dev tokens, or serve the dev issuer's discovery document and JWKS.

    cloudtolocalllm-dev-issuer token --sub alice            # prints a bearer token valid for 1 h
    cloudtolocalllm-dev-issuer jwks > dev-jwks.json         # its public keys, for OIDC_JWKS_FILE
    cloudtolocalllm-dev-issuer serve --port 8081            # discovery, JWKS, device flow (bridge login)

Keys, issuer URL and audience come from the same variables the services read (DEV_ISSUER_DIR,
DEV_ISSUER_URL, DEV_AUDIENCE), so a minted token is accepted by every service started with DEV_AUTH=true,
and by any service on core given OIDC_ISSUER=$DEV_ISSUER_URL, OIDC_AUDIENCE=$DEV_AUDIENCE and the printed
JWKS as OIDC_JWKS_FILE (no dev issuer installed there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.routing import Mount

from cloudtolocalllm.core import (
    ServiceInfo,
    SettingsError,
    bind_socket,
    configure_logging,
    create_app,
    exit_on_settings_error,
    load_settings,
    serve,
)
from cloudtolocalllm.core.auth import AuthSettings
from cloudtolocalllm.dev_issuer.device_flow import DevDeviceFlow, dev_issuer_routes
from cloudtolocalllm.dev_issuer.issuer import dev_issuer_from
from cloudtolocalllm.dev_issuer.version import __version__

PROG = "cloudtolocalllm-dev-issuer"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a signed access token for a dev user")
    token.add_argument("--sub", default="dev-user", help="user id (the token's subject); default dev-user")
    token.add_argument("--scope", action="append", default=[], help="a scope to grant (repeatable)")
    token.add_argument("--ttl", type=float, default=3600, help="lifetime in seconds; default 3600")
    commands.add_parser("jwks", help="print the public JWKS (for a service's OIDC_JWKS_FILE)")
    serve_cmd = commands.add_parser("serve", help="serve discovery, JWKS and the device flow at DEV_ISSUER_URL's path")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8081)
    serve_cmd.add_argument(
        "--access-token-ttl", type=float, default=3600, help="lifetime of device-flow access tokens; default 3600"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(AuthSettings, environ={**os.environ, "DEV_AUTH": "true"})
    except SettingsError as exc:
        exit_on_settings_error(exc, PROG)
    issuer = dev_issuer_from(settings)
    if args.command == "token":
        print(issuer.mint(args.sub, scopes=args.scope, ttl_s=args.ttl))
        return
    if args.command == "jwks":
        print(json.dumps(issuer.jwks(), indent=2))
        return
    configure_logging(PROG, __version__)
    prefix = urlsplit(settings.dev_issuer_url).path.rstrip("/")
    issuer_routes = dev_issuer_routes(issuer, DevDeviceFlow(issuer, access_token_ttl_s=args.access_token_ttl))
    routes = [Mount(prefix, routes=issuer_routes)] if prefix else issuer_routes
    app = create_app(ServiceInfo(PROG, __version__), routes)
    asyncio.run(serve(app, sock=bind_socket(args.host, args.port)))


if __name__ == "__main__":
    main()
