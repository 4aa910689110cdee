"""Feed cursors: where each follower (Orthanc changes, SENAITE samples, ...) stopped."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from hub.store.records import utcnow
from hub.store.schema import feed_cursors

Clock = Callable[[], datetime]


class FeedCursors:
    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def get(self, name: str) -> str | None:
        with self._engine.connect() as conn:
            value = conn.execute(select(feed_cursors.c.value).where(feed_cursors.c.name == name)).scalar()
        return value

    def set(self, name: str, value: str) -> None:
        """Move cursor ``name`` to ``value`` (insert or update)."""
        now = self._clock()
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(feed_cursors).where(feed_cursors.c.name == name).values(value=value, updated_at=now)
            ).rowcount
            if changed:
                return
            try:
                with conn.begin_nested():
                    conn.execute(insert(feed_cursors).values(name=name, value=value, updated_at=now))
            except IntegrityError:
                conn.execute(
                    update(feed_cursors).where(feed_cursors.c.name == name).values(value=value, updated_at=now)
                )
