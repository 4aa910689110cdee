"""The delivery outbox and the state transitions of a message after translation.

Every transition is one transaction that updates the inbox record and the outbox
entry together, so ``meoring status`` and a crash at any instant agree.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, update

from hub.store.records import OutboxEntry, utcnow
from hub.store.schema import Status, dead_letters, inbox_messages, outbox

Clock = Callable[[], datetime]

_DUE = (Status.PENDING, Status.RETRYING)


@dataclass(frozen=True, slots=True)
class Translated:
    """A translate-stage success: what to deliver for one inbox message."""

    inbox_id: int
    claim_token: str | None
    target: str
    operation: str
    body: str
    resource_count: int
    unconsumed: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A translate-stage failure: the message cannot become FHIR as it is."""

    inbox_id: int
    claim_token: str | None
    error_type: str
    reason: str


def add_dead_letter(
    conn: Connection,
    *,
    now: datetime,
    stage: str,
    error_type: str,
    reason: str,
    inbox_id: int | None,
    outbox_id: int | None = None,
) -> None:
    conn.execute(
        insert(dead_letters).values(
            inbox_id=inbox_id,
            outbox_id=outbox_id,
            stage=stage,
            error_type=error_type[:64],
            reason=reason,
            created_at=now,
        )
    )


def _insert_pending(conn: Connection, *, now: datetime, inbox_id: int | None, target: str, operation: str,
                    body: str, resource_count: int) -> int:
    result = conn.execute(
        insert(outbox).values(
            inbox_id=inbox_id,
            target=target,
            operation=operation,
            body=body,
            resource_count=resource_count,
            status=Status.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


class Outbox:
    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    # -- translate stage outcomes -----------------------------------------------------
    def record_translations(self, outcomes: Sequence[Translated | Rejected]) -> int:
        """Record a round of translate results in one transaction; returns how many applied.

        An outcome whose claim was lost (lease expired and another worker took the
        message) is skipped, so the message is not queued for delivery twice.
        """
        if not outcomes:
            return 0
        now = self._clock()
        applied = 0
        with self._engine.begin() as conn:
            for outcome in outcomes:
                mine = inbox_messages.c.id == outcome.inbox_id
                if outcome.claim_token is not None:
                    mine = and_(mine, inbox_messages.c.claim_token == outcome.claim_token)
                if isinstance(outcome, Translated):
                    changed = conn.execute(
                        update(inbox_messages)
                        .where(mine)
                        .values(
                            status=Status.TRANSLATED,
                            claim_token=None,
                            claimed_until=None,
                            updated_at=now,
                            last_error=None,
                            unconsumed=json.dumps(outcome.unconsumed) if outcome.unconsumed else None,
                        )
                    ).rowcount
                    if not changed:
                        continue
                    _insert_pending(conn, now=now, inbox_id=outcome.inbox_id, target=outcome.target,
                                    operation=outcome.operation, body=outcome.body,
                                    resource_count=outcome.resource_count)
                else:
                    changed = conn.execute(
                        update(inbox_messages)
                        .where(mine)
                        .values(
                            status=Status.DEAD,
                            claim_token=None,
                            claimed_until=None,
                            updated_at=now,
                            last_error=outcome.reason,
                        )
                    ).rowcount
                    if not changed:
                        continue
                    add_dead_letter(
                        conn,
                        now=now,
                        stage="translate",
                        error_type=outcome.error_type,
                        reason=outcome.reason,
                        inbox_id=outcome.inbox_id,
                    )
                applied += 1
        return applied

    def enqueue(self, *, target: str, operation: str, body: str, resource_count: int = 0,
                inbox_id: int | None = None) -> int:
        """Queue a delivery that did not come through the inbox (e.g. an OpenEMR write)."""
        now = self._clock()
        with self._engine.begin() as conn:
            return _insert_pending(conn, now=now, inbox_id=inbox_id, target=target, operation=operation,
                                   body=body, resource_count=resource_count)

    # -- deliver stage ----------------------------------------------------------------
    def claim_due(self, *, limit: int, lease: timedelta, target: str | None = None) -> list[OutboxEntry]:
        """Claim up to ``limit`` deliveries that are due; each claim counts as an attempt.

        Counting at claim time means a message that kills its worker every time still
        runs out of attempts and is dead-lettered instead of looping forever.
        """
        now = self._clock()
        token = uuid.uuid4().hex
        due = and_(
            outbox.c.status.in_(_DUE),
            outbox.c.next_attempt_at <= now,
            or_(outbox.c.claim_token.is_(None), outbox.c.claimed_until < now),
        )
        if target is not None:
            due = and_(due, outbox.c.target == target)
        with self._engine.begin() as conn:
            ids = list(
                conn.execute(
                    select(outbox.c.id).where(due).order_by(outbox.c.next_attempt_at, outbox.c.id).limit(limit)
                ).scalars()
            )
            if not ids:
                return []
            conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(ids), due)
                .values(
                    claim_token=token,
                    claimed_until=now + lease,
                    attempts=outbox.c.attempts + 1,
                    updated_at=now,
                )
            )
            rows = conn.execute(
                select(outbox, inbox_messages.c.received_at)
                .outerjoin(inbox_messages, inbox_messages.c.id == outbox.c.inbox_id)
                .where(outbox.c.claim_token == token)
                .order_by(outbox.c.id)
            ).mappings()
            return [
                OutboxEntry(
                    outbox_id=r["id"],
                    inbox_id=r["inbox_id"],
                    target=r["target"],
                    operation=r["operation"],
                    body=r["body"],
                    resource_count=r["resource_count"],
                    attempts=r["attempts"],
                    created_at=r["created_at"],
                    received_at=r["received_at"],
                    claim_token=token,
                )
                for r in rows
            ]

    def mark_delivered(self, entry: OutboxEntry) -> None:
        """The delivery succeeded. Recorded even if the claim expired: success is final."""
        now = self._clock()
        with self._engine.begin() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id == entry.outbox_id)
                .values(
                    status=Status.DELIVERED,
                    claim_token=None,
                    claimed_until=None,
                    delivered_at=now,
                    last_error=None,
                    updated_at=now,
                )
            )
            if entry.inbox_id is None:
                return
            undelivered = conn.execute(
                select(func.count())
                .select_from(outbox)
                .where(
                    outbox.c.inbox_id == entry.inbox_id,
                    outbox.c.status.not_in((Status.DELIVERED, Status.SUPERSEDED)),
                )
            ).scalar_one()
            if undelivered == 0:
                conn.execute(
                    update(inbox_messages)
                    .where(inbox_messages.c.id == entry.inbox_id)
                    .values(status=Status.DELIVERED, delivered_at=now, last_error=None, updated_at=now)
                )

    def mark_failed(self, entry: OutboxEntry, *, error_type: str, reason: str, retry_at: datetime | None,
                    count_attempt: bool = True) -> bool:
        """Record a failed attempt: retry at ``retry_at``, or dead-letter when it is None.

        With ``count_attempt=False`` (a held delivery) the attempt counted at claim time is
        given back. Returns False if the claim had been lost to another worker (nothing recorded).
        """
        attempts = entry.attempts if count_attempt else max(0, entry.attempts - 1)
        now = self._clock()
        status = Status.RETRYING if retry_at is not None else Status.DEAD
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(outbox)
                .where(outbox.c.id == entry.outbox_id, outbox.c.claim_token == entry.claim_token)
                .values(
                    status=status,
                    claim_token=None,
                    claimed_until=None,
                    next_attempt_at=retry_at or now,
                    attempts=attempts,
                    last_error=reason,
                    updated_at=now,
                )
            ).rowcount
            if not changed:
                return False
            if entry.inbox_id is not None:
                conn.execute(
                    update(inbox_messages)
                    .where(inbox_messages.c.id == entry.inbox_id)
                    .values(status=status, attempts=attempts, last_error=reason, updated_at=now)
                )
            if status == Status.DEAD:
                add_dead_letter(
                    conn,
                    now=now,
                    stage="deliver",
                    error_type=error_type,
                    reason=reason,
                    inbox_id=entry.inbox_id,
                    outbox_id=entry.outbox_id,
                )
        return True
