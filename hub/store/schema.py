"""The store's tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them.

A message's life is recorded at every step::

    inbox_messages.status: received → translated → delivered
                                   ↘ retrying ↗  ↘ dead (a dead_letters row says why)

``outbox`` holds what must still be delivered (a FHIR Bundle for the FHIR server, later
OpenEMR writes); each entry retries on its own schedule.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

metadata = MetaData()

# SQLite needs INTEGER for rowid autoincrement; MariaDB gets BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")
# Microsecond timestamps on MariaDB (its DATETIME defaults to whole seconds).
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Payload = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


class Status:
    """Values of ``inbox_messages.status`` and ``outbox.status``."""

    RECEIVED = "received"
    TRANSLATED = "translated"
    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    DEAD = "dead"
    SUPERSEDED = "superseded"


inbox_messages = Table(
    "inbox_messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("channel", String(32), nullable=False),
    Column("source", String(255), nullable=False),
    Column("message_id", String(199), nullable=True, doc="sender's id, e.g. MSH-10"),
    Column("content_type", String(100), nullable=True),
    Column("content_hash", String(64), nullable=False, doc="SHA-256 of payload"),
    Column("payload", Payload, nullable=False, doc="the bytes exactly as received"),
    Column("received_at", Timestamp, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Timestamp, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("claim_token", String(64), nullable=True),
    Column("claimed_until", Timestamp, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    Column("delivered_at", Timestamp, nullable=True),
    Column("unconsumed", Text, nullable=True, doc="JSON list of source elements the mapping did not use"),
    Index("ix_inbox_status_next", "status", "next_attempt_at"),
    Index("ix_inbox_received_at", "received_at"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(255), primary_key=True, doc="channel|source|message_id"),
    Column("inbox_id", Id, ForeignKey("inbox_messages.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("inbox_id", Id, ForeignKey("inbox_messages.id", ondelete="CASCADE"), nullable=True),
    Column("target", String(32), nullable=False, doc="where it goes: fhir, openemr, ..."),
    Column("operation", String(32), nullable=False, doc="transaction, batch, ..."),
    Column("body", LongText, nullable=False, doc="JSON request body"),
    Column("resource_count", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("claim_token", String(64), nullable=True),
    Column("claimed_until", Timestamp, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("delivered_at", Timestamp, nullable=True),
    Index("ix_outbox_status_next", "status", "next_attempt_at"),
    Index("ix_outbox_inbox", "inbox_id"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("inbox_id", Id, ForeignKey("inbox_messages.id", ondelete="CASCADE"), nullable=True),
    Column("outbox_id", Id, ForeignKey("outbox.id", ondelete="SET NULL"), nullable=True),
    Column("stage", String(16), nullable=False, doc="translate or deliver"),
    Column("error_type", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("replayed_at", Timestamp, nullable=True),
    Index("ix_dead_letters_open", "replayed_at"),
)

feed_cursors = Table(
    "feed_cursors",
    metadata,
    Column("name", String(128), primary_key=True, doc="e.g. orthanc:changes, senaite:samples"),
    Column("value", Text, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

read_cache = Table(
    "read_cache",
    metadata,
    Column("key", String(255), primary_key=True, doc="e.g. openemr:Patient/<uuid>"),
    Column("value", LongText, nullable=False),
    Column("etag", String(128), nullable=True),
    Column("expires_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)
