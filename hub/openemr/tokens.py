"""Access tokens for OpenEMR: the backend client's and the user-delegated client's.

**Backend (client_credentials, openemr.md §2.6).** The hub signs a client assertion with
its RS384 key (``iss = sub = client_id``, ``aud`` = the token URL exactly, a unique ``jti``,
``exp`` one minute ahead) using authlib's RFC 7523 signer, and gets a 300 s token. The token
is kept in memory and renewed ``token_renew_margin_s`` before it ends, and at once when
OpenEMR answers 401 to it (a token may die early: revoked, or the server's clock).

**User (authorization code + PKCE, refresh rotation).** OpenEMR revokes a refresh token
(and the access token issued with it) every time it is used (§2.6, §7.4, §10), so the new
pair must be stored before anything else happens. :class:`UserTokens` does that:

1. *claim* the rotation in the store: a compare-and-swap on ``generation`` that also marks
   the row with a rotation token, so two processes never spend one refresh token;
2. POST the refresh grant;
3. store the new refresh token, the new access token and ``generation + 1`` in **one**
   transaction (compare-and-swap on the generation it started from);
4. only then hand the new access token to the caller.

A crash between 2 and 3 loses the new refresh token: OpenEMR has already revoked the old
one, so no client could recover it. The claim left behind says a rotation was interrupted;
the next refresh is refused with ``invalid_grant`` and the hub enters the persistent, loud
**re-login required** state naming that cause (``meoring openemr status``, ``doctor``,
``/readyz``, metrics). Writes meanwhile wait in the outbox (see :mod:`hub.openemr.writes`).

Tokens and secrets are never logged or put into error messages.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from hub.openemr.endpoints import Endpoints
from hub.openemr.errors import ClientDisabled, OpenEmrUnavailable, ReloginRequired, TokenRefused
from hub.openemr.keys import KEY_ALG, KeyStore
from hub.openemr.registration import RegisteredClient
from hub.openemr.schema import TokenState, openemr_tokens
from hub.store.records import utcnow

__all__ = [
    "ASSERTION_TYPE",
    "AuthorizationRequest",
    "SystemTokens",
    "TokenRow",
    "TokenSource",
    "TokenStore",
    "UserTokens",
    "authorization_request",
    "client_assertion",
    "exchange_code",
]

log = logging.getLogger("hub.openemr")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 60
Clock = Callable[[], datetime]


class TokenSource:
    """What the OpenEMR client needs: a current token, and a way to say it was refused."""

    kind: str = ""

    def token(self) -> str:
        raise NotImplementedError

    def invalidate(self, token: str) -> None:
        """OpenEMR answered 401 to ``token``: do not hand it out again."""
        raise NotImplementedError


# --------------------------------------------------------------------------- token endpoint


class _InvalidGrant(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(error)
        self.error = error
        self.description = description


def _clean(text: object, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def _post_token(http: httpx.Client, endpoints: Endpoints, form: Mapping[str, str], *, client_id: str,
                what: str) -> dict[str, Any]:
    """POST the token endpoint; map OpenEMR's answers (§2.6) onto the hub's errors."""
    path = httpx.URL(endpoints.token).path
    try:
        response = http.post(endpoints.token, data=dict(form), headers={"Accept": "application/json"})
    except httpx.TransportError as exc:
        raise OpenEmrUnavailable(f"OpenEMR {path} unreachable for the {what} grant ({type(exc).__name__})") from None
    if response.status_code >= 500:
        raise OpenEmrUnavailable(f"OpenEMR {path} answered HTTP {response.status_code} to the {what} grant",
                                 status=response.status_code)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise OpenEmrUnavailable(f"OpenEMR {path} answered HTTP {response.status_code} without a JSON object",
                                 status=response.status_code)
    error = body.get("error")
    if response.status_code == 200 and not error and isinstance(body.get("access_token"), str):
        return body
    description = _clean(body.get("error_description") or body.get("message") or "")
    if body.get("hint"):
        description = f"{description} ({_clean(body['hint'], 120)})" if description else _clean(body["hint"], 120)
    error = str(error or f"HTTP {response.status_code}")
    if error == "invalid_client":
        raise ClientDisabled(
            f"OpenEMR refused client {client_id} for the {what} grant (invalid_client: {description or 'no detail'}): "
            "new clients start disabled — an administrator must enable it under Administration → System → "
            "API Clients (or the client is unknown, or its key or token URL does not match)",
            client_id=client_id,
        )
    if error == "invalid_grant" or (
        # A logged-out or admin-revoked user: 400 invalid_request "Refresh Token revoked or logged out" (§2.8).
        error == "invalid_request" and "revoked" in description.lower()
    ):
        raise _InvalidGrant(error, description)
    raise TokenRefused(f"OpenEMR refused the {what} grant for client {client_id} ({error}: {description})",
                       error=error, status=response.status_code)


def _expires_at(body: Mapping[str, Any], now: datetime) -> datetime:
    try:
        seconds = float(body.get("expires_in") or 0)
    except (TypeError, ValueError):
        seconds = 0.0
    return now + timedelta(seconds=max(seconds, 0.0))


def client_assertion(client: RegisteredClient, key_store: KeyStore, token_url: str, *, now: float | None = None) -> str:
    """An RS384 client assertion (RFC 7523 via authlib) as OpenEMR checks it (§2.6)."""
    key = key_store.active()
    issued = int(now if now is not None else time.time())
    signed: str | bytes = private_key_jwt_sign(
        key,
        client_id=client.client_id,
        token_endpoint=token_url,
        alg=KEY_ALG,
        claims={"jti": uuid.uuid4().hex},
        header={"kid": key.kid, "typ": "JWT"},
        issued_at=issued,
        expires_at=issued + ASSERTION_LIFETIME_S,
    )
    return signed.decode("ascii") if isinstance(signed, bytes) else signed


# --------------------------------------------------------------------------- backend


class SystemTokens(TokenSource):
    """Backend-services tokens (client_credentials), cached in memory and renewed early."""

    kind = "backend"

    def __init__(
        self,
        http: httpx.Client,
        endpoints: Endpoints,
        client: RegisteredClient,
        keys: KeyStore,
        *,
        store: TokenStore | None = None,
        renew_margin_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._endpoints = endpoints
        self.client = client
        self._keys = keys
        self._store = store
        self._margin = renew_margin_s
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self.fetches = 0

    def token(self) -> str:
        with self._lock:
            if self._token is not None and self._clock() < self._expires - self._margin:
                return self._token
            return self._fetch()

    def invalidate(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def _record(self, state: str, reason: str | None) -> None:
        """Keep the backend row's state current (another process may have written it)."""
        if self._store is None:
            return
        row = self._store.get("backend")
        if row is None or row.state != state or row.client_id != self.client.client_id:
            self._store.set_state("backend", state, reason, client_id=self.client.client_id)

    def _fetch(self) -> str:
        now = self._clock()
        form = {
            "grant_type": "client_credentials",
            "scope": self.client.scope,
            "client_assertion_type": ASSERTION_TYPE,
            # The assertion is judged by OpenEMR's clock: sign it with the wall clock, always.
            "client_assertion": client_assertion(self.client, self._keys, self._endpoints.token),
        }
        try:
            body = _post_token(self._http, self._endpoints, form, client_id=self.client.client_id,
                               what="client_credentials")
        except ClientDisabled as exc:
            self._record(TokenState.CLIENT_DISABLED, str(exc))
            raise
        except _InvalidGrant as exc:
            raise TokenRefused(f"OpenEMR refused the client_credentials grant ({exc.error}: {exc.description})",
                               error=exc.error) from None
        self._record(TokenState.ACTIVE, None)
        self.fetches += 1
        try:
            lifetime = float(body.get("expires_in") or 0)
        except (TypeError, ValueError):
            lifetime = 0.0
        self._token = str(body["access_token"])
        self._expires = now + lifetime
        log.info("openemr token obtained", extra={"event": "openemr_token", "client": "backend",
                                                   "expires_in": lifetime})
        return self._token


