"""Alembic environment: runs on the connection Store.migrate() hands over."""

from alembic import context

from opsgate.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through Store.migrate
    raise RuntimeError("opsgate migrations run through Store.migrate()")
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
