"""Alembic environment: runs on the connection that `coachlm.feedback.db.upgrade` passes in.

`alembic` on the command line also works with `-x url=...` (for developers writing migrations).
"""

from alembic import context
from sqlalchemy import create_engine

from coachlm.feedback.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # noqa: ANN001
    # render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from coachlm.feedback.db import sqlalchemy_url

    url = context.get_x_argument(as_dictionary=True).get("url", "feedback.db")
    with create_engine(sqlalchemy_url(url)).begin() as conn:
        _run(conn)
