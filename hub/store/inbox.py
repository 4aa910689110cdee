"""The inbox: every message exactly as received, stored before anyone is told "got it"."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

from sqlalchemy import Connection, Engine, RowMapping, Table, and_, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from hub.store.records import IncomingMessage, Receipt, StoredMessage, utcnow
from hub.store.schema import Status, dead_letters, idempotency_keys, inbox_messages

Clock = Callable[[], datetime]


class Inbox:
    """Durable inbox writes and the translate stage's claims."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    # -- receiving ---------------------------------------------------------------------
    def receive(self, message: IncomingMessage) -> Receipt:
        """Store one message in its own transaction (one commit, one fsync)."""
        return self.receive_many([message])[0]

    def receive_many(self, messages: Sequence[IncomingMessage]) -> list[Receipt]:
        """Store a group of messages in one transaction: one commit for all of them.

        A message whose idempotency key (channel, source, message id) was seen before
        is not stored again; its receipt points at the first copy with ``duplicate=True``.
        A message with a ``rejection`` is stored as ``dead`` together with its dead letter.
        """
        if not messages:
            return []
        try:
            if self._engine.dialect.name == "sqlite":
                return self._receive_sqlite(messages)
            with self._engine.begin() as conn:
                return _receive(_CoreRows(conn), messages, self._clock())
        except IntegrityError:
            # Another process stored one of these keys between our check and insert:
            # redo one by one so each message gets the right answer.
            if len(messages) == 1:
                with self._engine.begin() as conn:
                    return _receive(_CoreRows(conn), messages, self._clock())
            return [self.receive(message) for message in messages]

    def _receive_sqlite(self, messages: Sequence[IncomingMessage]) -> list[Receipt]:
        """The same transaction on the driver's connection: SQLAlchemy's statement machinery
        costs about 1 ms of CPU per commit, three times SQLite's own durable commit, and with a
        single MLLP sender every message waits for its own commit (``bench/mllp_ingest.py``)."""
        fairy = self._engine.raw_connection()
        try:
            cursor = fairy.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.execute("BEGIN IMMEDIATE")  # the write lock up front, as the engine's BEGIN does
            try:
                receipts = _receive(_SqliteRows(cursor), messages, self._clock())
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            finally:
                cursor.close()
        except sqlite3.Error as exc:  # as SQLAlchemy would raise it (IntegrityError, OperationalError...)
            raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc
        finally:
            fairy.close()
        return receipts

    # -- reading -----------------------------------------------------------------------
    def get(self, inbox_id: int) -> StoredMessage | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(inbox_messages).where(inbox_messages.c.id == inbox_id)).mappings().first()
        return _stored(row) if row else None

    # -- translate stage ---------------------------------------------------------------
    def claim_received(self, *, limit: int, lease: timedelta) -> list[StoredMessage]:
        """Claim up to ``limit`` received messages for translation.

        The claim is a lease: if this worker dies, another one takes the messages over
        once ``lease`` has passed. Portable across SQLite and MariaDB: candidate ids are
        read first and the UPDATE re-checks that nobody claimed them meanwhile.
        """
        now = self._clock()
        token = uuid.uuid4().hex
        free = or_(inbox_messages.c.claim_token.is_(None), inbox_messages.c.claimed_until < now)
        due = and_(
            inbox_messages.c.status == Status.RECEIVED,
            or_(inbox_messages.c.next_attempt_at.is_(None), inbox_messages.c.next_attempt_at <= now),
            free,
        )
        with self._engine.begin() as conn:
            ids = list(
                conn.execute(
                    select(inbox_messages.c.id).where(due).order_by(inbox_messages.c.id).limit(limit)
                ).scalars()
            )
            if not ids:
                return []
            conn.execute(
                update(inbox_messages)
                .where(inbox_messages.c.id.in_(ids), due)
                .values(claim_token=token, claimed_until=now + lease, updated_at=now)
            )
            rows = conn.execute(
                select(inbox_messages).where(inbox_messages.c.claim_token == token).order_by(inbox_messages.c.id)
            ).mappings()
            return [_stored(row) for row in rows]

    def record_unconsumed(self, conn: Connection, inbox_id: int, unconsumed: list[str]) -> None:
        conn.execute(
            update(inbox_messages)
            .where(inbox_messages.c.id == inbox_id)
            .values(unconsumed=json.dumps(unconsumed) if unconsumed else None)
        )


class _Rows(Protocol):
    """The three statements of a receive, for one backend."""

    def known(self, keys: list[str]) -> list[tuple[str, int, str]]: ...

    def insert_messages(self, rows: list[dict[str, Any]]) -> list[int]: ...

    def insert(self, table: Table, rows: list[dict[str, Any]]) -> None: ...


