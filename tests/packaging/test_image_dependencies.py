"""Each image installs what its code imports, and nothing else: no dev issuer, no unused client library.

What an image installs comes from ``ctllm-images distributions`` (the same lock-file export its build
installs). What its code imports is read from the source, starting at the image's console script and
following first-party imports (lazy ones in function bodies included; ``if TYPE_CHECKING:`` ones only where
a package re-exports a name lazily, PEP 562). An import inside ``try`` with an ``ImportError`` handler is
optional: it allows its distribution in an image without requiring it. Third-party modules we name are read
one level deep, as their top-level imports are needed to load them (uvicorn's WebSocket protocol is what
imports websockets). A distribution is allowed when an import reaches it or when the lock file says an
allowed one depends on it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

DEV_ISSUER = "cloudtolocalllm-dev-issuer"
# Clients of the network and of tokens: a server of files has no use for any of them.
NOT_FOR_STATIC_SITE = {"pyjwt", "cryptography", "httpx", "websockets"}
# Distributions a package loads by name rather than by an import statement, with the place that names them.
LOADED_BY_NAME = {
    # bridge_api/database/engine.py: SQLAlchemy's dialects load the driver that DATABASE_URL names.
    "cloudtolocalllm-bridge-api": {"aiosqlite", "asyncpg"},
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _images() -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "cloudtolocalllm.devkit.images", "distributions"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, dict[str, object]] = json.loads(out)
    return found


@dataclass(frozen=True)
class Workspace:
    """Each workspace package's distribution name, console scripts and top-level module folder."""

    dists: dict[str, str]  # module prefix (cloudtolocalllm.<name>) -> distribution
    scripts: dict[str, list[str]]  # distribution -> console-script modules
    sources: dict[str, Path]  # module prefix -> its folder

    @classmethod
    def read(cls) -> Workspace:
        dists: dict[str, str] = {}
        scripts: dict[str, list[str]] = {}
        sources: dict[str, Path] = {}
        for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
            project = tomllib.loads(pyproject.read_text())["project"]
            dist = _normalise(project["name"])
            scripts[dist] = [target.split(":")[0] for target in project.get("scripts", {}).values()]
            for folder in (pyproject.parent / "src" / "cloudtolocalllm").iterdir():
                if folder.is_dir() and (folder / "__init__.py").exists():
                    dists[f"cloudtolocalllm.{folder.name}"] = dist
                    sources[f"cloudtolocalllm.{folder.name}"] = folder
        return cls(dists, scripts, sources)

    def owner(self, module: str) -> str | None:
        prefix = ".".join(module.split(".")[:2])
        return self.dists.get(prefix)

    def path(self, module: str) -> Path | None:
        parts = module.split(".")
        folder = self.sources.get(".".join(parts[:2]))
        if folder is None:
            return None
        base = folder.joinpath(*parts[2:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(handlers: list[ast.ExceptHandler]) -> bool:
    names: list[str] = []
    for handler in handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names += [kind.id for kind in kinds if isinstance(kind, ast.Name)]
    return bool({"ImportError", "ModuleNotFoundError"} & set(names))


@dataclass
class ModuleImports:
    """One module's imports: (module, names, optional) at run time, and its lazily re-exported names."""

    imports: list[tuple[str, tuple[str, ...], bool]] = field(default_factory=list)
    lazy_exports: dict[str, str] = field(default_factory=dict)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def read_imports(path: Path, module: str) -> ModuleImports:
    found = ModuleImports()
    is_package = path.name == "__init__.py"

    def visit(nodes: list[ast.stmt], optional: bool, type_only: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import) and not type_only:
                found.imports += [(alias.name, (), optional) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node, is_package)
                if type_only:
                    found.lazy_exports.update({alias.name: source for alias in node.names})
                else:
                    found.imports.append((source, tuple(alias.name for alias in node.names), optional))
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.body, optional, True)
                visit(node.orelse, optional, type_only)
            elif isinstance(node, ast.Try):
                visit(node.body, optional or _catches_import_error(node.handlers), type_only)
                for part in (*node.handlers, node.orelse, node.finalbody):
                    visit(part.body if isinstance(part, ast.ExceptHandler) else part, optional, type_only)
            else:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child], optional, type_only)
                    else:
                        # Statements nested in expressions' bodies (functions, classes, with, for) are
                        # reached through their parent statement's own statement children.
                        for grandchild in ast.walk(child):
                            if isinstance(grandchild, ast.stmt):
                                visit([grandchild], optional, type_only)

    visit(ast.parse(path.read_text(), str(path)).body, False, False)
    return found


@cache
def _workspace() -> Workspace:
    return Workspace.read()


@cache
def _module_names_to_dists() -> dict[str, list[str]]:
    return {name: [_normalise(d) for d in dists] for name, dists in importlib.metadata.packages_distributions().items()}


