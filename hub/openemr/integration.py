"""The OpenEMR integration put together from settings: one object per process.

::

    openemr = OpenEmr(settings, store)          # nothing is sent yet
    openemr.register()                          # meoring openemr register
    openemr.login(on_url=print)                 # meoring openemr login
    openemr.reader.read("Patient", uuid)        # cache-aside reads (backend token)
    openemr.writer.create_patient(patient)      # queued; OpenEmrDeliverer carries it out
    openemr.mirror(fhir_client).incremental()   # meoring openemr sync
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import httpx

import hub
from hub.config import HubSettings
from hub.errors import HubError
from hub.openemr.client import OpenEmrClient
from hub.openemr.endpoints import Endpoints
from hub.openemr.errors import TokenRefused
from hub.openemr.keys import KeyStore
from hub.openemr.loopback import RedirectCatcher
from hub.openemr.matching import MatchPolicy, PatientMatch, match_or_create
from hub.openemr.reader import CachedReader
from hub.openemr.registration import (
    ClientKind,
    ClientRegistry,
    RegisteredClient,
    redirect_uri,
    register_clients,
    state_dir,
)
from hub.openemr.sync import PatientMirror, TransactionSink
from hub.openemr.tokens import (
    SystemTokens,
    TokenRow,
    TokenStore,
    UserTokens,
    authorization_request,
    exchange_code,
)
from hub.openemr.writes import OpenEmrDeliverer, OpenEmrWriter
from hub.store import Store
from hub.store.records import OutboxEntry, utcnow

__all__ = ["LoginResult", "OpenEmr", "OpenEmrWorkerDeliverer", "openemr_deliverers"]


class LoginResult:
    """What a login stored (no secrets): granted scopes, what was asked but not granted."""

    def __init__(self, row: TokenRow, requested: list[str]) -> None:
        self.row = row
        granted = set((row.scope or "").split())
        # OpenEMR strips every api:* scope from the granted list it reports (§2.6).
        self.missing = [s for s in requested if s not in granted and not s.startswith("api:")]


class OpenEmr:
    """Endpoints, keys, registered clients, token sources, client, cache, writer and deliverer."""

    def __init__(
        self,
        settings: HubSettings,
        store: Store,
        *,
        transport: httpx.BaseTransport | None = None,
        user_clock: Callable[[], datetime] = utcnow,
        rotation_lease: timedelta = timedelta(seconds=90),
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.hub_settings = settings
        self.settings = settings.openemr
        self.store = store
        self.endpoints = Endpoints.from_settings(self.settings)
        self.state_dir = state_dir(settings)
        self.keys = KeyStore(self.state_dir / "keys")
        self.registry = ClientRegistry(self.state_dir, self.settings)
        self.token_store = TokenStore(store.engine, clock=user_clock)
        self.http = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(self.settings.timeout_s, connect=self.settings.connect_timeout_s),
            follow_redirects=False,
            headers={"User-Agent": f"meoring-hub/{hub.__version__}"},
        )
        self._user_clock = user_clock
        self._lease = rotation_lease
        self._sleep = sleep
        self.reload()

    def _registration_stamp(self) -> int:
        try:
            return self.registry.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def reload_if_registered_again(self) -> None:
        """Pick up a registration made by another process (``meoring openemr register``)."""
        if self._registration_stamp() != self._stamp:
            self.reload()

    def reload(self) -> None:
        """(Re)build token sources and client from the registered clients."""
        self._stamp = self._registration_stamp()
        clients = self.registry.all()
        margin = self.settings.token_renew_margin_s
        backend = clients.get("backend")
        user = clients.get("user")
        self.system = SystemTokens(self.http, self.endpoints, backend, self.keys, store=self.token_store,
                                   renew_margin_s=margin) if backend else None
        extra: dict[str, Any] = {"sleep": self._sleep} if self._sleep is not None else {}
        self.user = UserTokens(self.http, self.endpoints, user, self.token_store, renew_margin_s=margin,
                               rotation_lease=self._lease, clock=self._user_clock, **extra) if user else None
        client_extra: dict[str, Any] = {"sleep": self._sleep} if self._sleep is not None else {}
        self.client = OpenEmrClient(self.endpoints, system=self.system, user=self.user, http=self.http,
                                    page_size=self.settings.page_size, **client_extra)
        self.reader = CachedReader(self.client, self.store.cache, ttl=timedelta(seconds=self.settings.cache_ttl_s))
        self.writer = OpenEmrWriter(self.store, self.settings)
        self.deliverer = OpenEmrDeliverer(self.client, self.store, self.settings, reader=self.reader)

    # -- setup --------------------------------------------------------------------------
    def register(self, *, kinds: tuple[ClientKind, ...] = ("backend", "user"),
                 rotate_key: bool = False) -> list[RegisteredClient]:
        """Register clients with OpenEMR (dynamic registration); ``rotate_key`` makes a new key first."""
        if rotate_key:
            self.keys.rotate()
        registered = register_clients(self.http, self.endpoints, self.settings, self.keys, self.registry,
                                      kinds=kinds)
        self.reload()
        return registered

    def login(self, *, on_url: Callable[[str], None], timeout: float = 300.0) -> LoginResult:
        """Authorization code + PKCE: show the URL, catch the redirect on loopback, store the tokens."""
        client = self.registry.get("user")
        redirect = redirect_uri(self.settings)
        with RedirectCatcher(self.settings.redirect_host, self.settings.redirect_port) as catcher:
            request = authorization_request(self.endpoints, client, redirect)
            on_url(request.url)
            params = catcher.wait(timeout)
        if "error" in params:
            detail = " ".join(params.get("error_description", "").split())[:200]
            raise TokenRefused(f"OpenEMR login failed ({params['error']}{': ' + detail if detail else ''})",
                               error=params["error"])
        if params.get("state") != request.state or not params.get("code"):
            raise HubError("the login redirect does not belong to this login (state mismatch); run it again")
        body = exchange_code(self.http, self.endpoints, client, request, params["code"])
        if not body.get("refresh_token"):
            raise TokenRefused("OpenEMR issued no refresh token: keep offline_access ticked on the consent screen "
                               "and log in again")
        row = self.token_store.store_login("user", client.client_id, body)
        self.reload()
        return LoginResult(row, client.scopes)

    # -- work ---------------------------------------------------------------------------
    def mirror(self, fhir: TransactionSink, *, batch_size: int = 100) -> PatientMirror:
        return PatientMirror(self.client, fhir, self.store.cursors, self.settings, reader=self.reader,
                             batch_size=batch_size)

    def match_or_create(self, patient: Mapping[str, Any], *, mrn: str,
                        policy: MatchPolicy | None = None) -> PatientMatch:
        """The MRN-match policy for ADT patients (see :mod:`hub.openemr.matching`)."""
        return match_or_create(self.deliverer, self.writer, patient, mrn=mrn,
                               policy=policy or self.settings.unknown_patient_policy)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class OpenEmrWorkerDeliverer:
    """The pipeline worker's deliverer for target ``openemr`` in a long-running process.

    It follows registrations made meanwhile by ``meoring openemr register`` (another process);
    logins need nothing: the user's tokens are read from the store on every use.
    """

    target = "openemr"

    def __init__(self, openemr: OpenEmr) -> None:
        self.openemr = openemr

    def deliver(self, entry: OutboxEntry) -> None:
        self.openemr.reload_if_registered_again()
        self.openemr.deliverer.deliver(entry)


def openemr_deliverers(settings: HubSettings, store: Store) -> dict[str, OpenEmrWorkerDeliverer]:
    """``{"openemr": deliverer}`` when ``openemr.base_url`` is set, else ``{}`` (for hub.runtime)."""
    if not settings.openemr.base_url:
        return {}
    return {"openemr": OpenEmrWorkerDeliverer(OpenEmr(settings, store))}
