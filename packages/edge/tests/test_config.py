"""Typed configuration: defaults reproduce the seed's routing table; bad files name field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudtolocalllm.edge.config import ConfigError, EdgeConfig, load_config, parse_config

EXAMPLE = Path(__file__).parents[1] / "edge.example.toml"


def _table(config: EdgeConfig) -> set[tuple[str, str, str]]:
    return {
        (host, route.path, route.upstream)
        for site in config.sites
        for host in config.hosts(site)
        for route in site.routes
    }


def test_defaults_reproduce_the_seed_routing_table_on_the_dev_domains() -> None:
    config = load_config(None)
    assert _table(config) == {
        ("localhost", "/", "static-site"),
        ("docs.localhost", "/", "static-site"),
        ("app.localhost", "/", "flutter-app"),
        ("app.localhost", "/api/", "api-backend"),
        ("app.localhost", "/ws/", "api-backend"),
        ("app.localhost", "/.well-known/cloudtolocalllm", "api-backend"),
    }
    assert set(config.upstreams) == {"static-site", "flutter-app", "api-backend"}


def test_setting_the_domain_gives_the_production_table() -> None:
    config = parse_config({"domain": "cloudtolocalllm.online"})
    hosts = {host for site in config.sites for host in config.hosts(site)}
    assert hosts == {"cloudtolocalllm.online", "docs.cloudtolocalllm.online", "app.cloudtolocalllm.online"}
    assert config.expand(config.tls.certificate) == "/etc/letsencrypt/live/cloudtolocalllm.online/fullchain.pem"


def test_default_limits_headers_and_timeouts_match_the_seed() -> None:
    config = load_config(None)
    assert (config.rate_limits["api"].rate, config.rate_limits["api"].burst) == (10, 20)
    assert (config.rate_limits["general"].rate, config.rate_limits["general"].burst) == (30, 100)
    assert dict(config.headers.items())["X-Frame-Options"] == "SAMEORIGIN"
    assert dict(config.headers.items())["X-Content-Type-Options"] == "nosniff"
    assert dict(config.headers.items())["X-XSS-Protection"] == "1; mode=block"
    assert dict(config.headers.items())["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert config.tls.protocols == ["TLSv1.2", "TLSv1.3"]
    app = next(site for site in config.sites if site.name == "app")
    ws = next(route for route in app.routes if route.path == "/ws/")
    assert ws.websocket
    assert ws.timeouts is not None
    assert ws.timeouts.read >= 10 * 30  # far above a 20-30 s bridge heartbeat
    api = next(route for route in app.routes if route.path == "/api/")
    assert api.streaming
    assert api.max_body_size == "0"


def test_the_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.domain == "cloudtolocalllm.online"
    assert config.upstreams["api-backend"].instances == ["api-backend:8080"]
    assert config.upstreams["static-site"].instances == ["static-site:8080"]  # the images' port
    assert ("www.cloudtolocalllm.online", "/", "static-site") in _table(config)


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("[rate_limits.api]\nrate = 'fast'\n", "$.rate_limits.api.rate", "Expected `int`, got `str`"),
        ("[rate_limits.api]\nrate = 0\n", "$.rate_limits.api.rate", ">= 1"),
        ("[tls]\nprotocols = ['TLSv1.1']\n", "$.tls.protocols[0]", "Invalid enum value 'TLSv1.1'"),
        ("[tls]\ncertficate = 'x'\n", "$.tls", "unknown field `certficate`"),
        (
            "[upstreams.api-backend]\ninstances = ['api-backend']\n",
            "$.upstreams.api-backend.instances[0]",
            "a 'host:port' address",
        ),
        ("[upstreams.api-backend]\ninstances = []\n", "$.upstreams.api-backend.instances", "length >= 1"),
        (
            "[upstreams.api-backend]\ninstances = ['a:99999']\n",
            "$.upstreams.api-backend.instances[0]",
            "port out of range",
        ),
        (
            "[headers]\ncontent_security_policy = 'script-src $x'\n",
            "$.headers.content_security_policy",
            "without control characters or '$'",
        ),
        (
            "[trusted_proxies]\naddresses = ['10.0.0.0/33']\n",
            "$.trusted_proxies.addresses[0]",
            "not an IP address",
        ),
        (
            "[[cache_rules]]\npattern = '(unclosed'\ncache_control = 'no-cache'\n",
            "$.cache_rules[0].pattern",
            "regular expression",
        ),
        (
            "[[sites]]\nname = 'a'\nhosts = ['x.{domain}']\nroutes = [{ path = '/', upstream = 'nope' }]\n",
            "$.sites[0].routes[0].upstream",
            "unknown upstream pool 'nope' (known: api-backend, flutter-app, static-site)",
        ),
        (
            "[[sites]]\nname = 'a'\nhosts = ['x']\n"
            "routes = [{ path = '/', upstream = 'static-site', rate_limit = 'slow' }]\n",
            "$.sites[0].routes[0].rate_limit",
            "unknown rate limit 'slow'",
        ),
        (
            "[[sites]]\nname = 'a'\nhosts = ['x']\nroutes = [{ path = 'api', upstream = 'static-site' }]\n",
            "$.sites[0].routes[0].path",
            "expected a URL path starting with '/'",
        ),
        (
            "[[sites]]\nname = 'a'\nhosts = ['x']\nroutes = []\n[[sites]]\nname = 'b'\nhosts = ['x']\nroutes = []\n",
            "$.sites[1].hosts[0]",
            "'x' is already served by site 'a'",
        ),
        ("domain = 'bad domain'\n", "$.domain", "expected a host name"),
        ("[logging]\nbuffer = '64 k'\n", "$.logging.buffer", "expected a size such as '64k'"),
        ("[logging]\nbuffer = '2k'\n", "$.logging.buffer", "between 4k and 1m"),
        ("[logging]\nbuffer = '8m'\n", "$.logging.buffer", "between 4k and 1m"),
        ("[logging]\nflush_s = 0\n", "$.logging.flush_s", ">= 0.001"),
        ("[logging]\nflush_s = 600\n", "$.logging.flush_s", "<= 60"),
    ],
)
def test_a_bad_file_names_the_field_and_the_problem(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    file = tmp_path / "edge.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    problems = dict(caught.value.problems)
    assert path in problems, caught.value
    assert fragment in problems[path]
    assert str(file) in str(caught.value)


def test_toml_syntax_errors_give_line_and_column(tmp_path: Path) -> None:
    file = tmp_path / "edge.toml"
    file.write_text("domain = 'a'\n[tls\n")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2"):
        load_config(file)


def test_every_semantic_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "trusted_proxies": {"addresses": ["nonsense"]},
                "sites": [{"name": "a", "hosts": ["x"], "routes": [{"path": "/", "upstream": "nope"}]}],
            }
        )
    assert {path for path, _ in caught.value.problems} == {
        "$.trusted_proxies.addresses[0]",
        "$.sites[0].routes[0].upstream",
    }


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "absent.toml")


def test_pool_and_rate_limit_tables_merge_over_the_defaults() -> None:
    config = parse_config(
        {"upstreams": {"api-backend": {"instances": ["a:1", "b:2"]}}, "rate_limits": {"api": {"rate": 5}}}
    )
    assert config.upstreams["api-backend"].instances == ["a:1", "b:2"]
    assert config.upstreams["static-site"].instances == ["static-site:8080"]
    assert config.rate_limits["api"].rate == 5
    assert config.rate_limits["api"].burst == 0  # a table given is taken as written
    assert config.rate_limits["general"].rate == 30


def test_the_cache_is_on_for_the_static_routes_and_off_for_the_api() -> None:
    config = load_config(None)
    assert config.cache.enabled
    cached = {(site.name, route.path) for site in config.sites for route in site.routes if route.cache}
    assert cached == {("home", "/"), ("docs", "/"), ("app", "/")}
    example = load_config(EXAMPLE)
    cached = {(site.name, route.path) for site in example.sites for route in site.routes if route.cache}
    assert cached == {("home", "/"), ("docs", "/"), ("app", "/")}


def test_a_streaming_or_websocket_route_cannot_be_cached() -> None:
    sites = [
        {
            "name": "app",
            "hosts": ["app.{domain}"],
            "routes": [
                {"path": "/api/", "upstream": "api-backend", "streaming": True, "cache": True},
                {"path": "/ws/", "upstream": "api-backend", "websocket": True, "cache": True},
            ],
        }
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config({"sites": sites})
    assert caught.value.problems == [
        ("$.sites[0].routes[0].cache", "a streaming route cannot be cached"),
        ("$.sites[0].routes[1].cache", "a websocket route cannot be cached"),
    ]
    with pytest.raises(ConfigError, match=r"\$\.cache\.revalidate_after"):
        parse_config({"cache": {"revalidate_after": 0}})
    with pytest.raises(ConfigError, match=r"\$\.cache\.max_size"):
        parse_config({"cache": {"max_size": "lots"}})


@pytest.mark.parametrize(
    ("buffer", "size"),
    [("64k", 65536), ("1m", 1 << 20), (8192, 8192), ("", 0), ("0", 0), (0, 0)],
)
def test_the_access_log_buffer_is_a_size_or_off(buffer: str | int, size: int) -> None:
    assert load_config(None).logging.buffer_bytes == 64 * 1024  # on by default, flushed every second
    assert load_config(None).logging.flush_s == 1
    assert parse_config({"logging": {"buffer": buffer}}).logging.buffer_bytes == size
