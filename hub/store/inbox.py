"""The inbox: every message exactly as received, stored before anyone is told "got it"."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, RowMapping, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

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
            with self._engine.begin() as conn:
                return self._receive_in(conn, messages)
        except IntegrityError:
            # Another process stored one of these keys between our check and insert:
            # redo one by one so each message gets the right answer.
            if len(messages) == 1:
                with self._engine.begin() as conn:
                    return self._receive_in(conn, messages)
            return [self.receive(message) for message in messages]

    def _receive_in(self, conn: Connection, messages: Sequence[IncomingMessage]) -> list[Receipt]:
        now = self._clock()
        keys = [m.idempotency_key for m in messages]
        known: dict[str, Receipt] = {}
        wanted = sorted({k for k in keys if k})
        if wanted:
            rows = conn.execute(
                select(idempotency_keys.c.key, inbox_messages.c.id, inbox_messages.c.status)
                .join(inbox_messages, inbox_messages.c.id == idempotency_keys.c.inbox_id)
                .where(idempotency_keys.c.key.in_(wanted))
            )
            for key, inbox_id, status in rows:
                known[key] = Receipt(inbox_id=inbox_id, duplicate=True, status=status)

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
            result = conn.execute(
                insert(inbox_messages).returning(inbox_messages.c.id, sort_by_parameter_order=True),
                rows_to_insert,
            )
            ids = [row[0] for row in result]
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
                conn.execute(insert(idempotency_keys), key_rows)
            if dead_rows:
                conn.execute(insert(dead_letters), dead_rows)

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
