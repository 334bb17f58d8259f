"""Alembic environment: Tidings runs migrations on a connection it already holds."""

from alembic import context

from tidings.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via tidings.store.db
    raise RuntimeError("Tidings migrations run through `tidings` (Store.migrate), not alembic")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
