"""Alembic environment: leakmap passes an open connection in ``config.attributes``.

Add a migration with::

    alembic -x url=sqlite:///path.db revision --autogenerate -m "what changed"

run from ``store/`` with ``script_location`` pointing at this folder.
"""

from alembic import context
from sqlalchemy import create_engine

from leakmap.store.schema import Base

config = context.config
connection = config.attributes.get("connection")


def _run(conn) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=conn,
        target_metadata=Base.metadata,
        render_as_batch=conn.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///leakmap.db")
    with create_engine(url).connect() as conn:
        _run(conn)
