"""The edge-config writer: its TOML reads back as the data it was given, and the sites it writes are the edge's
own defaults, so the dev stack and the deploy tests route as production does."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from cloudtolocalllm.devkit.edge_config import default_sites, pools, to_toml, write_edge_config
from cloudtolocalllm.edge.config import EdgeConfig, parse_config


def test_toml_reads_back_as_the_data_without_its_nones() -> None:
    data = {
        "domain": "example.test",
        "listen": {"addresses": ["127.0.0.1"], "http_port": 8080, "https_port": None},
        "tls": {"enabled": False},
        "upstreams": pools({"api-backend": ["127.0.0.1:1", "127.0.0.1:2"], "static-site": []}),
        "sites": [
            {"name": "a", "hosts": ["a.test"], "routes": [{"path": "/", "timeouts": {"read": 9, "send": None}}]},
            {"name": "b", "hosts": ["x y", 'q"uote'], "routes": []},
        ],
    }
    assert tomllib.loads(to_toml(data)) == {
        "domain": "example.test",
        "listen": {"addresses": ["127.0.0.1"], "http_port": 8080},
        "tls": {"enabled": False},
        "upstreams": {"api-backend": {"instances": ["127.0.0.1:1", "127.0.0.1:2"]}, "static-site": {"instances": []}},
        "sites": [
            {"name": "a", "hosts": ["a.test"], "routes": [{"path": "/", "timeouts": {"read": 9}}]},
            {"name": "b", "hosts": ["x y", 'q"uote'], "routes": []},
        ],
    }


def test_the_default_sites_written_out_are_the_edges_defaults() -> None:
    written = parse_config(tomllib.loads(to_toml({"sites": default_sites({})})))
    assert msgspec.to_builtins(written) == msgspec.to_builtins(EdgeConfig())


def test_extra_hosts_join_one_site_and_leave_the_others_as_they_are() -> None:
    config = parse_config(
        tomllib.loads(to_toml({"domain": "deploy.test", "sites": default_sites({"app": ["127.0.0.1"]})}))
    )
    hosts = {site.name: config.hosts(site) for site in config.sites}
    assert hosts["app"] == ["app.deploy.test", "127.0.0.1"]
    assert hosts["home"] == ["deploy.test"]


def test_a_site_the_edge_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="no default site named"):
        default_sites({"admin": ["127.0.0.1"]})


def test_the_file_says_who_wrote_it(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    write_edge_config(path, {"domain": "localhost"}, written_by="a test")
    assert path.read_text().startswith("# Written by a test for this run")
    assert tomllib.loads(path.read_text()) == {"domain": "localhost"}
