"""Alembic environment: runs on the connection handed over by ``db.session.upgrade_database``."""

from alembic import context
from sqlalchemy import create_engine

from vocfleet.db.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is None:  # plain `alembic` command line: build an engine from the URL
        from vocfleet.db.settings import get_settings

        url = config.attributes.get("connection_url") or get_settings().database_url
        with create_engine(url).begin() as conn:
            _migrate(conn)
    else:
        _migrate(conn)


def _migrate(conn) -> None:
    context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
