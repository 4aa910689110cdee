"""OpenEMR's URLs and its two discovery documents (openemr.md §2.1, §2.2).

Every absolute URL OpenEMR builds starts with its ``site_addr_oath`` global (§1), so
``openemr.base_url`` must be that address: a client assertion's ``aud`` must equal the
token URL exactly (§2.6). :func:`check_discovery` reports a mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from hub.config import OpenEmrSettings
from hub.openemr.errors import NotRegistered, OpenEmrUnavailable

__all__ = ["Discovery", "Endpoints", "check_discovery", "fetch_discovery", "flatten_scopes"]


@dataclass(frozen=True)
class Endpoints:
    """``AUTH = {base}/oauth2/{site}``, ``FHIR = {base}/apis/{site}/fhir``, ``API = {base}/apis/{site}/api``."""

    base_url: str
    site: str = "default"

    @classmethod
    def from_settings(cls, settings: OpenEmrSettings) -> Endpoints:
        if not settings.base_url:
            raise NotRegistered("openemr.base_url is not set (MEORING_OPENEMR__BASE_URL)")
        return cls(settings.base_url.rstrip("/"), settings.site)

    @property
    def auth(self) -> str:
        return f"{self.base_url}/oauth2/{self.site}"

    @property
    def token(self) -> str:
        return f"{self.auth}/token"

    @property
    def authorize(self) -> str:
        return f"{self.auth}/authorize"

    @property
    def registration(self) -> str:
        return f"{self.auth}/registration"

    @property
    def openid_configuration(self) -> str:
        return f"{self.auth}/.well-known/openid-configuration"

    @property
    def fhir(self) -> str:
        return f"{self.base_url}/apis/{self.site}/fhir"

    @property
    def smart_configuration(self) -> str:
        # Served under the FHIR base, not under /oauth2 (§2.1).
        return f"{self.fhir}/.well-known/smart-configuration"

    @property
    def api(self) -> str:
        return f"{self.base_url}/apis/{self.site}/api"


def flatten_scopes(value: Any) -> list[str]:
    """``scopes_supported`` as a flat list.

    OpenEMR's SMART document nests it (``[[...]]``, a bug, §2.2); the OIDC one is flat.
    Accept both, and a space-separated string for good measure.
    """
    out: list[str] = []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        for item in value:
            out.extend(flatten_scopes(item))
    return out


@dataclass(frozen=True)
class Discovery:
    """What the two discovery documents say (only the parts the hub uses)."""

    issuer: str
    token_endpoint: str
    authorization_endpoint: str
    registration_endpoint: str | None
    scopes_supported: frozenset[str]
    grant_types_supported: frozenset[str]
    code_challenge_methods: frozenset[str]

    @classmethod
    def from_documents(cls, smart: Mapping[str, Any], oidc: Mapping[str, Any]) -> Discovery:
        # The SMART document lists client_credentials and S256 (§2.2); the OIDC one lists
        # neither client_credentials nor a working PKCE list (it claims "plain" too).
        grants = set(smart.get("grant_types_supported") or []) | set(oidc.get("grant_types_supported") or [])
        return cls(
            issuer=str(oidc.get("issuer") or ""),
            token_endpoint=str(smart.get("token_endpoint") or oidc.get("token_endpoint") or ""),
            authorization_endpoint=str(smart.get("authorization_endpoint") or oidc.get("authorization_endpoint") or ""),
            registration_endpoint=oidc.get("registration_endpoint"),
            scopes_supported=frozenset(flatten_scopes(smart.get("scopes_supported"))
                                       + flatten_scopes(oidc.get("scopes_supported"))),
            grant_types_supported=frozenset(str(g) for g in grants),
            code_challenge_methods=frozenset(str(m) for m in smart.get("code_challenge_methods_supported") or []),
        )


def _get_json(http: httpx.Client, url: str) -> dict[str, Any]:
    try:
        response = http.get(url, headers={"Accept": "application/json"})
    except httpx.TransportError as exc:
        raise OpenEmrUnavailable(f"OpenEMR {httpx.URL(url).path} unreachable ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise OpenEmrUnavailable(f"OpenEMR {httpx.URL(url).path} answered HTTP {response.status_code}",
                                 status=response.status_code)
    try:
        body = response.json()
    except ValueError:
        raise OpenEmrUnavailable(f"OpenEMR {httpx.URL(url).path} did not answer JSON") from None
    if not isinstance(body, dict):
        raise OpenEmrUnavailable(f"OpenEMR {httpx.URL(url).path} did not answer a JSON object")
    return body


def fetch_discovery(http: httpx.Client, endpoints: Endpoints) -> Discovery:
    """Read both discovery documents (no authentication needed)."""
    return Discovery.from_documents(_get_json(http, endpoints.smart_configuration),
                                    _get_json(http, endpoints.openid_configuration))


def check_discovery(discovery: Discovery, endpoints: Endpoints, scopes: list[str]) -> list[str]:
    """Problems that would break the hub, one line each (empty: all is well)."""
    problems: list[str] = []
    if discovery.token_endpoint != endpoints.token:
        problems.append(
            f"OpenEMR names its token URL {discovery.token_endpoint!r}, the hub uses {endpoints.token!r}: set "
            "openemr.base_url to OpenEMR's site_addr_oath (client assertions would fail the aud check)"
        )
    if "client_credentials" not in discovery.grant_types_supported:
        problems.append("OpenEMR does not offer client_credentials (SMART discovery)")
    missing = [s for s in scopes if s not in discovery.scopes_supported]
    if missing:
        problems.append(
            f"OpenEMR does not support the scope(s) {' '.join(missing)}"
            " (system/* scopes need the rest_system_scopes_api global)"
        )
    return problems
