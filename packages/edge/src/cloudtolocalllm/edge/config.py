"""Typed edge configuration, loaded from TOML.

Every field has a default, and the defaults reproduce the seed design's routing table for the dev domain
``localhost``: ``localhost`` and ``docs.localhost`` go to *static-site*, ``app.localhost`` to *flutter-app*,
and ``app.localhost`` ``/api/`` and ``/ws/`` to *api-backend*. Set ``domain`` to serve the real domains.

Host names may contain ``{domain}``, replaced by the top-level ``domain``. A bad file raises
:class:`ConfigError`, whose message names the field path (``$.sites[2].routes[0].upstream``) and the problem.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta, Struct, field

__all__ = [
    "Acme",
    "Cache",
    "CacheRule",
    "ConfigError",
    "EdgeConfig",
    "Gzip",
    "HealthChecks",
    "Listen",
    "Logging",
    "NginxProcess",
    "Pool",
    "RateLimit",
    "Route",
    "SecurityHeaders",
    "Site",
    "Timeouts",
    "Tls",
    "TrustedProxies",
    "load_config",
    "parse_config",
]

# A value rendered into nginx.conf inside double quotes: no control characters and no ``$`` (nginx would
# read it as a variable; there is no escape for it).
_LITERAL_RE: Final = r"^[^\x00-\x1f\x7f$]*$"
Literal_ = Annotated[str, Meta(pattern=_LITERAL_RE)]
_NAME_RE: Final = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
_HOST_RE: Final = r"^(?:\*\.)?(?:[A-Za-z0-9-]+|\{domain\})(?:\.(?:[A-Za-z0-9-]+|\{domain\}))*$"
# host:port, host a DNS name, an IPv4 address or a bracketed IPv6 address.
_INSTANCE_RE: Final = r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]{1,5}$"
_URL_PATH_RE: Final = r"^/[^\x00-\x20\x7f\"'{};$\\]*$"
_SIZE_RE: Final = r"^[0-9]+[kKmMgG]?$"
_BUFFER_RE: Final = r"^(?:[0-9]+[kKmM]?)?$"
_PATH_RE: Final = r"^[^\x00-\x20\x7f\"';$\\]+$"
Name = Annotated[str, Meta(pattern=_NAME_RE)]
HostName = Annotated[str, Meta(pattern=_HOST_RE)]
Instance = Annotated[str, Meta(pattern=_INSTANCE_RE)]
UrlPath = Annotated[str, Meta(pattern=_URL_PATH_RE)]
Size = Annotated[str, Meta(pattern=_SIZE_RE)]
PathStr = Annotated[str, Meta(pattern=_PATH_RE)]
Seconds = Annotated[float, Meta(gt=0)]
Port = Annotated[int, Meta(ge=1, le=65535)]

DEFAULT_CSP: Final = (
    "default-src 'self'; base-uri 'self'; object-src 'none'; frame-ancestors 'self'; "
    "img-src 'self' data: https:; style-src 'self' 'unsafe-inline'; script-src 'self' 'wasm-unsafe-eval'; "
    "font-src 'self' data:; connect-src 'self' https: wss:"
)
# Mozilla "intermediate" TLS 1.2 suites, ECDHE only (forward secrecy, no DH parameters to manage).
DEFAULT_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def _size_bytes(size: str) -> int:
    """An nginx size (``512``, ``64k``, ``1m``, ``1g``) in bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    unit = size[-1:].lower()
    return int(size[:-1]) * units[unit] if unit in units else int(size)


