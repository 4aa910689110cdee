"""The read cache (cache-aside) for resources read from the source of truth."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from hub.store.records import utcnow
from hub.store.schema import read_cache

Clock = Callable[[], datetime]


class ReadCache:
    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def get(self, key: str) -> Any | None:
        """The cached JSON value for ``key``, or None when absent or expired."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(read_cache.c.value).where(read_cache.c.key == key, read_cache.c.expires_at > self._clock())
            ).first()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Any, *, ttl: timedelta, etag: str | None = None) -> None:
        now = self._clock()
        values = {"value": json.dumps(value), "etag": etag, "expires_at": now + ttl, "updated_at": now}
        with self._engine.begin() as conn:
            if conn.execute(update(read_cache).where(read_cache.c.key == key).values(**values)).rowcount:
                return
            try:
                with conn.begin_nested():
                    conn.execute(insert(read_cache).values(key=key, **values))
            except IntegrityError:
                conn.execute(update(read_cache).where(read_cache.c.key == key).values(**values))

    def invalidate(self, key: str | None = None, *, prefix: str | None = None) -> int:
        """Drop one key, every key under ``prefix``, or (neither given) nothing."""
        if key is None and prefix is None:
            return 0
        with self._engine.begin() as conn:
            if key is not None:
                return int(conn.execute(delete(read_cache).where(read_cache.c.key == key)).rowcount)
            return int(conn.execute(delete(read_cache).where(read_cache.c.key.startswith(prefix))).rowcount)
