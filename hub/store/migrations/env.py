"""Alembic environment: runs on the connection the hub hands over (see hub.store.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from hub.store.schema import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        # Plain `alembic upgrade` with sqlalchemy.url in alembic.ini / -x url=...
        url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("give the database URL: alembic -x url=sqlite:///path upgrade head")
        engine = create_engine(url)
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