class ConfigError(Exception):
    """The configuration is unreadable or invalid; ``problems`` lists ``(field path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "edge config") -> None:
        self.problems = problems
        self.source = source
        lines = [f"  {path}: {message}" for path, message in problems]
        super().__init__(f"invalid {source}:\n" + "\n".join(lines))


class _Base(Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Listen(_Base):
    """Where nginx listens. ``public_https_port`` is the port browsers use (it goes into redirects)."""

    addresses: list[str] = field(default_factory=lambda: ["0.0.0.0"])  # noqa: S104 - the container's edge
    http_port: Port = 80
    https_port: Port = 443
    public_https_port: Port = 443


class Tls(_Base):
    """TLS termination. Paths may contain ``{domain}``. TLS 1.2 and 1.3 only; nothing older is offered."""

    enabled: bool = True
    certificate: PathStr = "/etc/letsencrypt/live/{domain}/fullchain.pem"
    certificate_key: PathStr = "/etc/letsencrypt/live/{domain}/privkey.pem"
    protocols: list[Literal["TLSv1.2", "TLSv1.3"]] = field(default_factory=lambda: ["TLSv1.2", "TLSv1.3"])
    ciphers: Annotated[str, Meta(pattern=r"^[A-Za-z0-9:_+-]+$")] = DEFAULT_CIPHERS
    http2: bool = True
    redirect_http: bool = True
    redirect_status: Literal[301, 302, 307, 308] = 301
    hsts_max_age: Annotated[int, Meta(ge=0)] = 63072000
    hsts_include_subdomains: bool = True
    hsts_preload: bool = False


class Acme(_Base):
    """ACME http-01: certbot's webroot, served over plain HTTP under /.well-known/acme-challenge/."""

    webroot: PathStr = "/var/www/certbot"


class SecurityHeaders(_Base):
    """Sent on every response (errors and redirects included). An empty value omits that header."""

    x_frame_options: Literal_ = "SAMEORIGIN"
    x_content_type_options: Literal_ = "nosniff"
    x_xss_protection: Literal_ = "1; mode=block"
    referrer_policy: Literal_ = "strict-origin-when-cross-origin"
    content_security_policy: Literal_ = DEFAULT_CSP
    permissions_policy: Literal_ = ""
    extra: dict[Annotated[str, Meta(pattern=r"^[A-Za-z0-9-]+$")], Literal_] = field(default_factory=dict)

    def items(self, *, csp: str | None = None) -> list[tuple[str, str]]:
        pairs = [
            ("X-Frame-Options", self.x_frame_options),
            ("X-Content-Type-Options", self.x_content_type_options),
            ("X-XSS-Protection", self.x_xss_protection),
            ("Referrer-Policy", self.referrer_policy),
            ("Content-Security-Policy", self.content_security_policy if csp is None else csp),
            ("Permissions-Policy", self.permissions_policy),
            *sorted(self.extra.items()),
        ]
        return [(name, value) for name, value in pairs if value]


