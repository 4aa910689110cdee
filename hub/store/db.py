"""Engines for the store's two backends: SQLite (embedded) and MariaDB (production)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from hub.errors import ConfigError


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 8) -> Engine:
    """Create an engine tuned for durable, concurrent inbox writes.

    SQLite runs in WAL mode so readers never block the writer; ``synchronous=FULL`` fsyncs
    the WAL at every commit, which is what makes an HL7 ACK sent after commit durable
    against power loss (group commit keeps that affordable). MariaDB relies on InnoDB's
    ``innodb_flush_log_at_trx_commit=1`` (its default) for the same guarantee.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError("store.url is not a valid database URL", key="store.url") from exc
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # One connection per thread; the store serialises writes itself.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        engine = create_engine(parsed, **kwargs)
        synchronous = sqlite_synchronous.upper()
        if synchronous not in {"FULL", "NORMAL"}:
            raise ConfigError("store.sqlite_synchronous must be FULL or NORMAL", key="store.sqlite_synchronous")

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # isolation_level=None: we issue BEGIN ourselves (see below) so that a
            # write transaction takes the lock up front instead of failing on upgrade.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() in {"mysql", "mariadb"}:
        kwargs.update(pool_pre_ping=True, pool_recycle=3600, pool_size=pool_size, max_overflow=pool_size)
        kwargs["isolation_level"] = "READ COMMITTED"
        return create_engine(parsed, **kwargs)
    raise ConfigError("store.url must be sqlite:// or mysql+pymysql://", key="store.url")
