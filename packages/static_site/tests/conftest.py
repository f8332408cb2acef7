"""Fixtures: the served tree (see static_site_tree.py), apps with and without the SPA fallback, clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cloudtolocalllm.core import ServiceApp
from cloudtolocalllm.static_site import Settings, build_app

from .static_site_tree import asgi_client, build_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return build_tree(tmp_path)


@pytest.fixture
def spa_app(tree: Path) -> ServiceApp:
    return build_app(Settings(root=str(tree), spa=True))


@pytest.fixture
def plain_app(tree: Path) -> ServiceApp:
    return build_app(Settings(root=str(tree)))


@pytest.fixture
async def client(spa_app: ServiceApp) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(spa_app) as c:
        yield c


@pytest.fixture
async def plain_client(plain_app: ServiceApp) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(plain_app) as c:
        yield c
