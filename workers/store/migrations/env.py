"""Alembic environment, run programmatically by `workers.store.engine.migrate` (no alembic.ini needed).

The caller passes an open connection in `config.attributes["connection"]`; the migration runs in
its transaction. To run by hand: `python -c "from workers.store import open_sql_store as o; o(URL, create=True)"`.
"""

from alembic import context

from workers.store.schema import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via workers.store.engine.migrate
    raise RuntimeError("run migrations through workers.store.engine.migrate(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
