"""CloudToLocalLLM static server: one directory over HTTP, on core (see docs/static-site.md).

Public API: :class:`StaticFiles` (the ASGI app), :func:`build_app` (it under core's service app),
:class:`Settings` and :func:`load` (``STATIC_*`` environment variables).
"""

from __future__ import annotations

from cloudtolocalllm.static_site.app import build_app
from cloudtolocalllm.static_site.server import StaticFiles
from cloudtolocalllm.static_site.settings import Settings, load
from cloudtolocalllm.static_site.version import __version__

__all__ = ["Settings", "StaticFiles", "__version__", "build_app", "load"]
