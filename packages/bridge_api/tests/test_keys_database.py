"""The key store and migrations against both databases (SQLite and a real PostgreSQL server), and a
database outage: cached keys keep working, new ones get 503, use counts are kept and written later."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtolocalllm.bridge_api.database import (
    DatabaseSettings,
    create_engine_for,
    database_url_for,
    migrate,
)
from cloudtolocalllm.bridge_api.keys.format import key_digest
from cloudtolocalllm.bridge_api.keys.store import KeyStore
from cloudtolocalllm.core.settings import SettingsError
from cloudtolocalllm.devkit.peers import FakeBridge

from .conftest import CloudFactory
from .postgres_server import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseSettings]:
    if request.param == "sqlite":
        yield DatabaseSettings()
        return
    server = PostgresServer()  # its own cluster: every test starts from an empty schema
    server.start()
    yield DatabaseSettings(database_url=server.url)
    server.remove()


def engine_for(database: DatabaseSettings, tmp_path: Path) -> AsyncEngine:
    return create_engine_for(database_url_for(database, tmp_path / "data"), timeout_s=2.0)


@pytest.fixture
async def store(database: DatabaseSettings, tmp_path: Path) -> AsyncIterator[KeyStore]:
    engine = engine_for(database, tmp_path)
    await migrate(engine)
    yield KeyStore(engine, max_keys_per_user=10)
    await engine.dispose()


async def test_create_lookup_list_and_revoke(store: KeyStore) -> None:
    record, key = await store.create("alice", "laptop", ["inference", "bridge", "inference"])
    assert record.scopes == ["bridge", "inference"]
    found = await store.lookup(key_digest(key))
    assert found is not None and found.user_id == "alice" and found.scopes == {"bridge", "inference"}
    assert [r.id for r in await store.list("alice")] == [record.id]
    assert await store.list("bob") == []
    assert not await store.revoke("bob", record.id)
    assert await store.revoke("alice", record.id)
    assert await store.lookup(key_digest(key)) is None
    assert await store.list("alice") == []
    assert not await store.revoke("alice", record.id)


async def test_usage_is_added_in_one_batch_and_last_used_only_moves_forward(store: KeyStore) -> None:
    first, _ = await store.create("alice", "a", ["inference"])
    second, _ = await store.create("alice", "b", ["inference"])
    later = datetime.now(UTC)
    earlier = later - timedelta(hours=1)
    await store.add_usage({first.id: (3, later), second.id: (1, earlier)})
    await store.add_usage({first.id: (2, earlier)})
    listed = {r.id: r for r in await store.list("alice")}
    assert listed[first.id].use_count == 5 and listed[second.id].use_count == 1
    assert listed[first.id].last_used_at == later
    assert listed[second.id].last_used_at == earlier


async def test_replicas_starting_together_migrate_once(database: DatabaseSettings, tmp_path: Path) -> None:
    engines = [engine_for(database, tmp_path) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
        async with engines[0].connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
            await conn.execute(text("SELECT count(*) FROM api_keys"))
        assert versions == ["0001"]
        await migrate(engines[0])  # and again: nothing to do
    finally:
        for engine in engines:
            await engine.dispose()


def test_database_url_is_checked_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL must start with one of") as error:
        DatabaseSettings(database_url="mysql://user:hunter2@db/keys")
    assert "hunter2" not in str(error.value)
    url = database_url_for(DatabaseSettings(database_url="postgres://u:p@db:5432/keys"), Path("unused"))
    assert url.drivername == "postgresql+asyncpg" and url.database == "keys"


def test_an_unwritable_data_dir_is_a_settings_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SettingsError, match="API_DATA_DIR"):
        database_url_for(DatabaseSettings(), blocker / "data")


async def test_an_outage_keeps_cached_keys_refuses_new_ones_with_503_and_loses_no_counts(
    make_cloud: CloudFactory, fresh_postgres: PostgresServer
) -> None:
    database = DatabaseSettings(database_url=fresh_postgres.url)
    async with make_cloud(database=database, key_usage_flush_s=0.1, database_timeout_s=1.0) as cloud:
        seen = await cloud.create_key("inference", name="seen")
        unseen = await cloud.create_key("inference", name="unseen")
        async with FakeBridge(cloud.url, cloud.token()), cloud.client(bearer=seen["key"]) as client:
            assert (await client.get("/api/ollama/api/version")).status_code == 200  # now cached
            fresh_postgres.stop()
            for _ in range(4):
                assert (await client.get("/api/ollama/api/version")).status_code == 200
            async with cloud.client(bearer=unseen["key"]) as other:
                refused = await other.get("/api/ollama/api/version")
            async with cloud.client() as owner:
                create = await owner.post("/api/keys", json={"name": "new", "scopes": ["inference"]})
                listing = await owner.get("/api/keys")
            async with httpx.AsyncClient(base_url=cloud.url) as anonymous:
                ready = await anonymous.get("/ready")
            await asyncio.sleep(0.3)  # a failed usage flush or two
            fresh_postgres.start()

            async def counted() -> dict[str, int]:
                async with cloud.client() as owner:
                    response = await owner.get("/api/keys")
                if response.status_code != 200:
                    return {}
                return {k["name"]: k["use_count"] for k in response.json()["keys"]}

            for _ in range(100):
                if (await counted()).get("seen") == 5:
                    break
                await asyncio.sleep(0.1)
            assert await counted() == {"seen": 5, "unseen": 0}
            # The database is back: the key nobody had seen works now too.
            async with cloud.client(bearer=unseen["key"]) as other:
                assert (await other.get("/api/ollama/api/version")).status_code == 200
    assert refused.status_code == 503 and "database unavailable" in refused.json()["error"]
    assert refused.headers["retry-after"] == "5"
    assert create.status_code == 503 and listing.status_code == 503
    assert "try again shortly" in create.json()["error"] and create.headers["retry-after"] == "5"
    assert ready.json()["checks"]["database"]["ok"] is False
