"""Initial store: inbox, idempotency keys, outbox, dead letters, feed cursors, read cache.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Ts = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "inbox_messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("message_id", sa.String(199), nullable=True),
        sa.Column("content_type", sa.String(100), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("payload", Blob, nullable=False),
        sa.Column("received_at", Ts, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", Ts, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("claim_token", sa.String(64), nullable=True),
        sa.Column("claimed_until", Ts, nullable=True),
        sa.Column("updated_at", Ts, nullable=False),
        sa.Column("delivered_at", Ts, nullable=True),
        sa.Column("unconsumed", sa.Text, nullable=True),
    )
    op.create_index("ix_inbox_status_next", "inbox_messages", ["status", "next_attempt_at"])
    op.create_index("ix_inbox_received_at", "inbox_messages", ["received_at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("inbox_id", Id, sa.ForeignKey("inbox_messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", Ts, nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("inbox_id", Id, sa.ForeignKey("inbox_messages.id", ondelete="CASCADE"), nullable=True),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("body", LongText, nullable=False),
        sa.Column("resource_count", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", Ts, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("claim_token", sa.String(64), nullable=True),
        sa.Column("claimed_until", Ts, nullable=True),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("updated_at", Ts, nullable=False),
        sa.Column("delivered_at", Ts, nullable=True),
    )
    op.create_index("ix_outbox_status_next", "outbox", ["status", "next_attempt_at"])
    op.create_index("ix_outbox_inbox", "outbox", ["inbox_id"])
    op.create_table(
        "dead_letters",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("inbox_id", Id, sa.ForeignKey("inbox_messages.id", ondelete="CASCADE"), nullable=True),
        sa.Column("outbox_id", Id, sa.ForeignKey("outbox.id", ondelete="SET NULL"), nullable=True),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("replayed_at", Ts, nullable=True),
    )
    op.create_index("ix_dead_letters_open", "dead_letters", ["replayed_at"])
    op.create_table(
        "feed_cursors",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", Ts, nullable=False),
    )
    op.create_table(
        "read_cache",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("value", LongText, nullable=False),
        sa.Column("etag", sa.String(128), nullable=True),
        sa.Column("expires_at", Ts, nullable=False),
        sa.Column("updated_at", Ts, nullable=False),
    )


def downgrade() -> None:
    for table in ("read_cache", "feed_cursors", "dead_letters", "outbox", "idempotency_keys", "inbox_messages"):
        op.drop_table(table)