class RateLimit(_Base):
    """A request-rate zone keyed by the real client address (after the trusted-proxy rewrite).

    ``delay`` is how many of the ``burst`` requests pass at once; the rest of the burst is queued and released
    at ``rate``. ``None`` (the default) passes the whole burst without queueing.
    """

    rate: Annotated[int, Meta(ge=1)]
    per: Literal["s", "m"] = "s"
    burst: Annotated[int, Meta(ge=0)] = 0
    delay: Annotated[int, Meta(ge=0)] | None = None
    zone_size: Size = "10m"
    retry_after: Annotated[int, Meta(ge=1)] | None = None

    @property
    def retry_after_s(self) -> int:
        if self.retry_after is not None:
            return self.retry_after
        period = 1 if self.per == "s" else 60
        return max(1, -(-period // self.rate))


def _default_rate_limits() -> dict[str, RateLimit]:
    return {"api": RateLimit(rate=10, burst=20), "general": RateLimit(rate=30, burst=100)}


class TrustedProxies(_Base):
    """Proxies whose X-Forwarded-For is believed (nginx realip, recursive). Empty: trust nobody."""

    addresses: list[str] = field(default_factory=list)
    header: Literal["X-Forwarded-For", "X-Real-IP", "proxy_protocol"] = "X-Forwarded-For"


class Timeouts(_Base):
    """Proxy timeouts. ``read`` and ``send`` are idle timeouts between two reads/writes, not total times."""

    connect: Seconds = 5
    read: Seconds = 60
    send: Seconds = 60


class Route(_Base):
    """A path on a site, proxied to an upstream pool with the request URI unchanged (no prefix stripping).

    ``path`` is a prefix (``/api/``) unless ``exact``. ``streaming`` turns off response and request
    buffering (NDJSON/SSE answers, model uploads); ``websocket`` also forwards the Upgrade handshake.
    ``cache`` keeps public responses in the edge's cache (see :class:`Cache`); public content only, never
    with ``streaming`` or ``websocket``.
    """

    path: UrlPath
    upstream: Name
    exact: bool = False
    websocket: bool = False
    streaming: bool = False
    rate_limit: Name | None = "general"
    json_errors: bool = False
    cache_rules: bool = True
    cache: bool = False
    max_body_size: Size = "1m"
    timeouts: Timeouts | None = None


class Site(_Base):
    """A virtual host: its names and its routes. ``content_security_policy`` overrides the global one."""

    name: Name
    hosts: list[HostName]
    routes: list[Route]
    content_security_policy: Literal_ | None = None


class Pool(_Base):
    """An upstream pool: several instances, load-balanced, each health-checked at ``health_path``."""

    instances: Annotated[list[Instance], Meta(min_length=1)]
    health_path: UrlPath = "/health"
    keepalive: Annotated[int, Meta(ge=0)] = 32
    balance: Literal["round_robin", "least_conn"] = "least_conn"


class CacheRule(_Base):
    """``Cache-Control`` for successful responses whose path matches ``pattern`` (PCRE). First match wins,
    in file order; a path no rule matches keeps the upstream's own header."""

    pattern: Annotated[str, Meta(pattern=r"^[^\x00-\x1f\x7f\"]+$")]
    cache_control: Literal_


def _default_cache_rules() -> list[CacheRule]:
    return [
        # Listed first so nothing below can give HTML, the service worker, the unhashed app bundle
        # (main.dart.js) or a version manifest a long lifetime: clients must see a new release at once.
        CacheRule(
            pattern=r"(?:/|\.html?|/(?:version|manifest|asset-manifest)\.json|/(?:flutter_service_worker|"
            r"service-worker|sw|main\.dart)\.js|/flutter_bootstrap\.js)$",
            cache_control="no-cache",
        ),
        # Content-hashed names only (name.3f2a9c1b.js, name-3f2a9c1b.css): the hash changes with the content.
        CacheRule(
            pattern=r"[.-][0-9a-f]{8,}\.(?:js|mjs|css|wasm|map|woff2?|ttf|otf|png|jpe?g|gif|svg|webp|avif|ico)$",
            cache_control="public, max-age=31536000, immutable",
        ),
    ]


class Cache(_Base):
    """The edge's HTTP cache (nginx ``proxy_cache``) for routes with ``cache = true``.

    A response is stored only when it is a ``200`` with a ``Cache-Control`` header that says neither
    ``private`` nor ``no-store``, has no ``Set-Cookie`` and no ``Vary: *``, and answers a GET/HEAD without
    ``Authorization``. A stored copy is served for ``revalidate_after`` seconds, then revalidated with the
    origin (``If-None-Match``/``If-Modified-Since``; a ``304`` refreshes it). While the origin is down or
    answering 5xx, stored copies are served stale. ``path`` defaults to ``<runtime_dir>/cache``.
    ``open_files`` stored files stay open in each worker (``0``: opened for every hit).
    """

    enabled: bool = True
    path: PathStr | None = None
    keys_zone_size: Size = "10m"
    max_size: Size = "256m"
    inactive: Seconds = 86400
    revalidate_after: Annotated[int, Meta(ge=1)] = 1
    lock_timeout: Seconds = 5
    status_header: bool = False
    # Stored files each worker keeps open (nginx open_file_cache): no open/fstat/close per hit. A file the
    # cache replaces (new inode) is reopened at once: nginx checks the inode recorded in its cache entry.
    open_files: Annotated[int, Meta(ge=0, le=100000)] = 256


class Gzip(_Base):
    """Response compression. Streaming types (NDJSON, SSE) are deliberately absent from ``types``."""

    enabled: bool = True
    level: Annotated[int, Meta(ge=1, le=9)] = 5
    min_length: Annotated[int, Meta(ge=0)] = 1024
    types: list[Annotated[str, Meta(pattern=r"^[a-z0-9.+-]+/[a-z0-9.+-]+$")]] = field(
        default_factory=lambda: [
            "text/plain",
            "text/css",
            "text/xml",
            "text/javascript",
            "application/javascript",
            "application/json",
            "application/manifest+json",
            "application/xml",
            "application/wasm",
            "image/svg+xml",
        ]
    )


class Logging(_Base):
    """Access log: one JSON object per line in core's schema, never with query strings or credentials.

    Each worker collects access-log lines in a ``buffer`` (``"64k"``; ``""`` or ``0``: one write per
    request) and writes it when full, ``flush_s`` seconds after its oldest line, and when the worker exits
    (reload, graceful stop, fast stop) or reopens its logs; only a killed worker (SIGKILL, crash) loses its
    buffered lines. To a path under ``/dev/`` or ``/proc/`` (the default ``/dev/stdout``, usually a pipe) at
    most 4 KiB are written at once: the kernel keeps such writes whole, so several workers' lines never
    interleave.
    """

    access_log: PathStr = "/dev/stdout"
    error_log: PathStr = "stderr"
    error_level: Literal["debug", "info", "notice", "warn", "error", "crit"] = "warn"
    service: Name = "edge"
    buffer: Annotated[str, Meta(pattern=_BUFFER_RE)] | Annotated[int, Meta(ge=0)] = "64k"
    flush_s: Annotated[float, Meta(ge=0.001, le=60)] = 1

    @property
    def buffer_bytes(self) -> int:
        """The buffer size in bytes (0: unbuffered)."""
        if isinstance(self.buffer, int):
            return self.buffer
        return _size_bytes(self.buffer) if self.buffer else 0


class NginxProcess(_Base):
    """nginx's own process settings. ``runtime_dir`` holds the rendered config, pid, temp files and logs."""

    binary: PathStr = "nginx"
    # Only meaningful when nginx starts as root (it then drops workers to this user); leave unset otherwise.
    user: Name | None = None
    runtime_dir: PathStr = "/run/cloudtolocalllm-edge"
    worker_processes: Annotated[str, Meta(pattern=r"^(?:auto|[1-9][0-9]*)$")] = "auto"
    worker_connections: Annotated[int, Meta(ge=16)] = 4096
    keepalive_timeout: Seconds = 75
    # Requests per client connection before nginx closes it (nginx's own default is 1000): a browser or a
    # load balancer in front reuses its connections far longer; the static benchmark gained ~10 %.
    keepalive_requests: Annotated[int, Meta(ge=1)] = 10000
    # The longest request line or header line (nginx's large_client_header_buffers, four of them per
    # connection): a longer one is refused with 431, JSON on the routes with json_errors.
    header_buffer: Size = "8k"


class HealthChecks(_Base):
    """Active health checks of every upstream instance (run by the controller)."""

    interval: Seconds = 5
    timeout: Seconds = 2
    fall: Annotated[int, Meta(ge=1)] = 3
    rise: Annotated[int, Meta(ge=1)] = 2


def _default_upstreams() -> dict[str, Pool]:
    return {
        "static-site": Pool(instances=["static-site:8080"]),
        "flutter-app": Pool(instances=["flutter-app:8080"]),
        "api-backend": Pool(instances=["api-backend:8080"]),
    }


def _default_sites() -> list[Site]:
    api_timeouts = Timeouts(read=900, send=900)
    # Far above the bridge's 20-30 s heartbeat: an idle tunnel is never cut by the edge.
    ws_timeouts = Timeouts(read=3600, send=3600)
    return [
        Site(name="home", hosts=["{domain}"], routes=[Route(path="/", upstream="static-site", cache=True)]),
        Site(name="docs", hosts=["docs.{domain}"], routes=[Route(path="/", upstream="static-site", cache=True)]),
        Site(
            name="app",
            hosts=["app.{domain}"],
            routes=[
                Route(path="/", upstream="flutter-app", cache=True),
                Route(
                    path="/api/",
                    upstream="api-backend",
                    streaming=True,
                    rate_limit="api",
                    json_errors=True,
                    cache_rules=False,
                    max_body_size="0",
                    timeouts=api_timeouts,
                ),
                Route(
                    path="/ws/",
                    upstream="api-backend",
                    websocket=True,
                    streaming=True,
                    rate_limit="api",
                    json_errors=True,
                    cache_rules=False,
                    timeouts=ws_timeouts,
                ),
                # What `cloudtolocalllm-bridge login <cloud>` reads (issuer, client id, WebSocket URL).
                # api-backend sends Cache-Control: public, max-age=300; the edge does not store it.
                Route(
                    path="/.well-known/cloudtolocalllm",
                    upstream="api-backend",
                    exact=True,
                    json_errors=True,
                    cache_rules=False,
                ),
            ],
        ),
    ]


class EdgeConfig(_Base):
    """The whole edge configuration (see the package README for an annotated example)."""

    domain: HostName = "localhost"
    listen: Listen = field(default_factory=Listen)
    tls: Tls = field(default_factory=Tls)
    acme: Acme = field(default_factory=Acme)
    headers: SecurityHeaders = field(default_factory=SecurityHeaders)
    rate_limits: dict[Name, RateLimit] = field(default_factory=_default_rate_limits)
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    upstreams: dict[Name, Pool] = field(default_factory=_default_upstreams)
    sites: list[Site] = field(default_factory=_default_sites)
    cache_rules: list[CacheRule] = field(default_factory=_default_cache_rules)
    cache: Cache = field(default_factory=Cache)
    timeouts: Timeouts = field(default_factory=Timeouts)
    gzip: Gzip = field(default_factory=Gzip)
    logging: Logging = field(default_factory=Logging)
    nginx: NginxProcess = field(default_factory=NginxProcess)
    health_checks: HealthChecks = field(default_factory=HealthChecks)

    def hosts(self, site: Site) -> list[str]:
        return [host.replace("{domain}", self.domain) for host in site.hosts]

    def expand(self, value: str) -> str:
        return value.replace("{domain}", self.domain)


def _semantic_problems(config: EdgeConfig) -> Iterator[tuple[str, str]]:
    """Checks that span fields, which msgspec's per-field validation cannot express."""
    if config.tls.enabled and not config.tls.protocols:
        yield "$.tls.protocols", "at least one protocol is required when TLS is enabled"
    for i, address in enumerate(config.trusted_proxies.addresses):
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            yield f"$.trusted_proxies.addresses[{i}]", f"{address!r} is not an IP address or CIDR network"
    for i, address in enumerate(config.listen.addresses):
        try:
            ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            yield f"$.listen.addresses[{i}]", f"{address!r} is not an IP address"
    log_buffer = config.logging.buffer_bytes
    if log_buffer and not _MIN_LOG_BUFFER <= log_buffer <= _MAX_LOG_BUFFER:
        yield "$.logging.buffer", 'must be "" or 0 (unbuffered), or between 4k and 1m'
    for name, limit in config.rate_limits.items():
        if limit.delay is not None and limit.delay > limit.burst:
            yield f"$.rate_limits.{name}.delay", f"must not exceed burst ({limit.burst})"
    for name, pool in config.upstreams.items():
        for j, instance in enumerate(pool.instances):
            if not 1 <= int(instance.rsplit(":", 1)[1]) <= 65535:
                yield f"$.upstreams.{name}.instances[{j}]", f"port out of range in {instance!r}"
        if len(set(pool.instances)) != len(pool.instances):
            yield f"$.upstreams.{name}.instances", "lists an instance twice"
    for i, rule in enumerate(config.cache_rules):
        try:
            re.compile(rule.pattern)
        except re.error as exc:
            yield f"$.cache_rules[{i}].pattern", f"not a valid regular expression: {exc}"
    seen_hosts: dict[str, str] = {}
    seen_sites: set[str] = set()
    if not config.sites:
        yield "$.sites", "at least one site is required"
    for i, site in enumerate(config.sites):
        where = f"$.sites[{i}]"
        if site.name in seen_sites:
            yield f"{where}.name", f"duplicate site name {site.name!r}"
        seen_sites.add(site.name)
        if not site.hosts:
            yield f"{where}.hosts", "at least one host name is required"
        for j, host in enumerate(config.hosts(site)):
            if host in seen_hosts:
                yield f"{where}.hosts[{j}]", f"{host!r} is already served by site {seen_hosts[host]!r}"
            seen_hosts[host] = site.name
        seen_paths: set[tuple[str, bool]] = set()
        for j, route in enumerate(site.routes):
            rwhere = f"{where}.routes[{j}]"
            key = (route.path, route.exact)
            if key in seen_paths:
                yield f"{rwhere}.path", f"duplicate route {route.path!r}"
            seen_paths.add(key)
            if route.exact and route.path == "/health":
                yield f"{rwhere}.path", "/health is answered by the edge itself"
            if route.path.startswith("/.well-known/acme-challenge"):
                yield f"{rwhere}.path", "/.well-known/acme-challenge/ is reserved for ACME"
            if route.upstream not in config.upstreams:
                known = ", ".join(sorted(config.upstreams)) or "none"
                yield f"{rwhere}.upstream", f"unknown upstream pool {route.upstream!r} (known: {known})"
            if route.cache and (route.streaming or route.websocket):
                kind = "websocket" if route.websocket else "streaming"
                yield f"{rwhere}.cache", f"a {kind} route cannot be cached"
            if route.rate_limit is not None and route.rate_limit not in config.rate_limits:
                known = ", ".join(sorted(config.rate_limits)) or "none"
                yield f"{rwhere}.rate_limit", f"unknown rate limit {route.rate_limit!r} (known: {known})"


# A smaller buffer would hold fewer lines than an access-log line can be long; a larger one only delays lines.
_MIN_LOG_BUFFER: Final = 4 << 10
_MAX_LOG_BUFFER: Final = 1 << 20

# What each pattern means, in words, for error messages (msgspec would print the regex).
_PATTERN_HELP: Final = {
    _LITERAL_RE: "a value without control characters or '$'",
    _NAME_RE: "a name of letters, digits, '-' and '_', starting with a letter",
    _HOST_RE: "a host name such as 'app.{domain}' or 'example.com'",
    _INSTANCE_RE: "a 'host:port' address, e.g. 'api-backend:8080' or '[::1]:8080'",
    _URL_PATH_RE: "a URL path starting with '/', without spaces, quotes, braces, ';' or '$'",
    _SIZE_RE: "a size such as '0', '512k', '10m' or '1g'",
    _BUFFER_RE: "a size such as '64k' or '1m', or '' or '0' for no buffering",
    _PATH_RE: "a file path without spaces, quotes, ';' or '$'",
}
_REGEX_MESSAGE: Final = re.compile(r"^Expected `str` matching regex '(?P<regex>.*)'$", re.DOTALL)
# Mapping-valued fields: msgspec reports their errors at `[...]`; these are converted key by key instead.
# A file's entries are merged over the defaults: "[upstreams.api-backend]" alone changes only that pool.
_KEYED_FIELDS: Final = {"rate_limits": (RateLimit, _default_rate_limits), "upstreams": (Pool, _default_upstreams)}


def _problem(exc: msgspec.ValidationError, prefix: str = "$") -> tuple[str, str]:
    message, _, path = str(exc).partition(" - at `")
    path = path.rstrip("`") or "$"
    match = _REGEX_MESSAGE.match(message)
    if match:
        regex = match["regex"].encode().decode("unicode_escape")
        message = f"expected {_PATTERN_HELP.get(regex, 'a value matching ' + match['regex'])}"
    return prefix + path.removeprefix("$"), message


def parse_config(data: dict[str, Any], source: str = "edge config") -> EdgeConfig:
    """Validate already-parsed TOML data; raise :class:`ConfigError` naming the field and the problem."""
    problems: list[tuple[str, str]] = []
    data = dict(data)
    for name, (value_type, defaults) in _KEYED_FIELDS.items():
        entries = data.get(name)
        if not isinstance(entries, dict):
            continue
        for key, value in entries.items():
            try:
                msgspec.convert(value, value_type)
            except msgspec.ValidationError as exc:
                problems.append(_problem(exc, f"$.{name}.{key}"))
        data[name] = {**msgspec.to_builtins(defaults()), **entries}
    if problems:
        raise ConfigError(problems, source)
    try:
        config = msgspec.convert(data, EdgeConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError([_problem(exc)], source) from None
    problems = list(_semantic_problems(config))
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(path: str | Path | None) -> EdgeConfig:
    """Load a TOML file (``None``: the built-in defaults, i.e. the dev routing on ``localhost``)."""
    if path is None:
        return parse_config({})
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("$", f"cannot read file: {exc.strerror}")], source) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("$", f"not valid TOML: {exc}")], source) from None
    return parse_config(data, source)
