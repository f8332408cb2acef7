"""A minimal service built on core, run as a real process by test_serving.py (also the docs' example)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloudtolocalllm.core import (
    ServiceInfo,
    bind_socket,
    configure_logging,
    create_app,
    exit_on_settings_error,
    load_settings,
    serve,
)
from cloudtolocalllm.core.settings import SettingsError


class Settings(msgspec.Struct, kw_only=True):
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    host: str = "127.0.0.1"
    greeting: str
    graceful_timeout_s: float = 10.0


async def slow(request: Request) -> JSONResponse:
    logging.getLogger("sample").info("slow request started")  # tests signal only once it is in flight
    await asyncio.sleep(float(request.query_params.get("seconds", "1")))
    return JSONResponse({"done": True, "greeting": request.app.state.greeting})


def main() -> None:
    try:
        settings = load_settings(Settings, prefix="SAMPLE_")
    except SettingsError as exc:
        exit_on_settings_error(exc, "sample-service")
    configure_logging("sample-service", "0.0.1")
    app = create_app(ServiceInfo("sample-service", "0.0.1"), [Route("/slow", slow)])
    app.state.greeting = settings.greeting
    sock = bind_socket(settings.host, settings.port)
    logging.getLogger("sample").info("listening", extra={"port": sock.getsockname()[1]})
    asyncio.run(serve(app, sock=sock, graceful_timeout_s=settings.graceful_timeout_s))


if __name__ == "__main__":
    main()
