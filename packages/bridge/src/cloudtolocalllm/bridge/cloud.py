"""The cloud a bridge signs in to: its discovery document, and the copy ``login`` keeps in the state dir.

``GET <cloud>/.well-known/cloudtolocalllm`` (served by api-backend) names the OIDC issuer, the bridge's
OAuth client id, the audience and scope for the device flow, the WebSocket URL ``run`` dials and the Ollama
base URL ``connect`` forwards to. ``login <cloud>`` stores it as ``cloud.json`` (0600, beside
``credentials.json``), so ``run`` and ``connect`` need no flags afterwards.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from cloudtolocalllm.bridge.config import ConfigError, is_loopback_host
from cloudtolocalllm.bridge.credentials import write_private_file
from cloudtolocalllm.bridge.oauth import issuer_session, proxy_for

__all__ = [
    "CLOUD_FILE",
    "DISCOVERY_PATH",
    "CloudConfig",
    "CloudUnavailable",
    "api_base_for",
    "cloud_origin",
    "cloud_origin_or_empty",
    "fetch_cloud_config",
    "is_plain_http_remote",
    "load_cloud_config",
    "save_cloud_config",
]

CLOUD_FILE: Final = "cloud.json"
DISCOVERY_PATH: Final = "/.well-known/cloudtolocalllm"
_MAX_BYTES: Final = 64 * 1024
_HTTP_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


class CloudUnavailable(Exception):
    """The cloud's discovery document could not be fetched or is not one (the message says which)."""


class _Document(msgspec.Struct, frozen=True, kw_only=True):
    """The discovery document as the cloud publishes it."""

    version: int
    issuer: str
    client_id: str
    audience: str
    websocket_url: str
    api_base: str
    scope: str = "openid profile offline_access"


class CloudConfig(_Document, frozen=True, kw_only=True):
    """The discovery document, plus the URL the user typed."""

    cloud_url: str


def cloud_origin(url: str) -> str:
    """The cloud's base URL as ``https://host[:port][/prefix]``: a bare host gets https://, ws(s):// maps to
    http(s)://, a trailing ``/ws/bridge`` or ``/api/ollama`` is dropped. ConfigError for anything else."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    scheme = _HTTP_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ConfigError(f"cloud URL {url!r}: expected https://host (e.g. https://app.example.com)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"cloud URL {url!r} must be a plain URL (no credentials, query or fragment)")
    path = parts.path.rstrip("/")
    for suffix in ("/ws/bridge", "/api/ollama"):
        path = path.removesuffix(suffix)
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def cloud_origin_or_empty(url: str) -> str:
    """:func:`cloud_origin`, or "" when ``url`` is not a usable cloud URL (for messages only)."""
    try:
        return cloud_origin(url) if url else ""
    except ConfigError:
        return ""


def api_base_for(cloud_url: str) -> str:
    """``<cloud>/api/ollama``: where ``connect`` forwards when no discovery document says otherwise."""
    return cloud_origin(cloud_url) + "/api/ollama"


def _checked(document: _Document, cloud: str) -> _Document:
    if document.version != 1:
        raise CloudUnavailable(f"{cloud} publishes discovery version {document.version}; upgrade the bridge")
    for name, value, schemes in (
        ("websocket_url", document.websocket_url, ("ws", "wss")),
        ("api_base", document.api_base, ("http", "https")),
        ("issuer", document.issuer, ("http", "https")),
    ):
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise CloudUnavailable(f"{cloud}'s discovery document has an unusable {name}: {value!r}")
    if not document.client_id or not document.audience:
        raise CloudUnavailable(f"{cloud}'s discovery document names no client id or audience")
    return document


async def fetch_cloud_config(cloud_url: str, *, timeout_s: float = 15.0) -> CloudConfig:
    """GET ``<cloud>/.well-known/cloudtolocalllm`` and check it. CloudUnavailable with the reason if not."""
    cloud = cloud_origin(cloud_url)
    url = cloud + DISCOVERY_PATH
    try:
        async with (
            issuer_session(timeout_s) as http,
            http.get(url, allow_redirects=False, proxy=proxy_for(url)) as response,
        ):
            body = await response.content.read(_MAX_BYTES + 1)
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CloudUnavailable(f"cannot reach {cloud}: {exc or type(exc).__name__}") from None
    if status != 200:
        hint = " (is this a CloudToLocalLLM cloud? an older one has no discovery document)" if status == 404 else ""
        raise CloudUnavailable(f"{url} answered HTTP {status}{hint}")
    try:
        document = _checked(msgspec.json.decode(body, type=_Document), cloud)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CloudUnavailable(f"{url} is not a CloudToLocalLLM discovery document: {exc}") from None
    return CloudConfig(cloud_url=cloud, **msgspec.structs.asdict(document))


def is_plain_http_remote(cloud_url: str) -> bool:
    """Whether sign-in tokens would travel unencrypted to another machine."""
    parts = urlsplit(cloud_origin(cloud_url))
    return parts.scheme == "http" and not is_loopback_host(parts.hostname or "")


def load_cloud_config(state_dir: Path) -> CloudConfig | None:
    """The cloud ``login`` stored, or None (no file, or a damaged one: ``login`` rewrites it)."""
    with (
        contextlib.suppress(OSError, msgspec.DecodeError, msgspec.ValidationError),
        (state_dir / CLOUD_FILE).open("rb") as handle,
    ):
        return msgspec.json.decode(handle.read(_MAX_BYTES + 1), type=CloudConfig)
    return None


def save_cloud_config(state_dir: Path, config: CloudConfig) -> None:
    write_private_file(state_dir / CLOUD_FILE, msgspec.json.format(msgspec.json.encode(config)))
