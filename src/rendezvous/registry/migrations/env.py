"""Alembic environment: migrations always run on a connection handed over by
``rendezvous.registry.migrate`` (never from an alembic.ini), so that the lock it holds
covers the whole upgrade."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
