"""Plain records passed across the store's boundary (no SQLAlchemy rows leak out)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime


def utcnow() -> datetime:
    """Naive UTC with microseconds: the store keeps every timestamp in UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message is stored straight away as a dead letter: it was translated on receipt and
    cannot become FHIR. ``reason`` is one PHI-free line, as for the worker's dead letters."""

    error_type: str
    reason: str
    stage: str = "translate"


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message as received, before it is stored.

    ``message_id`` is the sender's own id (MSH-10 for HL7 v2); together with ``channel``
    and ``source`` it is the idempotency key, so a re-sent message is recognised.
    With ``rejection`` the message is stored as ``dead`` with a dead letter saying why, in the
    same transaction (kept for audit and ``meoring replay``, never translated by the worker).
    """

    channel: str
    source: str
    payload: bytes
    message_id: str | None = None
    content_type: str | None = None
    received_at: datetime | None = None
    rejection: Rejection | None = None

    @property
    def idempotency_key(self) -> str | None:
        if not self.message_id:
            return None
        return f"{self.channel}|{self.source}|{self.message_id}"[:255]

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


@dataclass(frozen=True, slots=True)
class Receipt:
    """The store's answer to a receive: the message is durable once you hold this."""

    inbox_id: int
    duplicate: bool = False
    status: str = "received"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    inbox_id: int
    channel: str
    source: str
    payload: bytes
    received_at: datetime
    message_id: str | None
    content_type: str | None
    status: str
    attempts: int
    last_error: str | None = None
    claim_token: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    outbox_id: int
    inbox_id: int | None
    target: str
    operation: str
    body: str
    resource_count: int
    attempts: int
    created_at: datetime
    received_at: datetime | None = None
    claim_token: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    dead_letter_id: int
    inbox_id: int | None
    outbox_id: int | None
    stage: str
    error_type: str
    reason: str
    created_at: datetime
    replayed_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts for ``meoring status`` and the metrics endpoint."""

    inbox_by_status: dict[str, int] = field(default_factory=dict)
    outbox_by_status: dict[str, int] = field(default_factory=dict)
    open_dead_letters: int = 0
    oldest_pending_received_at: datetime | None = None
    oldest_pending_inbox_id: int | None = None
