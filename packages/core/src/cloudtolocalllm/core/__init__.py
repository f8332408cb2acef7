"""Shared core of every CloudToLocalLLM service.

Public API (import from these modules; everything else is internal):

- ``cloudtolocalllm.core``: the service toolkit re-exported below.
- ``cloudtolocalllm.core.auth``: token verification (``core[auth]``) and the starlette auth backend.

The re-exports load on first use (PEP 562), so ``import cloudtolocalllm.core`` stays cheap for
command-line tools such as the bridge client, which need settings and logging but not the server stack.
The bridge wire protocol is its own distribution, ``cloudtolocalllm-protocol``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudtolocalllm.core.lazy_exports import lazy_exports
from cloudtolocalllm.core.version import __version__

if TYPE_CHECKING:
    from cloudtolocalllm.core.app import DEFAULT_CSP, ServiceApp, ServiceInfo, create_app
    from cloudtolocalllm.core.health import ReadinessCheck
    from cloudtolocalllm.core.logging import configure_logging, current_request_id
    from cloudtolocalllm.core.metrics import HttpMetrics
    from cloudtolocalllm.core.serving import bind_socket, exit_on_settings_error, serve
    from cloudtolocalllm.core.settings import SettingsError, load_settings

_EXPORTS = {
    "DEFAULT_CSP": "app",
    "ServiceApp": "app",
    "ServiceInfo": "app",
    "create_app": "app",
    "ReadinessCheck": "health",
    "configure_logging": "logging",
    "current_request_id": "logging",
    "HttpMetrics": "metrics",
    "bind_socket": "serving",
    "exit_on_settings_error": "serving",
    "serve": "serving",
    "SettingsError": "settings",
    "load_settings": "settings",
}

__all__ = [
    "DEFAULT_CSP",
    "HttpMetrics",
    "ReadinessCheck",
    "ServiceApp",
    "ServiceInfo",
    "SettingsError",
    "__version__",
    "bind_socket",
    "configure_logging",
    "create_app",
    "current_request_id",
    "exit_on_settings_error",
    "load_settings",
    "serve",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, __all__)
