"""Dead letters and replay: put failed or past messages back through the pipeline.

Replays are safe because every delivery is idempotent (deterministic ids or conditional
requests): a message delivered twice leaves the FHIR server as it was after the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import Connection, Engine, and_, select, update

from hub.store.records import DeadLetter, utcnow
from hub.store.schema import Status, dead_letters, inbox_messages, outbox

Clock = Callable[[], datetime]


class Replay:
    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def dead_letters(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        query = select(dead_letters).order_by(dead_letters.c.id).limit(limit)
        if not include_replayed:
            query = query.where(dead_letters.c.replayed_at.is_(None))
        with self._engine.connect() as conn:
            return [
                DeadLetter(
                    dead_letter_id=r["id"],
                    inbox_id=r["inbox_id"],
                    outbox_id=r["outbox_id"],
                    stage=r["stage"],
                    error_type=r["error_type"],
                    reason=r["reason"],
                    created_at=r["created_at"],
                    replayed_at=r["replayed_at"],
                )
                for r in conn.execute(query).mappings()
            ]

    def replay_dead(self, dead_letter_ids: Sequence[int] | None = None) -> int:
        """Re-queue open dead letters (all, or the given ids); returns how many.

        A translate-stage failure goes back to ``received`` (the mapping may have been
        fixed); a delivery failure re-queues its outbox entry with a fresh attempt count.
        """
        now = self._clock()
        query = select(dead_letters).where(dead_letters.c.replayed_at.is_(None))
        if dead_letter_ids is not None:
            query = query.where(dead_letters.c.id.in_(list(dead_letter_ids)))
        count = 0
        with self._engine.begin() as conn:
            for letter in conn.execute(query).mappings().all():
                if letter["stage"] == "deliver" and letter["outbox_id"] is not None:
                    conn.execute(
                        update(outbox)
                        .where(outbox.c.id == letter["outbox_id"], outbox.c.status == Status.DEAD)
                        .values(status=Status.PENDING, attempts=0, next_attempt_at=now, claim_token=None,
                                updated_at=now)
                    )
                    if letter["inbox_id"] is not None:
                        conn.execute(
                            update(inbox_messages)
                            .where(inbox_messages.c.id == letter["inbox_id"])
                            .values(status=Status.TRANSLATED, attempts=0, updated_at=now)
                        )
                elif letter["inbox_id"] is not None:
                    self._requeue_inbox(conn, [letter["inbox_id"]], now)
                conn.execute(
                    update(dead_letters).where(dead_letters.c.id == letter["id"]).values(replayed_at=now)
                )
                count += 1
        return count

    def replay_range(self, since: datetime, until: datetime, *, channel: str | None = None) -> int:
        """Re-translate and re-deliver every message received in [since, until)."""
        now = self._clock()
        condition = and_(inbox_messages.c.received_at >= since, inbox_messages.c.received_at < until)
        if channel is not None:
            condition = and_(condition, inbox_messages.c.channel == channel)
        with self._engine.begin() as conn:
            ids = list(conn.execute(select(inbox_messages.c.id).where(condition)).scalars())
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                self._requeue_inbox(conn, chunk, now)
                conn.execute(
                    update(dead_letters)
                    .where(dead_letters.c.inbox_id.in_(chunk), dead_letters.c.replayed_at.is_(None))
                    .values(replayed_at=now)
                )
        return len(ids)

    @staticmethod
    def _requeue_inbox(conn: Connection, ids: list[int], now: datetime) -> None:
        # Older deliveries of these messages are replaced by the new translation.
        conn.execute(
            update(outbox)
            .where(outbox.c.inbox_id.in_(ids), outbox.c.status != Status.SUPERSEDED)
            .values(status=Status.SUPERSEDED, claim_token=None, updated_at=now)
        )
        conn.execute(
            update(inbox_messages)
            .where(inbox_messages.c.id.in_(ids))
            .values(
                status=Status.RECEIVED,
                attempts=0,
                next_attempt_at=now,
                claim_token=None,
                claimed_until=None,
                last_error=None,
                updated_at=now,
            )
        )