# --------------------------------------------------------------------------- persistence


@dataclass(frozen=True)
class TokenRow:
    client: str
    client_id: str | None
    refresh_token: str | None = field(repr=False)
    access_token: str | None = field(repr=False)
    access_expires_at: datetime | None
    scope: str | None
    generation: int
    state: str
    reason: str | None
    rotation_token: str | None
    rotation_started_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class _Claim:
    token: str
    interrupted_since: datetime | None


class TokenStore:
    """The ``openemr_tokens`` table: every write is one transaction."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def get(self, client: str) -> TokenRow | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(openemr_tokens).where(openemr_tokens.c.client == client)).mappings().first()
        return TokenRow(**dict(row)) if row else None

    def _upsert(self, client: str, values: dict[str, Any]) -> None:
        with self._engine.begin() as conn:
            if conn.execute(update(openemr_tokens).where(openemr_tokens.c.client == client).values(**values)).rowcount:
                return
            try:
                with conn.begin_nested():
                    conn.execute(insert(openemr_tokens).values(client=client, generation=0, **values))
            except IntegrityError:
                conn.execute(update(openemr_tokens).where(openemr_tokens.c.client == client).values(**values))

    def set_state(self, client: str, state: str, reason: str | None, *, client_id: str | None = None,
                  generation: int | None = None) -> bool:
        """Record ``state``; with ``generation``, only if no rotation was stored since."""
        now = self._clock()
        values: dict[str, Any] = {"state": state, "reason": reason, "updated_at": now}
        if client_id is not None:
            values["client_id"] = client_id
        if generation is None:
            self._upsert(client, values)
            return True
        with self._engine.begin() as conn:
            return bool(conn.execute(
                update(openemr_tokens)
                .where(openemr_tokens.c.client == client, openemr_tokens.c.generation == generation)
                .values(**values)
            ).rowcount)

    def store_login(self, client: str, client_id: str, body: Mapping[str, Any]) -> TokenRow:
        """Store a fresh login (authorization code grant): new generation, state active."""
        now = self._clock()
        with self._engine.begin() as conn:
            current = conn.execute(
                select(openemr_tokens.c.generation).where(openemr_tokens.c.client == client)
            ).scalar()
            values = {
                "client_id": client_id,
                "refresh_token": body.get("refresh_token"),
                "access_token": body["access_token"],
                "access_expires_at": _expires_at(body, now),
                "scope": body.get("scope"),
                "generation": (current or 0) + 1,
                "state": TokenState.ACTIVE,
                "reason": None,
                "rotation_token": None,
                "rotation_started_at": None,
                "updated_at": now,
            }
            if current is None:
                conn.execute(insert(openemr_tokens).values(client=client, **values))
            else:
                conn.execute(update(openemr_tokens).where(openemr_tokens.c.client == client).values(**values))
        row = self.get(client)
        assert row is not None
        return row

    def begin_rotation(self, client: str, generation: int, lease: timedelta) -> _Claim | None:
        """Claim the right to spend generation ``generation``'s refresh token, or None if taken."""
        now = self._clock()
        token = uuid.uuid4().hex
        with self._engine.begin() as conn:
            row = conn.execute(
                select(openemr_tokens.c.generation, openemr_tokens.c.rotation_token,
                       openemr_tokens.c.rotation_started_at).where(openemr_tokens.c.client == client)
            ).first()
            if row is None or row.generation != generation:
                return None
            stale = row.rotation_token is not None and row.rotation_started_at is not None \
                and row.rotation_started_at < now - lease
            if row.rotation_token is not None and not stale:
                return None
            same_claim = (openemr_tokens.c.rotation_token.is_(None) if row.rotation_token is None
                          else openemr_tokens.c.rotation_token == row.rotation_token)
            changed = conn.execute(
                update(openemr_tokens)
                .where(openemr_tokens.c.client == client, openemr_tokens.c.generation == generation, same_claim)
                .values(rotation_token=token, rotation_started_at=now, updated_at=now)
            ).rowcount
            if not changed:
                return None
        return _Claim(token, row.rotation_started_at if stale else None)

    def finish_rotation(self, client: str, generation: int, body: Mapping[str, Any], refresh_token: str) -> bool:
        """Store the rotated pair atomically; False if another rotation was stored meanwhile."""
        now = self._clock()
        with self._engine.begin() as conn:
            return bool(conn.execute(
                update(openemr_tokens)
                .where(openemr_tokens.c.client == client, openemr_tokens.c.generation == generation)
                .values(
                    refresh_token=refresh_token,
                    access_token=body["access_token"],
                    access_expires_at=_expires_at(body, now),
                    scope=body.get("scope"),
                    generation=generation + 1,
                    state=TokenState.ACTIVE,
                    reason=None,
                    rotation_token=None,
                    rotation_started_at=None,
                    updated_at=now,
                )
            ).rowcount)

    def abort_rotation(self, client: str, claim_token: str) -> None:
        """Release a claim after a failure that did not spend the refresh token."""
        with self._engine.begin() as conn:
            conn.execute(
                update(openemr_tokens)
                .where(openemr_tokens.c.client == client, openemr_tokens.c.rotation_token == claim_token)
                .values(rotation_token=None, rotation_started_at=None)
            )


