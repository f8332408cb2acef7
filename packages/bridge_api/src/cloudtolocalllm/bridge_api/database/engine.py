"""The database engine: which database (DATABASE_URL or a SQLite file), and the settings each one needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import msgspec
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cloudtolocalllm.core.settings import SettingsError

__all__ = [
    "SQLITE_FILE",
    "DatabaseSettings",
    "DatabaseUnavailable",
    "create_engine_for",
    "database_url_for",
    "is_postgres",
]

SQLITE_FILE: Final = "api-backend.sqlite3"
_SCHEMES: Final = {
    # What operators write -> the async driver SQLAlchemy uses for it.
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


class DatabaseUnavailable(Exception):
    """The database cannot be reached or answered with an error: the caller may retry later."""


class DatabaseSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Read without a prefix: ``DATABASE_URL``, the name most platforms and tools already use."""

    # Unset: SQLite in API_DATA_DIR (one replica). postgresql://user:password@host/db for several.
    database_url: str = ""

    def __post_init__(self) -> None:
        if not self.database_url:
            return
        try:
            url = make_url(self.database_url)
        except ArgumentError:
            raise ValueError("DATABASE_URL is not a database URL (postgresql://user@host/db)") from None
        if url.drivername not in _SCHEMES:  # never echo the URL: it may carry a password
            raise ValueError(f"DATABASE_URL must start with one of {', '.join(s + '://' for s in sorted(_SCHEMES))}")


def database_url_for(settings: DatabaseSettings, data_dir: Path) -> URL:
    """DATABASE_URL with its async driver, else the SQLite file in ``data_dir`` (created if missing)."""
    if settings.database_url:
        url = make_url(settings.database_url)
        return url.set(drivername=_SCHEMES[url.drivername])
    folder = data_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(
            {"API_DATA_DIR": f"cannot create {str(folder)!r} for the SQLite database: {exc.strerror or exc}"}
        ) from None
    return URL.create("sqlite+aiosqlite", database=str(folder.resolve() / SQLITE_FILE))


def is_postgres(url: URL) -> bool:
    return url.get_backend_name() == "postgresql"


def create_engine_for(url: URL, *, timeout_s: float) -> AsyncEngine:
    if is_postgres(url):
        # A dead server fails a request within the timeout instead of hanging it (then cached keys serve).
        return create_async_engine(
            url,
            pool_size=5,
            max_overflow=5,
            pool_timeout=timeout_s,
            pool_pre_ping=True,
            connect_args={"timeout": timeout_s, "command_timeout": timeout_s},
        )
    engine = create_async_engine(url, connect_args={"timeout": timeout_s})
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never wait for the writer; busy_timeout: a second process waits for the lock, not fails.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