def _receive(db: _Rows, messages: Sequence[IncomingMessage], now: datetime) -> list[Receipt]:
    keys = [m.idempotency_key for m in messages]
    known: dict[str, Receipt] = {}
    wanted = sorted({k for k in keys if k})
    if wanted:
        for seen, inbox_id, status in db.known(wanted):
            known[seen] = Receipt(inbox_id=inbox_id, duplicate=True, status=status)

    fresh: list[int] = []  # indexes of messages to insert
    first_of_key: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key and (key in known or key in first_of_key):
            continue
        if key:
            first_of_key[key] = index
        fresh.append(index)

    receipts: dict[int, Receipt] = {}
    if fresh:
        rows_to_insert = [
            {
                "channel": messages[i].channel,
                "source": messages[i].source[:255],
                "message_id": (messages[i].message_id or "")[:199] or None,
                "content_type": messages[i].content_type,
                "content_hash": messages[i].content_hash,
                "payload": messages[i].payload,
                "received_at": messages[i].received_at or now,
                "status": Status.DEAD if messages[i].rejection else Status.RECEIVED,
                "attempts": 0,
                "next_attempt_at": now,
                "last_error": _reason(messages[i]),
                "updated_at": now,
            }
            for i in fresh
        ]
        ids = db.insert_messages(rows_to_insert)
        key_rows = []
        dead_rows = []
        for i, inbox_id in zip(fresh, ids, strict=True):
            rejection = messages[i].rejection
            receipts[i] = Receipt(inbox_id=inbox_id, status=Status.DEAD if rejection else Status.RECEIVED)
            key = keys[i]
            if key:
                key_rows.append({"key": key, "inbox_id": inbox_id, "created_at": now})
            if rejection is not None:
                dead_rows.append({
                    "inbox_id": inbox_id,
                    "outbox_id": None,
                    "stage": rejection.stage[:16],
                    "error_type": rejection.error_type[:64],
                    "reason": rejection.reason,
                    "created_at": now,
                })
        if key_rows:
            db.insert(idempotency_keys, key_rows)
        if dead_rows:
            db.insert(dead_letters, dead_rows)

    out: list[Receipt] = []
    for index, key in enumerate(keys):
        if index in receipts:
            out.append(receipts[index])
        elif key is not None and key in known:
            out.append(known[key])
        else:  # duplicate inside this very group
            assert key is not None
            first = receipts[first_of_key[key]]
            out.append(Receipt(inbox_id=first.inbox_id, duplicate=True, status=first.status))
    return out


class _CoreRows:
    """Through SQLAlchemy Core (MariaDB; any backend)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def known(self, keys: list[str]) -> list[tuple[str, int, str]]:
        rows = self._conn.execute(
            select(idempotency_keys.c.key, inbox_messages.c.id, inbox_messages.c.status)
            .join(inbox_messages, inbox_messages.c.id == idempotency_keys.c.inbox_id)
            .where(idempotency_keys.c.key.in_(keys))
        )
        return [(key, inbox_id, status) for key, inbox_id, status in rows]

    def insert_messages(self, rows: list[dict[str, Any]]) -> list[int]:
        result = self._conn.execute(
            insert(inbox_messages).returning(inbox_messages.c.id, sort_by_parameter_order=True), rows
        )
        return [row[0] for row in result]

    def insert(self, table: Table, rows: list[dict[str, Any]]) -> None:
        self._conn.execute(insert(table), rows)


def _sqlite_value(value: Any) -> Any:
    # The text SQLAlchemy's SQLite DateTime type writes and parses back.
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value


class _SqliteRows:
    """On the sqlite3 cursor, statements prepared once per process (same columns as above)."""

    _KNOWN = (
        "SELECT k.key, m.id, m.status FROM idempotency_keys AS k JOIN inbox_messages AS m ON m.id = k.inbox_id "
        "WHERE k.key IN ({})"
    )
    _SQL: ClassVar[dict[tuple[str, tuple[str, ...]], str]] = {}

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def known(self, keys: list[str]) -> list[tuple[str, int, str]]:
        self._cursor.execute(self._KNOWN.format(", ".join("?" * len(keys))), keys)
        return [(key, inbox_id, status) for key, inbox_id, status in self._cursor.fetchall()]

    def _sql(self, table: str, columns: tuple[str, ...], returning: bool) -> str:
        sql = self._SQL.get((table, columns))
        if sql is None:
            names = ", ".join(columns)
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({names}) VALUES ({marks})" + (" RETURNING id" if returning else "")
            self._SQL[(table, columns)] = sql
        return sql

    def insert_messages(self, rows: list[dict[str, Any]]) -> list[int]:
        columns = tuple(rows[0])
        sql = self._sql(inbox_messages.name, columns, True)
        ids = []
        for row in rows:  # one statement each: executemany() cannot return the ids
            self._cursor.execute(sql, [_sqlite_value(row[c]) for c in columns])
            ids.append(self._cursor.fetchone()[0])
        return ids

    def insert(self, table: Table, rows: list[dict[str, Any]]) -> None:
        columns = tuple(rows[0])
        self._cursor.executemany(
            self._sql(table.name, columns, False), [[_sqlite_value(row[c]) for c in columns] for row in rows]
        )


def _reason(message: IncomingMessage) -> str | None:
    return message.rejection.reason if message.rejection is not None else None


def _stored(r: RowMapping) -> StoredMessage:
    return StoredMessage(
        inbox_id=r["id"],
        channel=r["channel"],
        source=r["source"],
        payload=bytes(r["payload"]),
        received_at=r["received_at"],
        message_id=r["message_id"],
        content_type=r["content_type"],
        status=r["status"],
        attempts=r["attempts"],
        last_error=r["last_error"],
        claim_token=r["claim_token"],
    )
