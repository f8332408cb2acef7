"""The one writer of edge configurations outside production: the dev stack's, the deploy tests' and the image
test's. Each names only what differs from the edge's defaults (``cloudtolocalllm.edge.config``): ports,
pools, paths, limits. The routing (sites and routes) stays the edge's own default, so there is one topology;
:func:`default_sites` adds host names to it where a caller reaches a site by another name.

The TOML is written from plain data by :func:`to_toml`. Standard library only: the image test runs in nox's
own environment, which has the devkit but not the edge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def pools(instances: Mapping[str, Sequence[str]]) -> dict[str, dict[str, list[str]]]:
    """``[upstreams.<pool>]`` tables: each pool's instances (``host:port``)."""
    return {pool: {"instances": list(names)} for pool, names in instances.items()}


def default_sites(extra_hosts: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """The edge's default sites, with ``extra_hosts[site]`` added to that site's host names."""
    import msgspec  # the edge's own dependencies: only a caller that has the edge asks for its sites

    from cloudtolocalllm.edge.config import EdgeConfig

    sites: list[dict[str, Any]] = msgspec.to_builtins(EdgeConfig().sites)
    unknown = set(extra_hosts) - {site["name"] for site in sites}
    if unknown:
        raise ValueError(f"the edge has no default site named {sorted(unknown)}")
    for site in sites:
        site["hosts"] = [*site["hosts"], *extra_hosts.get(site["name"], ())]
    return sites


def to_toml(data: Mapping[str, Any]) -> str:
    """TOML for nested dicts, lists, strings, numbers and booleans; ``None`` means "the edge's default" and is
    left out. Lists of dicts become arrays of tables."""
    lines: list[str] = []
    _table(lines, (), data)
    return "\n".join(lines).strip() + "\n"


def write_edge_config(path: Path, data: Mapping[str, Any], written_by: str) -> None:
    path.write_text(f"# Written by {written_by} for this run; edited copies are overwritten.\n" + to_toml(data))


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def _has_plain_values(data: Mapping[str, Any]) -> bool:
    return any(v is not None and not isinstance(v, Mapping) and not _is_table_array(v) for v in data.values())


def _table(lines: list[str], path: tuple[str, ...], data: Mapping[str, Any]) -> None:
    # Plain values first: in TOML they belong to the table whose header was written last.
    for name, value in data.items():
        if value is not None and not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_key(name)} = {_value(value)}")
    for name, value in data.items():
        header = ".".join(_key(part) for part in (*path, name))
        if isinstance(value, Mapping):
            if _has_plain_values(value) or not value:  # a table of tables needs no header of its own
                lines += ["", f"[{header}]"]
            _table(lines, (*path, name), value)
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{header}]]"]
                _table(lines, (*path, name), item)