def _third_party_imports(module: str) -> Iterator[str]:
    """The modules a third-party module imports at its top level (one level: what it needs to load)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.module


@dataclass
class ImageImports:
    required: set[str] = field(default_factory=set)  # distributions the image's code cannot run without
    allowed: set[str] = field(default_factory=set)  # those, and those optional imports use when present


def image_imports(package: str) -> ImageImports:
    workspace = _workspace()
    entry = [(module, False) for module in workspace.scripts[_normalise(package)]]
    seen: dict[str, bool] = {}  # module -> reached only optionally
    result = ImageImports(allowed={_normalise(package)}, required={_normalise(package)})
    stdlib = sys.stdlib_module_names
    while entry:
        module, optional = entry.pop()
        if module in seen and (seen[module] is False or optional):
            continue
        seen[module] = optional
        owner = workspace.owner(module)
        if owner is None:
            top = module.split(".")[0]
            if top in stdlib or top == "__future__":
                continue
            dists = _module_names_to_dists().get(top, [f"<no distribution provides {top}>"])
            result.allowed.update(dists)
            if not optional:
                result.required.update(dists)
            for inner in _third_party_imports(module):
                if inner.split(".")[0] not in stdlib:
                    inner_dists = _module_names_to_dists().get(inner.split(".")[0], [])
                    result.allowed.update(inner_dists)
                    if not optional:
                        result.required.update(inner_dists)
            continue
        result.allowed.add(owner)
        if not optional:
            result.required.add(owner)
        parts = module.split(".")
        # Importing a module runs its packages' __init__ first.
        entry += [(".".join(parts[:i]), optional) for i in range(3, len(parts)) if workspace.path(".".join(parts[:i]))]
        path = workspace.path(module)
        if path is None:
            continue  # a name inside a module, not a module: the module itself is queued
        found = read_imports(path, module)
        for source, names, opt in found.imports:
            target_exports = read_imports(p, source).lazy_exports if (p := workspace.path(source)) else {}
            entry.append((source, optional or opt))
            for name in names:
                if workspace.path(f"{source}.{name}"):
                    entry.append((f"{source}.{name}", optional or opt))
                elif name in target_exports:
                    entry.append((target_exports[name], optional or opt))
                elif workspace.owner(source) is None and source.split(".")[0] not in stdlib:
                    entry.append((f"{source}.{name}", optional or opt))  # maybe a third-party submodule
    return result


@cache
def _lock_closure(roots: frozenset[str]) -> set[str]:
    """``roots`` and every distribution the lock file says they need (with the extras they are asked with)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {_normalise(p["name"]): p for p in lock["package"]}
    found: set[str] = set()
    pending: list[tuple[str, tuple[str, ...]]] = [(name, ()) for name in roots]
    done: set[tuple[str, tuple[str, ...]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in done or name not in packages:
            continue
        done.add((name, extras))
        found.add(name)
        package = packages[name]
        deps = list(package.get("dependencies", []))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        pending += [(_normalise(d["name"]), tuple(d.get("extra", ()))) for d in deps]
    return found


def _image_names() -> list[str]:
    return sorted(_images())


def _installed(image: str) -> set[str]:
    distributions = _images()[image]["distributions"]
    assert isinstance(distributions, list)
    return set(distributions)


def _package(image: str) -> str:
    package = _images()[image]["package"]
    assert isinstance(package, str)
    return package


@pytest.mark.parametrize("image", _image_names())
def test_no_production_image_installs_the_dev_issuer(image: str) -> None:
    assert DEV_ISSUER not in _installed(image)
    workspace = _workspace()
    commands = {
        name
        for pyproject in (ROOT / "packages").glob("*/pyproject.toml")
        if _normalise(tomllib.loads(pyproject.read_text())["project"]["name"]) in _installed(image)
        for name in tomllib.loads(pyproject.read_text())["project"].get("scripts", {})
    }
    assert DEV_ISSUER not in commands, f"{image} can run {DEV_ISSUER}"
    assert workspace.scripts  # the workspace was read


@pytest.mark.parametrize("image", ["static-site", "flutter-app"])
def test_the_static_server_installs_no_network_or_token_client(image: str) -> None:
    assert NOT_FOR_STATIC_SITE.isdisjoint(_installed(image)), sorted(NOT_FOR_STATIC_SITE & _installed(image))


@pytest.mark.parametrize("image", _image_names())
def test_everything_the_image_imports_is_installed(image: str) -> None:
    imports = image_imports(_package(image))
    missing = imports.required - _installed(image)
    assert not missing, f"{image} imports {sorted(missing)} but does not install them"


@pytest.mark.parametrize("image", _image_names())
def test_the_image_installs_nothing_its_code_never_imports(image: str) -> None:
    imports = image_imports(_package(image))
    by_name = {d for dist in imports.allowed for d in LOADED_BY_NAME.get(dist, set())}
    allowed = _lock_closure(frozenset(imports.allowed | by_name))
    unused = _installed(image) - allowed
    assert not unused, f"{image} installs {sorted(unused)}, which none of its code imports"


def test_the_import_reader_sees_lazy_optional_and_re_exported_imports(tmp_path: Path) -> None:
    source = tmp_path / "__init__.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.app import create_app\n"
        "try:\n"
        "    import websockets\n"
        "except ImportError:\n"
        "    websockets = None\n"
        "def serve():\n"
        "    import uvicorn\n"
        "    from . import sibling\n"
    )
    found = read_imports(source, "pkg")
    assert found.lazy_exports == {"create_app": "pkg.app"}
    assert ("websockets", (), True) in found.imports
    assert ("uvicorn", (), False) in found.imports
    assert ("pkg", ("sibling",), False) in found.imports
    assert ("pkg.app", ("create_app",), False) not in found.imports
