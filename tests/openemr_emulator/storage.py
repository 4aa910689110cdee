"""The emulator's state in a real SQLite file, so it persists across requests (issue 4 item 6).

One connection, one lock: the emulator is a test fixture, not a database benchmark.
The shapes of the rows follow what OpenEMR keeps (openemr.md §2.3 ``oauth_clients``,
§4.1 ``patient_data`` with ``pid``/``uuid``/``pubpid``, §4.4 ``categories`` and documents).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY, client_secret TEXT, client_name TEXT, client_role TEXT, scope TEXT,
    redirect_uris TEXT, jwks TEXT, jwks_uri TEXT, grant_types TEXT, is_enabled INTEGER,
    registration_access_token TEXT, registration_uri_path TEXT, issued_at INTEGER, metadata TEXT
);
CREATE TABLE IF NOT EXISTS jwt_history (jti TEXT PRIMARY KEY, client_id TEXT, expires_at REAL);
CREATE TABLE IF NOT EXISTS access_tokens (
    jti TEXT PRIMARY KEY, client_id TEXT, user_id TEXT, role TEXT, scopes TEXT, expires_at REAL,
    revoked INTEGER DEFAULT 0
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token TEXT PRIMARY KEY, client_id TEXT, user_id TEXT, scopes TEXT, expires_at REAL, revoked INTEGER DEFAULT 0,
    access_jti TEXT
);
CREATE TABLE IF NOT EXISTS auth_codes (
    code TEXT PRIMARY KEY, client_id TEXT, user_id TEXT, redirect_uri TEXT, scopes TEXT, code_challenge TEXT,
    expires_at REAL, used INTEGER DEFAULT 0, nonce TEXT
);
CREATE TABLE IF NOT EXISTS trusted_users (client_id TEXT, user_id TEXT, PRIMARY KEY (client_id, user_id));
CREATE TABLE IF NOT EXISTS users (username TEXT PRIMARY KEY, password TEXT, uuid TEXT, acl TEXT);
CREATE TABLE IF NOT EXISTS sessions (sid TEXT PRIMARY KEY, username TEXT, request TEXT);
CREATE TABLE IF NOT EXISTS patients (
    pid INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT UNIQUE, pubpid TEXT, fname TEXT, mname TEXT, lname TEXT,
    dob TEXT, sex TEXT, ss TEXT, phone TEXT, email TEXT, street TEXT, city TEXT, state TEXT, postal_code TEXT,
    updated REAL
);
CREATE INDEX IF NOT EXISTS ix_patients_pubpid ON patients (pubpid);
CREATE INDEX IF NOT EXISTS ix_patients_updated ON patients (updated);
CREATE TABLE IF NOT EXISTS resources (
    uuid TEXT PRIMARY KEY, type TEXT, patient_uuid TEXT, body TEXT, updated REAL
);
CREATE INDEX IF NOT EXISTS ix_resources_type ON resources (type, patient_uuid);
CREATE TABLE IF NOT EXISTS categories (id INTEGER PRIMARY KEY, name TEXT, parent INTEGER, codes TEXT);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT, pid INTEGER, category_id INTEGER, filename TEXT,
    mimetype TEXT, hash TEXT, content BLOB, docdate TEXT, eid INTEGER, created REAL
);
CREATE TABLE IF NOT EXISTS export_jobs (job TEXT PRIMARY KEY, request TEXT, transaction_time TEXT, outputs TEXT,
    polls_left INTEGER);
"""

#: The default document category tree of sql/database.sql (openemr.md §4.4), plus the two
#: categories openemr-config/globals.sql adds (Imaging, AI Reports).
CATEGORIES: list[tuple[int, str, int]] = [
    (1, "Categories", 0),
    (2, "Lab Report", 1),
    (3, "Medical Record", 1),
    (4, "Patient Information", 1),
    (5, "Patient ID card", 4),
    (6, "Patient Photograph", 4),
    (7, "Advance Directive", 1),
    (8, "Do Not Resuscitate Order", 7),
    (9, "Durable Power of Attorney", 7),
    (10, "Living Will", 7),
    (11, "CCR", 1),
    (12, "CCD", 1),
    (13, "CCDA", 1),
    (14, "Eye Module", 1),
    (15, "Onsite Portal", 1),
    (16, "Patient", 15),
    (17, "Reviewed", 15),
    (18, "FHIR Export Document", 1),
    (19, "Invoices", 1),
    (20, "Imaging", 1),
    (21, "AI Reports", 1),
]


class Storage:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        # Durable enough for a test fixture, and fast: WAL without an fsync per commit.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.executescript(SCHEMA)
        with self.tx() as db:
            if not db.execute("SELECT 1 FROM categories LIMIT 1").fetchone():
                db.executemany("INSERT INTO categories (id, name, parent, codes) VALUES (?, ?, ?, '')", CATEGORIES)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock (BEGIN IMMEDIATE … COMMIT, ROLLBACK on error)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
