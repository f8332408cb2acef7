"""api-backend's database: SQLite by default (a file in API_DATA_DIR), PostgreSQL when DATABASE_URL says so."""

from cloudtolocalllm.bridge_api.database.engine import (
    DatabaseSettings,
    DatabaseUnavailable,
    create_engine_for,
    database_url_for,
    is_postgres,
)
from cloudtolocalllm.bridge_api.database.migrate import migrate
from cloudtolocalllm.bridge_api.database.schema import api_keys, metadata

__all__ = [
    "DatabaseSettings",
    "DatabaseUnavailable",
    "api_keys",
    "create_engine_for",
    "database_url_for",
    "is_postgres",
    "metadata",
    "migrate",
]