# --------------------------------------------------------------------------- user


def _relogin_hint(reason: str) -> str:
    return f"{reason} — run `meoring openemr login`"


class UserTokens(TokenSource):
    """User-delegated tokens, persisted in the store and rotated atomically (see the module doc)."""

    kind = "user"

    def __init__(
        self,
        http: httpx.Client,
        endpoints: Endpoints,
        client: RegisteredClient,
        store: TokenStore,
        *,
        renew_margin_s: float = 60.0,
        rotation_lease: timedelta = timedelta(seconds=90),
        clock: Clock = utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._http = http
        self._endpoints = endpoints
        self.client = client
        self._store = store
        self._margin = timedelta(seconds=renew_margin_s)
        self._lease = rotation_lease
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._refused: set[str] = set()
        self.rotations = 0
        #: Test seam: runs after OpenEMR answered a refresh and before the answer is stored.
        self.after_refresh_response: Callable[[], None] | None = None

    def _usable(self, row: TokenRow) -> TokenRow:
        if row.state == TokenState.RELOGIN_REQUIRED:
            raise ReloginRequired(_relogin_hint(f"OpenEMR re-login required: {row.reason or 'no reason recorded'}"))
        if row.client_id and row.client_id != self.client.client_id:
            reason = "the user client was registered again; the stored tokens belong to the previous client"
            self._store.set_state("user", TokenState.RELOGIN_REQUIRED, reason, generation=row.generation)
            raise ReloginRequired(_relogin_hint(f"OpenEMR re-login required: {reason}"))
        if not row.refresh_token and not row.access_token:
            raise ReloginRequired(_relogin_hint("no OpenEMR user login yet"))
        return row

    def _row(self) -> TokenRow:
        row = self._store.get("user")
        if row is None:
            raise ReloginRequired(_relogin_hint("no OpenEMR user login yet"))
        return self._usable(row)

    def _fresh(self, row: TokenRow) -> bool:
        return (row.access_token is not None and row.access_token not in self._refused
                and row.access_expires_at is not None and row.access_expires_at - self._margin > self._clock())

    def token(self) -> str:
        with self._lock:
            row = self._row()
            if self._fresh(row):
                assert row.access_token is not None
                return row.access_token
            return self._rotate(row)

    def invalidate(self, token: str) -> None:
        with self._lock:
            self._refused.add(token)

    def mark_relogin(self, reason: str) -> None:
        """OpenEMR says the user's tokens are revoked (logout, admin revoke, §2.8): stop until a login."""
        row = self._store.get("user")
        self._store.set_state("user", TokenState.RELOGIN_REQUIRED, reason,
                              generation=row.generation if row else None)
        log.error("openemr re-login required", extra={"event": "openemr_relogin_required", "reason": reason})

    def refresh(self) -> str:
        """Rotate now, whatever the access token's age (``meoring openemr status --check`` uses it)."""
        with self._lock:
            return self._rotate(self._row())

    def _rotate(self, row: TokenRow) -> str:
        deadline = self._clock() + self._lease + timedelta(seconds=5)
        while True:
            if not row.refresh_token:
                reason = "OpenEMR issued no refresh token (offline_access not granted) and the access token expired"
                self._store.set_state("user", TokenState.RELOGIN_REQUIRED, reason, generation=row.generation)
                raise ReloginRequired(_relogin_hint(f"OpenEMR re-login required: {reason}"))
            claim = self._store.begin_rotation("user", row.generation, self._lease)
            if claim is None:
                # Another process (or a crashed one, until its lease runs out) is rotating.
                if self._clock() > deadline:
                    raise OpenEmrUnavailable("another hub process has been refreshing the OpenEMR token too long")
                self._sleep(0.2)
                row = self._row()
                if self._fresh(row):
                    assert row.access_token is not None
                    return row.access_token
                continue
            return self._spend(row, claim)

    def _spend(self, row: TokenRow, claim: _Claim) -> str:
        assert row.refresh_token is not None
        form = {
            "grant_type": "refresh_token",
            "refresh_token": row.refresh_token,
            # No scope: the refresh grant wants exactly the original scopes (§2.7); omitted means those.
            "client_id": self.client.client_id,
        }
        if self.client.client_secret:
            form["client_secret"] = self.client.client_secret
        try:
            body = _post_token(self._http, self._endpoints, form, client_id=self.client.client_id,
                               what="refresh_token")
        except _InvalidGrant as exc:
            return self._refused_refresh(row, claim, exc)
        except ClientDisabled as exc:
            self._store.abort_rotation("user", claim.token)
            self._store.set_state("user", TokenState.CLIENT_DISABLED, str(exc), generation=row.generation)
            raise
        except Exception:
            # Not spent (no answer, 5xx) or refused for another reason: release the claim.
            self._store.abort_rotation("user", claim.token)
            raise
        if self.after_refresh_response is not None:
            self.after_refresh_response()
        new_refresh = str(body.get("refresh_token") or row.refresh_token)
        if not self._store.finish_rotation("user", row.generation, body, new_refresh):
            # Cannot happen while claims work; keep the newest stored pair rather than ours.
            log.error("openemr token rotation lost a race", extra={"event": "openemr_rotation_race"})
            latest = self._row()
            if self._fresh(latest):
                assert latest.access_token is not None
                return latest.access_token
            raise OpenEmrUnavailable("the OpenEMR token rotation lost a race; try again")
        self.rotations += 1
        self._refused.clear()
        log.info("openemr refresh token rotated", extra={"event": "openemr_token_rotated", "client": "user",
                                                         "generation": row.generation + 1})
        return str(body["access_token"])

    def _refused_refresh(self, row: TokenRow, claim: _Claim, exc: _InvalidGrant) -> str:
        latest = self._store.get("user")
        if latest is not None and latest.generation != row.generation:
            # Someone stored a newer pair meanwhile; ours was simply out of date.
            self._store.abort_rotation("user", claim.token)
            return self._rotate(self._usable(latest))
        reason = f"OpenEMR refused the stored refresh token ({exc.error}: {exc.description or 'no detail'})"
        if claim.interrupted_since is not None:
            reason += (f"; a refresh started at {claim.interrupted_since.isoformat(timespec='seconds')}Z was "
                       "interrupted before its new refresh token was stored")
        self._store.set_state("user", TokenState.RELOGIN_REQUIRED, reason, generation=row.generation)
        self._store.abort_rotation("user", claim.token)
        log.error("openemr re-login required", extra={"event": "openemr_relogin_required", "reason": reason})
        raise ReloginRequired(_relogin_hint(f"OpenEMR re-login required: {reason}"))


# --------------------------------------------------------------------------- authorization code + PKCE


@dataclass(frozen=True)
class AuthorizationRequest:
    """One login attempt: the URL to open, and what the answer must match."""

    url: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)
    redirect_uri: str


