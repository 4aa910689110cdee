"""OpenEMR: the OAuth2 token table (refresh-token rotation, re-login state).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Ts = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "openemr_tokens",
        sa.Column("client", sa.String(32), primary_key=True),
        sa.Column("client_id", sa.String(255), nullable=True),
        sa.Column("refresh_token", sa.Text, nullable=True),
        sa.Column("access_token", sa.Text, nullable=True),
        sa.Column("access_expires_at", Ts, nullable=True),
        sa.Column("scope", sa.Text, nullable=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("rotation_token", sa.String(64), nullable=True),
        sa.Column("rotation_started_at", Ts, nullable=True),
        sa.Column("updated_at", Ts, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("openemr_tokens")
