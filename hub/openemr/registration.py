"""Dynamic client registration of the hub's two OpenEMR clients (openemr.md §2.3, §2.4).

* **backend** — a confidential client (``application_type: private``) authenticating with
  ``private_key_jwt`` (RS384 assertions, §2.6); holds the ``system/*`` read scopes that patient
  sync and bulk ``$export`` need. Its tokens cannot call ``/api`` (§2.8).
* **user** — a confidential client with a secret, for the authorization code + PKCE grant
  (``meoring openemr login``): ``api:oemr``, Patient writes and documents, ``offline_access``
  for a refresh token, ``openid``.

OpenEMR answers 200 (not 201) with ``client_id``, ``client_secret`` (empty for public
clients), ``registration_access_token`` and ``registration_client_uri``; both clients start
disabled because they ask for ``user/`` or ``system/`` scopes (§2.4). What it returns is
kept in ``<state_dir>/clients.json`` (mode 0600): it holds secrets, so it is never printed
or logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from hub.config import HubSettings, OpenEmrSettings
from hub.openemr.endpoints import Endpoints
from hub.openemr.errors import NotRegistered, OpenEmrUnavailable, RegistrationRefused
from hub.openemr.keys import KeyStore, write_private_file

__all__ = [
    "ClientKind",
    "ClientRegistry",
    "RegisteredClient",
    "enable_instructions",
    "redirect_uri",
    "register_clients",
    "state_dir",
]

ClientKind = Literal["backend", "user"]
CLIENT_NAMES: dict[str, str] = {
    "backend": "Meoring Hub (backend services)",
    "user": "Meoring Hub (user-delegated)",
}


def state_dir(settings: HubSettings) -> Path:
    """Where registrations and keys live: ``openemr.state_dir`` or ``<data_dir>/openemr``."""
    return settings.openemr.state_dir or settings.data_dir / "openemr"


def redirect_uri(settings: OpenEmrSettings) -> str:
    """The loopback redirect URI registered for the user client; OpenEMR compares it exactly (§2.5)."""
    return f"http://{settings.redirect_host}:{settings.redirect_port}/callback"


@dataclass(frozen=True)
class RegisteredClient:
    """One client as OpenEMR registered it. Secrets are excluded from ``repr``."""

    kind: str
    client_id: str
    scope: str
    redirect_uris: tuple[str, ...] = ()
    client_secret: str | None = field(default=None, repr=False)
    registration_access_token: str | None = field(default=None, repr=False)
    registration_client_uri: str | None = None
    client_id_issued_at: int | None = None
    kid: str | None = None
    jwks_uri: str | None = None
    registered_at: str | None = None

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["redirect_uris"] = list(self.redirect_uris)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegisteredClient:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["redirect_uris"] = tuple(values.get("redirect_uris") or ())
        return cls(**values)


class ClientRegistry:
    """``clients.json`` in the state directory, plus overrides from settings."""

    def __init__(self, directory: Path, settings: OpenEmrSettings | None = None) -> None:
        self.directory = directory
        self._settings = settings

    @property
    def path(self) -> Path:
        return self.directory / "clients.json"

    def _stored(self) -> dict[str, RegisteredClient]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            raise NotRegistered(f"{self.path} is not valid JSON; restore it from backup or register again") from None
        return {kind: RegisteredClient.from_json(value) for kind, value in (data or {}).items()
                if isinstance(value, dict)}

    def all(self) -> dict[str, RegisteredClient]:
        clients = self._stored()
        s = self._settings
        if s is not None and s.backend_client_id:
            stored = clients.get("backend")
            clients["backend"] = RegisteredClient(
                kind="backend", client_id=s.backend_client_id, scope=s.backend_scopes,
                kid=stored.kid if stored else None,
            )
        if s is not None and s.user_client_id:
            clients["user"] = RegisteredClient(
                kind="user", client_id=s.user_client_id, scope=s.user_scopes, redirect_uris=(redirect_uri(s),),
                client_secret=s.user_client_secret.get_secret_value() if s.user_client_secret else None,
            )
        return clients

    def get(self, kind: ClientKind) -> RegisteredClient:
        client = self.all().get(kind)
        if client is None:
            what = "backend-services" if kind == "backend" else "user-delegated"
            raise NotRegistered(f"no OpenEMR {what} client is registered (run `meoring openemr register`)")
        return client

    def save(self, client: RegisteredClient) -> None:
        clients = self._stored()
        clients[client.kind] = client
        write_private_file(self.path, json.dumps({k: c.to_json() for k, c in clients.items()}, indent=2))


def _registration_body(kind: ClientKind, settings: OpenEmrSettings, keys: KeyStore) -> dict[str, Any]:
    body: dict[str, Any] = {
        # "private" is what makes a confidential client; anything else is public and may not
        # hold user/ or system/ scopes (§2.3 rule 2).
        "application_type": "private",
        "client_name": CLIENT_NAMES[kind],
        # Required even for the backend client (§2.3 rule 4).
        "redirect_uris": [redirect_uri(settings)],
    }
    if kind == "backend":
        body.update(
            token_endpoint_auth_method="private_key_jwt",  # noqa: S106 - a method name
            grant_types=["client_credentials"],
            scope=settings.backend_scopes,
        )
        # A private client asking for system/ scopes must send jwks or jwks_uri (§2.3 rule 3).
        if settings.jwks_uri:
            body["jwks_uri"] = settings.jwks_uri
        else:
            body["jwks"] = keys.active_jwks()
    else:
        body.update(
            token_endpoint_auth_method="client_secret_post",  # noqa: S106 - a method name
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            scope=settings.user_scopes,
        )
    return body


def _post_registration(http: httpx.Client, endpoints: Endpoints, body: Mapping[str, Any]) -> dict[str, Any]:
    path = httpx.URL(endpoints.registration).path
    try:
        response = http.post(endpoints.registration, json=dict(body), headers={"Accept": "application/json"})
    except httpx.TransportError as exc:
        raise OpenEmrUnavailable(f"OpenEMR {path} unreachable ({type(exc).__name__})") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 500:
        raise OpenEmrUnavailable(f"OpenEMR {path} answered HTTP {response.status_code}", status=response.status_code)
    if response.status_code == 404:
        # Every /oauth2 request is a 404 while no API is switched on (§1).
        raise RegistrationRefused(f"OpenEMR {path} answered 404: switch on rest_api/rest_fhir_api (openemr-config)")
    if response.status_code not in (200, 201) or not isinstance(answer, dict) or "error" in answer:
        error = answer.get("error") if isinstance(answer, dict) else None
        # Registration errors carry their text in error_description (§10).
        description = answer.get("error_description") if isinstance(answer, dict) else None
        detail = f": {description}" if description else ""
        raise RegistrationRefused(
            f"OpenEMR refused the registration (HTTP {response.status_code}, {error or 'no error code'}){detail}",
            error=error,
        )
    if not answer.get("client_id"):
        raise RegistrationRefused("OpenEMR's registration answer has no client_id")
    return answer


def register_clients(
    http: httpx.Client,
    endpoints: Endpoints,
    settings: OpenEmrSettings,
    keys: KeyStore,
    registry: ClientRegistry,
    *,
    kinds: tuple[ClientKind, ...] = ("backend", "user"),
    now: datetime | None = None,
) -> list[RegisteredClient]:
    """Register ``kinds`` with OpenEMR and store each answer; returns the new clients.

    The backend key pair is generated first if the hub has none. Each client is stored as
    soon as it is registered, so a failure on the second leaves the first usable.
    """
    registered: list[RegisteredClient] = []
    for kind in kinds:
        if kind == "backend" and not settings.jwks_uri:
            keys.ensure()
        answer = _post_registration(http, endpoints, _registration_body(kind, settings, keys))
        secret = answer.get("client_secret") or None
        if kind == "user" and not secret:
            raise RegistrationRefused(
                "OpenEMR registered the user client as public (no client_secret); it needs application_type private"
            )
        client = RegisteredClient(
            kind=kind,
            client_id=str(answer["client_id"]),
            scope=str(answer.get("scope") or (settings.backend_scopes if kind == "backend" else settings.user_scopes)),
            redirect_uris=tuple(answer.get("redirect_uris") or [redirect_uri(settings)]),
            client_secret=secret,
            registration_access_token=answer.get("registration_access_token"),
            registration_client_uri=answer.get("registration_client_uri"),
            client_id_issued_at=answer.get("client_id_issued_at"),
            kid=keys.active().kid if kind == "backend" and not settings.jwks_uri else None,
            jwks_uri=settings.jwks_uri if kind == "backend" else None,
            registered_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        )
        registry.save(client)
        registered.append(client)
    return registered


def enable_instructions(clients: list[RegisteredClient], endpoints: Endpoints) -> list[str]:
    """The admin step that makes new clients usable (they start disabled, §2.4), one line each."""
    lines = [
        "OpenEMR starts these clients disabled. As an OpenEMR administrator (ACL admin/super), open "
        f"Administration → System → API Clients ({endpoints.base_url}/interface/smart/admin-client.php):"
    ]
    for client in clients:
        lines.append(f"  edit client {client.client_id} ({CLIENT_NAMES.get(client.kind, client.kind)}) "
                     "and press Enable")
    if any(c.kind == "user" for c in clients):
        lines.append("Then run `meoring openemr login` and sign in as the OpenEMR user the hub acts for.")
    return lines
