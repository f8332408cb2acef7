"""The tables (SQLAlchemy Core). Alembic's revisions in ``migrations/versions`` create and change them."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, MetaData, String, Table

__all__ = ["api_keys", "metadata"]

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(255), nullable=False),
    Column("name", String(100), nullable=False),
    Column("prefix", String(16), nullable=False),
    # SHA-256 of the whole key (keys/format.py says why a fast hash is right for a 256-bit secret).
    Column("key_hash", LargeBinary(32), nullable=False, unique=True),
    Column("scopes", String(200), nullable=False),  # space separated, like OAuth's "scope"
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("use_count", BigInteger, nullable=False, default=0),
    # Revoked keys stay (their id is never reused); listings and verification skip them.
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index("ix_api_keys_user_id", "user_id"),
)
