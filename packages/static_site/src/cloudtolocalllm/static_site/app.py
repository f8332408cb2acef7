"""The static server as a core service: core's /health, /ready, /metrics, logs and headers, then the files."""

from __future__ import annotations

from starlette.routing import Route

from cloudtolocalllm.core import ServiceApp, ServiceInfo, create_app
from cloudtolocalllm.static_site.server import StaticFiles
from cloudtolocalllm.static_site.settings import Settings
from cloudtolocalllm.static_site.version import __version__

__all__ = ["FILES_ROUTE", "build_app"]

# One route template for every file keeps the metrics' label set bounded.
FILES_ROUTE = "/{path:path}"


def build_app(settings: Settings) -> ServiceApp:
    """Core's routes come first, so a file named ``health`` in the root never shadows ``/health``."""
    files = StaticFiles(settings.root, spa=settings.spa, max_age=settings.max_age)
    return create_app(
        ServiceInfo(name=settings.service_name, version=__version__),
        # No ``methods``: the files app answers every method itself (405 with Allow: GET, HEAD).
        [Route(FILES_ROUTE, files, name="files")],
        content_security_policy=settings.csp or None,
    )
