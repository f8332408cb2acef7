"""Render an :class:`~cloudtolocalllm.edge.config.EdgeConfig` into one deterministic nginx.conf.

Plain Python rather than a template engine: every value passes through one quoting function, mypy checks
the whole thing, and the package needs no extra dependency.

Rules that keep the original system's traps closed:

- Security headers are rendered with ``always`` into *every* server and *every* location (nginx drops all
  inherited ``add_header`` lines in a block that has one of its own), including the named error locations.
- Cache rules are one ``map`` over the path, evaluated in file order, never regex ``location`` blocks, so
  location ordering cannot hand the app bundle a one-year lifetime. They apply to successful responses only.
- ``proxy_pass`` carries no URI part, so the request URI reaches the upstream unchanged (``/api/...`` stays
  ``/api/...``).
- The access log is JSON (``escape=json``) in core's log schema; its path comes from ``$request_uri`` cut
  at the first ``?``, so query strings (which may carry tokens) and headers are never written.
- Cached routes (``cache = true``) share one ``proxy_cache`` zone keyed by scheme, host and path only (never
  the query string, cookies or credentials: a query may carry a token or an OAuth code, and must not
  multiply the entries). Only ``200`` responses with a ``Cache-Control`` that is neither ``private``
  nor ``no-store`` are stored (nginx itself refuses ``Set-Cookie`` and ``Vary: *``, and keeps one variant
  per ``Vary`` value); requests with ``Authorization`` bypass the cache. Stored copies are revalidated after
  ``[cache].revalidate_after`` seconds and served stale while the origin is down, even when the controller
  has taken every instance out of the pool (the pool is then rendered with a ``down`` placeholder).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Final

from cloudtolocalllm.edge.config import EdgeConfig, Route, Site
from cloudtolocalllm.edge.version import __version__

__all__ = ["GENERATION_PLACEHOLDER", "TEMP_DIRS", "quote", "render"]

GENERATION_PLACEHOLDER: Final = "@@GENERATION@@"
TEMP_DIRS: Final = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

# nginx serves only a few files itself (ACME challenges, error pages); upstreams send their own types.
_MIME_TYPES: Final = (
    ("text/html", "html htm"),
    ("text/plain", "txt"),
    ("text/css", "css"),
    ("application/javascript", "js mjs"),
    ("application/json", "json"),
    ("image/svg+xml", "svg"),
    ("image/png", "png"),
    ("image/x-icon", "ico"),
)
_SUCCESS_STATUSES: Final = "200|203|204|206|304"
CACHE_ZONE: Final = "edge_cache"
# Rendered for a pool with no healthy instance when a cached route uses it: never contacted ("down"), so
# nginx answers from its stale copies (or the 503 page) instead of the route returning 503 outright.
_DOWN_PLACEHOLDER: Final = "127.0.0.1:9"
# Access-log paths that are usually a pipe or a terminal (the container's log stream), not a file: the kernel
# writes at most PIPE_BUF bytes to a pipe in one piece, so several workers' buffers could interleave mid-line.
_STREAM_PREFIXES: Final = ("/dev/", "/proc/")
_PIPE_BUF: Final = 4096


def quote(value: str) -> str:
    """A double-quoted nginx string. Callers pass validated literals (no ``$``, no control characters)."""
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in value):
        raise ValueError(f"control character in nginx value {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _seconds(value: float) -> str:
    ms = round(value * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, *parts: str) -> None:
        self.lines.append("    " * self.depth + " ".join(parts) + ";")

    def comment(self, text: str) -> None:
        self.lines.append("    " * self.depth + "# " + text)

    def blank(self) -> None:
        self.lines.append("")

    @contextmanager
    def block(self, *parts: str) -> Iterator[None]:
        self.lines.append("    " * self.depth + " ".join(parts) + " {")
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            self.lines.append("    " * self.depth + "}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class _Renderer:
    def __init__(
        self,
        config: EdgeConfig,
        healthy: Mapping[str, Sequence[str]] | None,
        certificate: tuple[str, str] | None,
        addresses: Mapping[str, str] | None = None,
    ) -> None:
        self.c = config
        self.addresses = dict(addresses or {})
        self.w = _Writer()
        self.runtime = config.nginx.runtime_dir
        self.healthy = {
            name: [i for i in pool.instances if healthy is None or i in healthy.get(name, ())]
            for name, pool in config.upstreams.items()
        }
        self.caching = config.cache.enabled and any(route.cache for site in config.sites for route in site.routes)
        self.certificate = certificate or (
            config.expand(config.tls.certificate),
            config.expand(config.tls.certificate_key),
        )

    # -- headers ---------------------------------------------------------------------------------------

    def security_headers(self, *, tls: bool, csp: str | None = None) -> None:
        """The full header set, repeated in every block that adds any header (``add_header`` inheritance)."""
        w = self.w
        for name, value in self.c.headers.items(csp=csp):
            w("add_header", name, quote(value), "always")
        if tls and self.c.tls.hsts_max_age:
            hsts = f"max-age={self.c.tls.hsts_max_age}"
            if self.c.tls.hsts_include_subdomains:
                hsts += "; includeSubDomains"
            if self.c.tls.hsts_preload:
                hsts += "; preload"
            w("add_header", "Strict-Transport-Security", quote(hsts), "always")
        w("add_header", "X-Request-ID", "$edge_request_id", "always")

    # -- top level -------------------------------------------------------------------------------------

    def render(self) -> str:
        w, c = self.w, self.c
        w.comment(f"Rendered by cloudtolocalllm-edge {__version__}. Do not edit: change the edge config.")
        w.comment(f"generation {GENERATION_PLACEHOLDER}")
        w("daemon", "off")
        # The maps (access log fields, cache rules, request ids) are regular expressions run per request:
        # compiled to machine code they cost less (nginx is built with PCRE JIT but leaves it off).
        w("pcre_jit", "on")
        if c.nginx.user:
            w("user", c.nginx.user)
        w("worker_processes", c.nginx.worker_processes)
        w("pid", quote(posixpath.join(self.runtime, "nginx.pid")))
        w("error_log", quote(c.logging.error_log), c.logging.error_level)
        w.blank()
        with w.block("events"):
            w("worker_connections", str(c.nginx.worker_connections))
        w.blank()
        with w.block("http"):
            self.http()
        return w.text()

    def http(self) -> None:
        w, c = self.w, self.c
        w("server_tokens", "off")
        with w.block("types"):
            for mime, exts in _MIME_TYPES:
                w(mime, exts)
        w("default_type", "application/octet-stream")
        w("sendfile", "on")
        w("tcp_nodelay", "on")
        w("keepalive_timeout", _seconds(c.nginx.keepalive_timeout))
        w("keepalive_requests", str(c.nginx.keepalive_requests))
        w("large_client_header_buffers", "4", c.nginx.header_buffer)
        for name in TEMP_DIRS:
            w(f"{name}_temp_path", quote(posixpath.join(self.runtime, "tmp", name)))
        w.blank()
        w.comment("The real client address: X-Forwarded-For is believed only from the trusted proxies.")
        for address in c.trusted_proxies.addresses:
            w("set_real_ip_from", address)
        if c.trusted_proxies.addresses:
            w("real_ip_header", c.trusted_proxies.header)
            w("real_ip_recursive", "on")
        w.blank()
        self.maps()
        w.blank()
        self.access_log_format()
        w.blank()
        for name, limit in c.rate_limits.items():
            rate = f"{limit.rate}r/{limit.per}"
            w("limit_req_zone", "$binary_remote_addr", f"zone=edge_{name}:{limit.zone_size}", f"rate={rate}")
        w("limit_req_status", "429")
        w("limit_req_log_level", "warn")
        w.blank()
        if c.gzip.enabled:
            w("gzip", "on")
            w("gzip_vary", "on")
            w("gzip_proxied", "any")
            w("gzip_comp_level", str(c.gzip.level))
            w("gzip_min_length", str(c.gzip.min_length))
            w("gzip_types", *c.gzip.types)
        else:
            w("gzip", "off")
        w.blank()
        if c.tls.enabled:
            cert, key = self.certificate
            w("ssl_certificate", quote(cert))
            w("ssl_certificate_key", quote(key))
            w("ssl_protocols", *c.tls.protocols)
            w("ssl_ciphers", c.tls.ciphers)
            w("ssl_prefer_server_ciphers", "off")
            w("ssl_session_cache", "shared:edge_tls:10m")
            w("ssl_session_timeout", "1d")
            w("ssl_session_tickets", "off")
            w.blank()
        if self.caching:
            self.cache_path()
        self.upstreams()
        self.redirect_server()
        for site in c.sites:
            w.blank()
            self.site(site)
        w.blank()
        self.default_server()

    def maps(self) -> None:
        w = self.w
        with w.block("map", "$http_upgrade", "$connection_upgrade"):
            w("default", "upgrade")
            w('""', "close")
        w.comment("A caller's request id is kept only if it is short and inert (no log or header injection).")
        with w.block("map", "$http_x_request_id", "$edge_request_id"):
            w(quote("~^[A-Za-z0-9._:-]{1,128}$"), "$http_x_request_id")
            w("default", "$request_id")
        w.comment("Cache-Control: the first matching rule, for successful responses; else the upstream's own.")
        with w.block("map", "$uri", "$edge_cache_rule"):
            w("default", '""')
            for rule in self.c.cache_rules:
                w(quote("~" + rule.pattern), quote(rule.cache_control))
        with w.block("map", quote("$status:$edge_cache_rule"), "$edge_cache_control"):
            w(quote(f"~^(?:{_SUCCESS_STATUSES}):(?<edge_cc>.+)$"), "$edge_cc")
            w("default", "$upstream_http_cache_control")
        w.comment("A request refused before any location matched (its head): JSON errors for the API paths.")
        with w.block("map", "$edge_path", "$edge_head_errors"):
            w("default", "html")
            json_paths = sorted({(r.exact, r.path) for site in self.c.sites for r in site.routes if r.json_errors})
            for exact, path in json_paths:
                w(quote(path) if exact else quote("~^" + re.escape(path)), "json")

    def cache_path(self) -> None:
        w, cache = self.w, self.c.cache
        path = cache.path or posixpath.join(self.runtime, "cache")
        w.comment("The edge cache: public responses of the routes with cache = true (see [cache]).")
        w(
            "proxy_cache_path",
            quote(path),
            "levels=1:2",
            f"keys_zone={CACHE_ZONE}:{cache.keys_zone_size}",
            f"max_size={cache.max_size}",
            f"inactive={_seconds(cache.inactive)}",
            "use_temp_path=off",
        )
        w.comment("Never stored: no Cache-Control at all (the origin did not say it may be), private, no-store.")
        with w.block("map", "$upstream_http_cache_control", "$edge_cache_skip"):
            w('""', "1")
            w(quote("~*(?:private|no-store)"), "1")
            w("default", "0")
        w.blank()

    def cache_directives(self) -> None:
        w, cache = self.w, self.c.cache
        w("proxy_cache", CACHE_ZONE)
        # The path as sent, cut at "?": the query never reaches the cache files (their KEY line) and cannot
        # multiply the entries. The cached origins serve files, whose content does not depend on the query.
        w("proxy_cache_key", '"$scheme://$host$edge_path"')
        # Our own freshness instead of the origin's max-age: nginx cannot store a no-cache response (HTML)
        # otherwise, and a short lifetime plus a cheap conditional request is right for every static file.
        w("proxy_ignore_headers", "Cache-Control", "Expires", "X-Accel-Expires")
        w("proxy_cache_valid", "200", _seconds(cache.revalidate_after))
        w("proxy_no_cache", "$http_authorization", "$edge_cache_skip")
        w("proxy_cache_bypass", "$http_authorization")
        w("proxy_cache_revalidate", "on")
        w("proxy_cache_lock", "on")
        w("proxy_cache_lock_timeout", _seconds(cache.lock_timeout))
        w("proxy_cache_use_stale", "error", "timeout", "updating", "http_500", "http_502", "http_503", "http_504")
        w("proxy_force_ranges", "on")
        if cache.open_files:
            # Keyed by file name but checked against the inode in the cache entry: a replaced copy is reopened.
            w("open_file_cache", f"max={cache.open_files}", "inactive=60s")
            w("open_file_cache_valid", "60s")
        if cache.status_header:
            w("add_header", "X-Cache-Status", "$upstream_cache_status", "always")

    def cached(self, route: Route) -> bool:
        return self.caching and route.cache

    def access_log_format(self) -> None:
        w, c = self.w, self.c
        w.comment("Access log fields follow core's log schema; the path never includes the query string.")
        with w.block("map", "$request_uri", "$edge_path"):
            w(quote("~^(?<edge_p>[^?]*)"), "$edge_p")
        # One regular expression per line for the timestamp (was three maps): UTC, as in containers, first.
        with w.block("map", quote("$time_iso8601 $msec"), "$edge_log_ts"):
            stamp = r"(?<edge_t>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)"
            millis = r" \d+\.(?<edge_ms>\d{3})$"
            w(quote("~^" + stamp + r"\+00:00" + millis), quote("${edge_t}.${edge_ms}Z"))
            w(quote("~^" + stamp + r"(?<edge_z>[+-]\d\d:\d\d)" + millis), quote("${edge_t}.${edge_ms}${edge_z}"))
        with w.block("map", "$request_time", "$edge_duration_ms"):
            w(quote(r"~^0\.0*(?<edge_ms>\d+)$"), "$edge_ms")
            w(quote(r"~^(?<edge_s>\d+)\.(?<edge_ms>\d+)$"), quote("${edge_s}${edge_ms}"))
            w("default", "0")
        with w.block("map", "$status", "$edge_log_level"):
            for status in ("200", "204", "206", "304"):  # the common ones by hash, without a regex
                w(status, "info")
            w(quote("~^5"), "error")
            w(quote("~^4"), "warning")
            w("default", "info")
        fields = [
            ('"ts"', '"$edge_log_ts"'),
            ('"level"', '"$edge_log_level"'),
            ('"service"', f'"{c.logging.service}"'),
            ('"version"', f'"{__version__}"'),
            ('"logger"', '"nginx.access"'),
            ('"request_id"', '"$edge_request_id"'),
            ('"msg"', '"request"'),
            ('"method"', '"$request_method"'),
            ('"route"', '"$edge_route"'),
            ('"path"', '"$edge_path"'),
            ('"status"', "$status"),
            ('"duration_ms"', "$edge_duration_ms"),
            ('"bytes"', "$body_bytes_sent"),
            ('"host"', '"$host"'),
            ('"client"', '"$remote_addr"'),
            ('"upstream"', '"$edge_upstream"'),
            ('"upstream_addr"', '"$upstream_addr"'),
            ('"upstream_status"', '"$upstream_status"'),
        ]
        body = "{" + ",".join(f"{k}:{v}" for k, v in fields) + "}"
        w("log_format", "edge_json", "escape=json", "'" + body + "'")
        w("access_log", quote(c.logging.access_log), "edge_json", *self.access_log_buffering())

    def access_log_buffering(self) -> list[str]:
        """``buffer=`` and ``flush=`` for the access log; none when ``[logging] buffer`` is off."""
        logging = self.c.logging
        size = logging.buffer_bytes
        if not size:
            return []
        if logging.access_log.startswith(_STREAM_PREFIXES) and size > _PIPE_BUF:
            size = _PIPE_BUF  # a pipe keeps a write whole only up to PIPE_BUF: lines must not interleave
        buffer = next((f"{size // n}{u}" for n, u in ((1 << 20, "m"), (1 << 10, "k")) if size % n == 0), str(size))
        return [f"buffer={buffer}", f"flush={_seconds(logging.flush_s)}"]

    def upstreams(self) -> None:
        w = self.w
        used = {route.upstream for site in self.c.sites for route in site.routes}
        for name, pool in self.c.upstreams.items():
            if name not in used:
                continue  # nginx would resolve its host names at start-up for nothing
            instances = self.healthy[name]
            if not instances:
                cached = any(r.upstream == name and self.cached(r) for s in self.c.sites for r in s.routes)
                if not cached:
                    w.comment(f"upstream {name}: no healthy instance; its routes answer 503 directly")
                    continue
                w.comment(f"upstream {name}: no healthy instance; cached routes serve stale copies or 503")
                with w.block("upstream", name):
                    w("server", _DOWN_PLACEHOLDER, "down")
                w.blank()
                continue
            with w.block("upstream", name):
                if pool.balance == "least_conn":
                    w("least_conn")
                for instance in instances:
                    address = self.addresses.get(instance, instance)
                    if address != instance:
                        w.comment(instance)
                    w("server", address)
                if pool.keepalive:
                    w("keepalive", str(pool.keepalive))
            w.blank()

    # -- servers ---------------------------------------------------------------------------------------

    def listen(self, *, tls: bool, default: bool = False) -> None:
        c = self.c
        port = c.listen.https_port if tls else c.listen.http_port
        for address in c.listen.addresses:
            host = f"[{address.strip('[]')}]" if ":" in address else address
            parts = [f"{host}:{port}"]
            if tls:
                parts.append("ssl")
                if c.tls.http2:
                    parts.append("http2")
            if default:
                parts.append("default_server")
            self.w("listen", *parts)

    def all_hosts(self) -> list[str]:
        return [host for site in self.c.sites for host in self.c.hosts(site)]

    def redirect_server(self) -> None:
        """Plain HTTP when TLS is on: ACME challenges, /health, and a redirect keeping host and path."""
        c, w = self.c, self.w
        if not (c.tls.enabled and c.tls.redirect_http):
            return
        with w.block("server"):
            self.listen(tls=False)
            w("server_name", *self.all_hosts())
            w('set $edge_route "redirect"')
            w('set $edge_upstream ""')
            self.security_headers(tls=False)
            self.acme_location()
            self.health_location(tls=False)
            port = "" if c.listen.public_https_port == 443 else f":{c.listen.public_https_port}"
            with w.block("location", "/"):
                self.security_headers(tls=False)
                w("return", str(c.tls.redirect_status), f"https://$host{port}$request_uri")
        w.blank()

    def acme_location(self) -> None:
        w = self.w
        with w.block("location", "^~", "/.well-known/acme-challenge/"):
            w('set $edge_route "acme"')
            self.security_headers(tls=False)
            w("root", quote(self.c.acme.webroot))
            w("default_type", "text/plain")
            w("try_files", "$uri", "=404")

    def health_location(self, *, tls: bool, csp: str | None = None) -> None:
        w = self.w
        with w.block("location", "=", "/health"):
            w("access_log", "off")
            self.security_headers(tls=tls, csp=csp)
            w("add_header", "Cache-Control", quote("no-store"), "always")
            w("default_type", "application/json")
            body = f'{{"status":"ok","service":"{self.c.logging.service}","config":"{GENERATION_PLACEHOLDER}"}}'
            w("return", "200", "'" + body + "\\n'")

    def site(self, site: Site) -> None:
        c, w = self.c, self.w
        tls = c.tls.enabled
        with w.block("server"):
            if tls:
                self.listen(tls=True)
            plain = not tls or not c.tls.redirect_http
            if plain:
                self.listen(tls=False)
            w("server_name", *c.hosts(site))
            w('set $edge_route ""')
            w('set $edge_upstream ""')
            csp = site.content_security_policy
            self.security_headers(tls=tls, csp=csp)
            # A head nginx refuses (a line over [nginx] header_buffer: 494, a malformed one: 400) is refused
            # before any location matches, so only the server's error_page sees it; "=": the page's status.
            w("error_page", "400", "=", "@edge_400_$edge_head_errors")
            w("error_page", "494", "=", "@edge_494_$edge_head_errors")
            if plain:
                self.acme_location()
            self.health_location(tls=tls, csp=csp)
            for route in site.routes:
                self.route(site, route)
            self.error_locations(tls=tls, csp=csp)

    def route(self, site: Site, route: Route) -> None:
        c, w = self.c, self.w
        tls = c.tls.enabled
        csp = site.content_security_policy
        where = ("=", route.path) if route.exact else (route.path,)
        suffix = "json" if route.json_errors else "html"
        with w.block("location", *where):
            w("set", "$edge_route", quote(route.path))
            w("set", "$edge_upstream", quote(route.upstream))
            self.security_headers(tls=tls, csp=csp)
            if not self.healthy[route.upstream] and not self.cached(route):
                w("add_header", "Retry-After", "5", "always")
                self.unavailable_body(route.json_errors)
                return
            if route.rate_limit is not None:
                limit = c.rate_limits[route.rate_limit]
                parts = [f"zone=edge_{route.rate_limit}"]
                if limit.burst:
                    parts.append(f"burst={limit.burst}")
                    parts.append("nodelay" if limit.delay is None else f"delay={limit.delay}")
                w("limit_req", *parts)
                w("error_page", "429", f"@edge_429_{route.rate_limit}_{suffix}")
            # "=503": without it the final status stays the original 502 (nginx keeps err_status).
            w("error_page", "502", "503", "=503", f"@edge_503_{suffix}")
            w("error_page", "504", f"@edge_504_{suffix}")
            if route.json_errors:
                w("error_page", "413", "@edge_413_json")
                w("error_page", "400", "=", "@edge_400_json")
            w("client_max_body_size", route.max_body_size)
            w("proxy_pass", f"http://{route.upstream}")
            w("proxy_http_version", "1.1")
            w("proxy_set_header", "Host", "$host")
            w("proxy_set_header", "X-Real-IP", "$remote_addr")
            w("proxy_set_header", "X-Forwarded-For", "$remote_addr")
            w("proxy_set_header", "X-Forwarded-Proto", "$scheme")
            w("proxy_set_header", "X-Forwarded-Host", "$host")
            w("proxy_set_header", "X-Request-ID", "$edge_request_id")
            if route.websocket:
                w("proxy_set_header", "Upgrade", "$http_upgrade")
                w("proxy_set_header", "Connection", "$connection_upgrade")
            else:
                w("proxy_set_header", "Connection", '""')
            timeouts = route.timeouts or c.timeouts
            w("proxy_connect_timeout", _seconds(timeouts.connect))
            w("proxy_read_timeout", _seconds(timeouts.read))
            w("proxy_send_timeout", _seconds(timeouts.send))
            if route.streaming or route.websocket:
                w("proxy_buffering", "off")
                w("proxy_request_buffering", "off")
            # The edge's values are authoritative: hide the upstream's copies instead of sending two.
            for name, _ in c.headers.items(csp=csp):
                w("proxy_hide_header", name)
            w("proxy_hide_header", "Strict-Transport-Security")
            w("proxy_hide_header", "X-Request-ID")
            if route.cache_rules and c.cache_rules:
                w("proxy_hide_header", "Cache-Control")
                w("add_header", "Cache-Control", "$edge_cache_control", "always")
            if self.cached(route):
                self.cache_directives()

    def unavailable_body(self, json_errors: bool) -> None:
        w = self.w
        if json_errors:
            w("default_type", "application/json")
            w(
                "return",
                "503",
                "'" + '{"error":"service unavailable: no healthy upstream instance, retry later"}' + "\\n'",
            )
        else:
            w("default_type", "text/html")
            page = (
                "<!doctype html><html><head><title>503 Service Unavailable</title></head><body>"
                "<h1>Service unavailable</h1><p>This service is restarting or down for maintenance. "
                "Please retry in a few seconds.</p></body></html>"
            )
            w("return", "503", "'" + page + "\\n'")

    def error_locations(self, *, tls: bool, csp: str | None) -> None:
        w = self.w
        used = {r.rate_limit for s in self.c.sites for r in s.routes if r.rate_limit is not None}
        for name in sorted(used):
            limit = self.c.rate_limits[name]
            for suffix in ("json", "html"):
                with w.block("location", f"@edge_429_{name}_{suffix}"):
                    self.security_headers(tls=tls, csp=csp)
                    w("add_header", "Retry-After", str(limit.retry_after_s), "always")
                    if suffix == "json":
                        w("default_type", "application/json")
                        w("return", "429", "'" + '{"error":"rate limit exceeded, retry later"}' + "\\n'")
                    else:
                        w("default_type", "text/html")
                        w(
                            "return",
                            "429",
                            "'<!doctype html><h1>Too many requests</h1><p>Retry later.</p>\\n'",
                        )
        for suffix in ("json", "html"):
            with w.block("location", f"@edge_503_{suffix}"):
                self.security_headers(tls=tls, csp=csp)
                w("add_header", "Retry-After", "5", "always")
                self.unavailable_body(suffix == "json")
            with w.block("location", f"@edge_504_{suffix}"):
                self.security_headers(tls=tls, csp=csp)
                if suffix == "json":
                    w("default_type", "application/json")
                    w("return", "504", "'" + '{"error":"upstream timed out"}' + "\\n'")
                else:
                    w("default_type", "text/html")
                    w("return", "504", "'<!doctype html><h1>Gateway timeout</h1>\\n'")
        for suffix in ("json", "html"):
            for status, message in (("400", "bad request"), ("494", "request header line too long")):
                with w.block("location", f"@edge_{status}_{suffix}"):
                    # Refused before the server's own "set" ran: the access log needs these defined.
                    w("set", "$edge_route", quote("refused"))
                    w("set", "$edge_upstream", '""')
                    self.security_headers(tls=tls, csp=csp)
                    code = "431" if status == "494" else status
                    if suffix == "json":
                        buffer = self.c.nginx.header_buffer
                        detail = f" (at most {buffer} per line)" if status == "494" else ""
                        w("default_type", "application/json")
                        w("return", code, "'" + f'{{"error":"{message}{detail}"}}' + "\\n'")
                    else:
                        w("default_type", "text/html")
                        w("return", code, f"'<!doctype html><h1>{message.capitalize()}</h1>\\n'")
        with w.block("location", "@edge_413_json"):
            self.security_headers(tls=tls, csp=csp)
            w("default_type", "application/json")
            w("return", "413", "'" + '{"error":"request body too large"}' + "\\n'")

    def default_server(self) -> None:
        """Requests for a host no site serves: 404, never another site's content or a redirect elsewhere."""
        c, w = self.c, self.w
        for tls in (True, False) if c.tls.enabled else (False,):
            with w.block("server"):
                self.listen(tls=tls, default=True)
                w("server_name", '""')
                w('set $edge_route "unknown-host"')
                w('set $edge_upstream ""')
                self.security_headers(tls=tls)
                w("default_type", "text/plain")
                w("return", "404", "'unknown host\\n'")
            w.blank()


def render(
    config: EdgeConfig,
    *,
    healthy: Mapping[str, Sequence[str]] | None = None,
    certificate: tuple[str, str] | None = None,
    addresses: Mapping[str, str] | None = None,
) -> str:
    """The nginx.conf text for ``config``; the same inputs always give the same bytes.

    ``healthy`` maps a pool name to its instances currently passing health checks (``None``: all of them);
    a pool left with none has its routes answer 503 directly. ``certificate`` overrides the configured
    certificate and key paths (the controller's self-signed bootstrap pair). ``addresses`` maps an instance
    (``api-backend-1:8080``) to the ``ip:port`` to render instead of its name: nginx resolves names only at
    start-up and refuses a configuration whose name does not resolve, so the controller resolves them itself.
    """
    text = _Renderer(config, healthy, certificate, addresses).render()
    generation = hashlib.sha256(text.encode()).hexdigest()[:16]
    return text.replace(GENERATION_PLACEHOLDER, generation)


def generation_of(text: str) -> str | None:
    """The generation id written into a rendered config (``None`` if absent)."""
    for line in text.splitlines()[:3]:
        if line.startswith("# generation "):
            return line.removeprefix("# generation ").strip()
    return None
