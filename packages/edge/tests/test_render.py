"""Rendering: deterministic text, nginx -t before use, and a rejected render never replaces the live one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cloudtolocalllm.edge.config import ConfigError, EdgeConfig, parse_config
from cloudtolocalllm.edge.nginx import ConfigRejected, Nginx
from cloudtolocalllm.edge.render import generation_of, render

from .edge_harness import Edge

SECURITY = [
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Referrer-Policy",
    "Content-Security-Policy",
]


def _config(tmp_path: Path, **extra: object) -> EdgeConfig:
    return parse_config({"nginx": {"runtime_dir": str(tmp_path)}, **extra})


def _blocks(text: str) -> list[tuple[str, list[str], bool]]:
    """(header line, directives directly inside, inside a TLS server) for every server and location block."""
    stack: list[tuple[str, list[str]]] = []
    found: list[tuple[str, list[str], bool]] = []
    server_tls: list[bool] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.endswith("{"):
            stack.append((line, []))
            if line.startswith("server "):
                server_tls.append(False)
        elif line == "}":
            head, body = stack.pop()
            if head.startswith(("server", "location")):
                found.append((head, body, server_tls[-1]))
            if head.startswith("server "):
                server_tls.pop()
        elif stack and line and not line.startswith("#"):
            stack[-1][1].append(line)
            if line.startswith("listen") and " ssl" in line and stack[-1][0].startswith("server "):
                server_tls[-1] = True
    return found


def test_rendering_is_deterministic_and_carries_its_generation(tmp_path: Path) -> None:
    first, second = render(_config(tmp_path)), render(_config(tmp_path))
    assert first == second
    generation = generation_of(first)
    assert generation is not None
    assert re.fullmatch(r"[0-9a-f]{16}", generation)
    assert f'"config":"{generation}"' in first
    changed = render(_config(tmp_path, domain="example.org"))
    assert generation_of(changed) != generation


def test_every_server_and_location_repeats_the_full_security_header_set(tmp_path: Path) -> None:
    # nginx drops every inherited add_header in a block that has one of its own: so each block has all.
    text = render(_config(tmp_path))
    blocks = _blocks(text)
    assert len([head for head, _, _ in blocks if head.startswith("location")]) >= 10
    for head, body, tls in blocks:
        names = {line.split()[1] for line in body if line.startswith("add_header")}
        assert set(SECURITY) <= names, head
        assert all(line.endswith("always;") for line in body if line.startswith("add_header")), head
        # HSTS on everything served over TLS (browsers ignore it over plain HTTP, so it is not sent there).
        assert ("Strict-Transport-Security" in names) == tls, head
    assert any(tls for _, _, tls in blocks)


def test_proxy_pass_never_rewrites_the_uri(tmp_path: Path) -> None:
    # "proxy_pass http://pool/;" would strip the location prefix: /api/x would reach the backend as /x.
    lines = [line.strip() for line in render(_config(tmp_path)).splitlines() if line.strip().startswith("proxy_pass")]
    assert lines
    for line in lines:
        assert re.fullmatch(r"proxy_pass http://[A-Za-z0-9_-]+;", line), line


def test_cache_rules_render_as_one_ordered_map_without_regex_locations(tmp_path: Path) -> None:
    text = render(_config(tmp_path))
    assert not re.search(r"location\s+~", text)
    rules = re.search(r"map \$uri \$edge_cache_rule \{(.*?)\}\n", text, re.DOTALL)
    assert rules is not None
    body = rules.group(1)
    assert body.index('"no-cache"') < body.index("immutable")


def test_streaming_and_websocket_routes_are_unbuffered_with_long_timeouts(tmp_path: Path) -> None:
    text = render(_config(tmp_path))
    ws = text[text.index("location /ws/ {") :]
    ws = ws[: ws.index("\n        }")]
    assert "proxy_set_header Upgrade $http_upgrade;" in ws
    assert "proxy_set_header Connection $connection_upgrade;" in ws
    assert "proxy_read_timeout 3600s;" in ws
    assert "proxy_buffering off;" in ws
    api = text[text.index("location /api/ {") :]
    api = api[: api.index("\n        }")]
    for directive in ("proxy_buffering off;", "proxy_request_buffering off;", "client_max_body_size 0;"):
        assert directive in api


def test_a_pool_without_healthy_instances_answers_503_directly(tmp_path: Path) -> None:
    text = render(_config(tmp_path), healthy={"static-site": ["static-site:8080"], "flutter-app": ["flutter-app:8080"]})
    assert not re.search(r"^\s*upstream api-backend \{", text, re.MULTILINE)
    assert re.search(r"^\s*upstream static-site \{", text, re.MULTILINE)
    assert "proxy_pass http://api-backend" not in text
    api = text[text.index("location /api/ {") :]
    assert "return 503" in api[: api.index("\n        }")]


def test_quoting_cannot_break_out_of_a_value(tmp_path: Path) -> None:
    config = _config(tmp_path, headers={"content_security_policy": 'default-src "self"; x'})
    assert 'add_header Content-Security-Policy "default-src \\"self\\"; x" always;' in render(config)


def test_client_connections_serve_many_requests(tmp_path: Path) -> None:
    # nginx closes a keep-alive connection after 1000 requests by default; busy clients reconnect less.
    assert re.search(r"^\s*keepalive_requests 10000;$", render(_config(tmp_path)), re.M)
    tuned = render(_config(tmp_path, nginx={"runtime_dir": str(tmp_path), "keepalive_requests": 500}))
    assert re.search(r"^\s*keepalive_requests 500;$", tuned, re.M)
    with pytest.raises(ConfigError, match="keepalive_requests"):
        _config(tmp_path, nginx={"runtime_dir": str(tmp_path), "keepalive_requests": 0})


def test_nginx_accepts_the_default_render(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    config = _config(
        tmp_path,
        tls={"certificate": str(tls_files[0]), "certificate_key": str(tls_files[1])},
        upstreams={name: {"instances": ["127.0.0.1:9"]} for name in ("static-site", "flutter-app", "api-backend")},
        logging={"access_log": str(tmp_path / "access.log")},
    )
    nginx = Nginx(tmp_path)
    nginx.install(render(config))
    assert nginx.live_generation() == generation_of(render(config))
    assert not list(tmp_path.glob("*.candidate"))


def test_nginx_rejects_a_config_whose_certificate_is_missing(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        tls={"certificate": str(tmp_path / "absent.pem"), "certificate_key": str(tmp_path / "k")},
        upstreams={name: {"instances": ["127.0.0.1:9"]} for name in ("static-site", "flutter-app", "api-backend")},
        logging={"access_log": str(tmp_path / "access.log")},
    )
    nginx = Nginx(tmp_path)
    with pytest.raises(ConfigRejected, match=r"absent\.pem"):
        nginx.install(render(config))
    assert not nginx.conf_path.exists()
    assert not list(tmp_path.glob("*.candidate"))


def test_a_rejected_render_never_replaces_the_running_config(edge: Edge) -> None:
    good = edge.nginx.conf_path.read_text()
    serving = edge.serving_generation()
    assert serving == generation_of(good)
    bad = good.replace("worker_connections", "worker_connexions", 1)
    with pytest.raises(ConfigRejected, match="worker_connexions"):
        edge.nginx.apply(bad)
    assert edge.nginx.conf_path.read_text() == good
    assert edge.nginx.running
    assert edge.serving_generation() == serving
    assert edge.get("app.localhost", "/api/still-up").status_code == 200


def test_pools_no_route_uses_are_not_rendered(tmp_path: Path) -> None:
    config = _config(tmp_path, upstreams={"spare": {"instances": ["unresolvable.invalid:80"]}})
    assert "unresolvable.invalid" not in render(config)


def test_the_cache_zone_lives_in_the_runtime_dir_and_is_keyed_by_scheme_host_and_path(tmp_path: Path) -> None:
    text = render(_config(tmp_path))
    assert render(_config(tmp_path)) == text
    zone = f'proxy_cache_path "{tmp_path}/cache" levels=1:2 keys_zone=edge_cache:10m max_size=256m inactive=86400s'
    assert zone in text
    keys = {line.strip() for line in text.splitlines() if line.strip().startswith("proxy_cache_key")}
    assert keys == {'proxy_cache_key "$scheme://$host$edge_path";'}  # never the query, cookies or credentials
    assert '"~^(?<edge_p>[^?]*)" $edge_p;' in text  # $edge_path: $request_uri cut at "?"
    assert text.count("proxy_cache edge_cache;") == 3
    assert text.count("proxy_cache_bypass $http_authorization;") == 3
    assert "X-Cache-Status" not in text  # only with [cache] status_header = true
    # Stored files stay open between hits (a replaced copy has a new inode, which nginx checks).
    assert text.count("open_file_cache max=256 inactive=60s;") == 3
    for prefix in ("/api/", "/ws/"):
        block = text[text.index(f"location {prefix} {{") :]
        assert "proxy_cache" not in block[: block.index("\n        }")]
        assert "open_file_cache" not in block[: block.index("\n        }")]
    assert "open_file_cache" not in render(_config(tmp_path, cache={"open_files": 0}))


def test_the_cache_can_be_turned_off_or_moved(tmp_path: Path) -> None:
    off = render(_config(tmp_path, cache={"enabled": False}))
    assert "proxy_cache" not in off
    assert "open_file_cache" not in off
    moved = render(_config(tmp_path, cache={"path": "/var/cache/edge", "status_header": True}))
    assert 'proxy_cache_path "/var/cache/edge"' in moved
    assert moved.count("add_header X-Cache-Status $upstream_cache_status always;") == 3


def test_a_down_pool_behind_a_cached_route_keeps_its_stale_copies(tmp_path: Path) -> None:
    text = render(_config(tmp_path), healthy={"flutter-app": ["flutter-app:8080"], "api-backend": ["api-backend:8080"]})
    # static-site has no healthy instance: its cached routes still proxy (to a never-contacted placeholder),
    # so nginx serves stale copies, or the 503 page for what it never stored.
    block = text[text.index("upstream static-site {") :]
    assert block[: block.index("}")].split("\n")[1].strip() == "server 127.0.0.1:9 down;"
    cached = render(_config(tmp_path, cache={"enabled": False}), healthy={"flutter-app": [], "api-backend": []})
    assert "upstream flutter-app {" not in cached


def _access_log(text: str) -> str:
    (line,) = [line.strip() for line in text.splitlines() if line.strip().startswith('access_log "')]
    return line


def test_the_access_log_is_buffered_and_flushed_every_second_by_default(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    text = render(_config(tmp_path, logging={"access_log": str(log)}))
    assert _access_log(text) == f'access_log "{log}" edge_json buffer=64k flush=1s;'
    tuned = render(_config(tmp_path, logging={"access_log": str(log), "buffer": "1m", "flush_s": 0.25}))
    assert _access_log(tuned) == f'access_log "{log}" edge_json buffer=1m flush=250ms;'
    for off in ("", "0", 0):
        plain = render(_config(tmp_path, logging={"access_log": str(log), "buffer": off}))
        assert _access_log(plain) == f'access_log "{log}" edge_json;'


def test_a_log_stream_gets_writes_no_larger_than_a_pipe_keeps_whole(tmp_path: Path) -> None:
    # Several workers write to the same pipe: a write over PIPE_BUF (4 KiB) may be split and interleaved.
    assert _access_log(render(_config(tmp_path))) == 'access_log "/dev/stdout" edge_json buffer=4k flush=1s;'
    fd = render(_config(tmp_path, logging={"access_log": "/proc/self/fd/1", "buffer": "1m", "flush_s": 2}))
    assert _access_log(fd) == 'access_log "/proc/self/fd/1" edge_json buffer=4k flush=2s;'


def test_regular_expressions_are_compiled_and_the_log_timestamp_is_one(tmp_path: Path) -> None:
    """Every map is a regular expression run per request: JIT-compiled, and one for the log timestamp."""
    text = render(_config(tmp_path))
    assert "\npcre_jit on;\n" in text
    assert 'map "$time_iso8601 $msec" $edge_log_ts {' in text
    assert '"ts":"$edge_log_ts"' in text
    assert "$edge_log_tz" not in text and "$edge_log_ms" not in text