def authorization_request(endpoints: Endpoints, client: RegisteredClient, redirect_uri: str) -> AuthorizationRequest:
    """``AUTH/authorize`` with PKCE S256 (OpenEMR rejects ``plain``, §2.5) and ``aud`` = the FHIR base."""
    verifier = generate_token(64)
    state = generate_token(32)
    url: str = prepare_grant_uri(
        endpoints.authorize,
        client_id=client.client_id,
        response_type="code",
        redirect_uri=redirect_uri,
        scope=client.scope,
        state=state,
        code_challenge=create_s256_code_challenge(verifier),
        code_challenge_method="S256",
        aud=endpoints.fhir,
    )
    return AuthorizationRequest(url=url, state=state, code_verifier=verifier, redirect_uri=redirect_uri)


def exchange_code(http: httpx.Client, endpoints: Endpoints, client: RegisteredClient,
                  request: AuthorizationRequest, code: str) -> dict[str, Any]:
    """The authorization_code grant (the code lives one minute, §2.5)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": request.redirect_uri,
        "code_verifier": request.code_verifier,
        "client_id": client.client_id,
    }
    if client.client_secret:
        form["client_secret"] = client.client_secret
    try:
        return _post_token(http, endpoints, form, client_id=client.client_id, what="authorization_code")
    except _InvalidGrant as exc:
        raise TokenRefused(
            f"OpenEMR refused the authorization code ({exc.error}: {exc.description or 'no detail'}); "
            "codes live one minute — run the login again", error=exc.error,
        ) from None
