"""Alembic's environment: api-backend runs migrations on a connection it already holds (see migrate.py)."""

from __future__ import annotations

from alembic import context

from cloudtolocalllm.bridge_api.database.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
