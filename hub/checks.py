"""Endpoint checks shared by ``meoring doctor`` and ``/readyz``.

Each check returns None when fine, or one line naming the endpoint and the problem
(never a secret: URLs are shown without credentials).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from hub.config import HubSettings
from hub.store import Store

Check = Callable[[], str | None]


def redact(url: str) -> str:
    """``url`` without user:password."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def store_check(store: Store) -> Check:
    def check() -> str | None:
        try:
            store.ping()
            if not store.schema_is_current():
                return "store: schema is not at the latest migration (run `meoring db upgrade`)"
        except Exception as exc:  # noqa: BLE001 - a check reports, never raises
            return f"store: {redact(str(store.engine.url))} unreachable ({type(exc).__name__})"
        return None

    return check


def _get(url: str, *, timeout: float, headers: dict[str, str] | None = None) -> httpx.Response | str:
    try:
        return httpx.get(url, timeout=timeout, headers=headers or {})
    except httpx.HTTPError as exc:
        return f"{redact(url)} unreachable ({type(exc).__name__})"


def fhir_check(base_url: str, *, timeout: float = 5.0) -> Check:
    def check() -> str | None:
        response = _get(f"{base_url}/metadata?_summary=true", timeout=timeout,
                        headers={"Accept": "application/fhir+json"})
        if isinstance(response, str):
            return f"fhir: {response}"
        if response.status_code != 200:
            return f"fhir: {redact(base_url)}/metadata answered HTTP {response.status_code}"
        try:
            version = response.json().get("fhirVersion", "")
        except ValueError:
            return f"fhir: {redact(base_url)}/metadata is not JSON"
        if not str(version).startswith("4.0"):
            return f"fhir: {redact(base_url)} speaks FHIR {version or 'unknown'}, the hub needs R4 (4.0.x)"
        return None

    return check


def redis_check(url: str, *, timeout: float = 3.0) -> Check:
    def check() -> str | None:
        import redis

        try:
            client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            client.ping()
            client.close()
        except Exception as exc:  # noqa: BLE001
            return f"redis: {redact(url)} unreachable ({type(exc).__name__})"
        return None

    return check


def orthanc_check(url: str, *, timeout: float = 5.0) -> Check:
    def check() -> str | None:
        response = _get(f"{url.rstrip('/')}/system", timeout=timeout)
        if isinstance(response, str):
            return f"orthanc: {response}"
        if response.status_code != 200:
            return f"orthanc: {redact(url)}/system answered HTTP {response.status_code}"
        return None

    return check


def openemr_check(base_url: str, site: str, *, timeout: float = 5.0) -> Check:
    def check() -> str | None:
        url = f"{base_url.rstrip('/')}/oauth2/{site}/.well-known/openid-configuration"
        response = _get(url, timeout=timeout)
        if isinstance(response, str):
            return f"openemr: {response}"
        if response.status_code != 200:
            return f"openemr: {redact(url)} answered HTTP {response.status_code}"
        return None

    return check


def configured_checks(settings: HubSettings, store: Store | None) -> dict[str, Check]:
    """Every check that applies to this configuration, by name."""
    checks: dict[str, Check] = {}
    if store is not None:
        checks["store"] = store_check(store)
    checks["fhir"] = fhir_check(settings.fhir.base_url)
    if settings.redis.url:
        checks["redis"] = redis_check(settings.redis.url)
    if settings.orthanc.url:
        checks["orthanc"] = orthanc_check(settings.orthanc.url)
    if settings.openemr.base_url:
        checks["openemr"] = openemr_check(settings.openemr.base_url, settings.openemr.site)
        if store is not None:
            from hub.openemr.health import openemr_readiness

            openemr_store = store
            checks["openemr-auth"] = lambda: openemr_readiness(settings, openemr_store)
    return checks
