"""The hub's durable store: inbox, delivery outbox, dead letters, cursors, read cache.

SQLite (WAL) is the embedded default, MariaDB the production backend; both run the same
code and the same tests. Open it with :meth:`Store.open`, which applies migrations.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, func, select, text

from hub.store.cache import ReadCache
from hub.store.cursors import FeedCursors
from hub.store.db import is_sqlite, make_engine
from hub.store.group_commit import GroupCommitWriter
from hub.store.inbox import Inbox
from hub.store.migrate import current_revision, head_revision, upgrade
from hub.store.outbox import Outbox, Rejected, Translated
from hub.store.records import (
    DeadLetter,
    IncomingMessage,
    OutboxEntry,
    Receipt,
    Rejection,
    StoredMessage,
    StoreStats,
    utcnow,
)
from hub.store.replay import Replay
from hub.store.schema import Status, dead_letters, inbox_messages, outbox

__all__ = [
    "DeadLetter",
    "FeedCursors",
    "GroupCommitWriter",
    "Inbox",
    "IncomingMessage",
    "Outbox",
    "OutboxEntry",
    "ReadCache",
    "Receipt",
    "Rejected",
    "Rejection",
    "Replay",
    "Status",
    "Store",
    "StoreStats",
    "StoredMessage",
    "Translated",
]

_PENDING = (Status.RECEIVED, Status.TRANSLATED, Status.RETRYING)


class Store:
    """One database, its parts, and the counts ``meoring status`` shows."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.inbox = Inbox(engine, clock=clock)
        self.outbox = Outbox(engine, clock=clock)
        self.replay = Replay(engine, clock=clock)
        self.cursors = FeedCursors(engine, clock=clock)
        self.cache = ReadCache(engine, clock=clock)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, sqlite_synchronous: str = "FULL") -> Store:
        """Connect to ``url`` and (by default) bring its schema up to date."""
        engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
        if migrate:
            upgrade(engine)
        return cls(engine)

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.engine)

    def schema_is_current(self) -> bool:
        return current_revision(self.engine) == head_revision()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def group_writer(self, *, max_batch: int = 256, max_wait: float = 0.0) -> GroupCommitWriter:
        return GroupCommitWriter(self.inbox, max_batch=max_batch, max_wait=max_wait)

    def stats(self) -> StoreStats:
        with self.engine.connect() as conn:
            inbox_counts: dict[str, int] = {
                str(status): int(count)
                for status, count in conn.execute(
                    select(inbox_messages.c.status, func.count()).group_by(inbox_messages.c.status)
                )
            }
            outbox_counts: dict[str, int] = {
                str(status): int(count)
                for status, count in conn.execute(
                    select(outbox.c.status, func.count()).group_by(outbox.c.status)
                )
            }
            open_dead = conn.execute(
                select(func.count()).select_from(dead_letters).where(dead_letters.c.replayed_at.is_(None))
            ).scalar_one()
            oldest = conn.execute(
                select(inbox_messages.c.id, inbox_messages.c.received_at)
                .where(inbox_messages.c.status.in_(_PENDING))
                .order_by(inbox_messages.c.received_at, inbox_messages.c.id)
                .limit(1)
            ).first()
        return StoreStats(
            inbox_by_status=inbox_counts,
            outbox_by_status=outbox_counts,
            open_dead_letters=int(open_dead),
            oldest_pending_received_at=oldest[1] if oldest else None,
            oldest_pending_inbox_id=oldest[0] if oldest else None,
        )

    def close(self) -> None:
        self.engine.dispose()
