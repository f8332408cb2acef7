"""Bring the schema to the newest revision at start-up, safely when several replicas start together.

PostgreSQL: a transaction-scoped advisory lock serialises the replicas; the first migrates inside that
transaction (PostgreSQL's DDL is transactional), the others wait, then find the schema current. SQLite: an
exclusive lock on a file beside the database does the same for processes sharing the file.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["MIGRATIONS", "migrate"]

log = logging.getLogger(__name__)

MIGRATIONS: Final = Path(__file__).parent / "migrations"
_ADVISORY_LOCK_ID: Final = 0x63746C6C6D  # "ctllm": one lock id for this schema's migrations


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, even if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def _run(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.run_sync(_upgrade)
        await connection.commit()


async def migrate(engine: AsyncEngine) -> None:
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        lock = Path(database + ".migrate-lock")
        cm = _file_lock(lock)
        await asyncio.to_thread(cm.__enter__)
        try:
            await _run(engine)
        finally:
            cm.__exit__(None, None, None)
    else:
        await _run(engine)
    log.info("database schema current", extra={"dialect": engine.dialect.name})
