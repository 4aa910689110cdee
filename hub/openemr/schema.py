"""The store's OpenEMR table (SQLAlchemy Core), registered on :data:`hub.store.schema.metadata`.

Migration ``0002`` (``hub/store/migrations/versions/0002_openemr.py``) creates it.

``openemr_tokens`` has one row per OAuth2 client kind (``user``, ``backend``). For the
user-delegated client it holds the refresh token and the access token that came with it,
so that a rotation (OpenEMR revokes the old refresh token on every use, openemr.md §2.6)
is stored in one transaction before the new access token is used. ``generation`` counts
rotations: a refresh is only stored if the generation it started from is still current
(compare-and-swap), so two processes never both rotate one refresh token. ``state`` is
what readiness reports; ``rotation_token``/``rotation_started_at`` mark a refresh in flight.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, String, Table, Text

from hub.store.schema import Timestamp, metadata


class TokenState:
    """Values of ``openemr_tokens.state``."""

    ACTIVE = "active"
    RELOGIN_REQUIRED = "relogin_required"
    CLIENT_DISABLED = "client_disabled"


openemr_tokens = Table(
    "openemr_tokens",
    metadata,
    Column("client", String(32), primary_key=True, doc="user or backend"),
    Column("client_id", String(255), nullable=True, doc="the OAuth2 client the tokens were issued to"),
    Column("refresh_token", Text, nullable=True, doc="secret: never logged"),
    Column("access_token", Text, nullable=True, doc="secret: never logged"),
    Column("access_expires_at", Timestamp, nullable=True),
    Column("scope", Text, nullable=True, doc="scopes granted (space-separated)"),
    Column("generation", Integer, nullable=False, default=0, doc="incremented by every stored rotation"),
    Column("state", String(32), nullable=False, doc="active, relogin_required or client_disabled"),
    Column("reason", Text, nullable=True, doc="why the state is not active (no secrets, no PHI)"),
    Column("rotation_token", String(64), nullable=True, doc="who is refreshing now"),
    Column("rotation_started_at", Timestamp, nullable=True, doc="when that refresh began"),
    Column("updated_at", Timestamp, nullable=False),
)
