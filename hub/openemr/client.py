"""The hub's HTTP client for OpenEMR's FHIR R4 API and standard REST API.

It follows OpenEMR 8.2 as its code behaves (``openemr.md``), not as its OpenAPI file says:

* reads, searches and bulk ``$export`` use the **backend** token; Patient writes and every
  ``/api`` call use the **user** token — a system token cannot reach ``/api`` (§2.8, §7.7);
* search answers are ``collection`` Bundles without ``next`` links, and only Patient honours
  ``_count``/``_offset`` (§3.2, §7.11): Patient searches are paged by offset until a short
  page, other searches come back whole; ``POST [type]/_search`` is available (§3);
* ``POST /fhir/Patient`` answers 201 ``{"pid": N, "uuid": "..."}`` and no ``Location``;
  ``PUT`` answers the Patient; a validation failure is 400 ``{"validationErrors": ...}`` (§3.1);
* a document upload answers 200 ``true`` and no id; every upload failure and an empty list
  are a 404 with an empty body; a missing document is a 400 (§4.4);
* a 401 is answered once by renewing the token and sending again; a second 401 means a
  missing scope ("Unauthorized", §2.8); 403 is an ACL denial or ``api:oemr`` missing.

Error messages carry method, path and status, never a query string, a token or a body.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from hub.openemr.endpoints import Endpoints
from hub.openemr.errors import (
    AccessDenied,
    MissingScope,
    NotRegistered,
    OpenEmrRefused,
    OpenEmrUnavailable,
    ReloginRequired,
)
from hub.openemr.tokens import TokenSource

__all__ = ["ExportResult", "OpenEmrClient", "Params", "query_pairs"]

log = logging.getLogger("hub.openemr")

Params = Mapping[str, str | int] | Sequence[tuple[str, str | int]]

_FHIR_JSON = "application/fhir+json"
_READ_RETRIES = (0.2, 1.0)


def query_pairs(params: Params | None) -> list[tuple[str, str]]:
    if not params:
        return []
    items = params.items() if isinstance(params, Mapping) else params
    return [(str(k), str(v)) for k, v in items]


def _fields(response: httpx.Response) -> tuple[str, ...]:
    """The names (never the values) of the fields OpenEMR's validation rejected."""
    try:
        body = response.json()
    except ValueError:
        return ()
    errors = body.get("validationErrors") if isinstance(body, dict) else None
    if isinstance(errors, dict):
        return tuple(str(k) for k in errors)
    if isinstance(errors, list):
        return tuple(str(e.get("field") or e.get("name") or "?") if isinstance(e, dict) else "?" for e in errors)
    return ()


def _message(response: httpx.Response) -> str:
    """OpenEMR's resource-side error text (``{"error","message","code"}``, §10), shortened."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        return " ".join(str(body.get("message") or body.get("error_description") or "").split())[:160]
    return ""


@dataclass(frozen=True)
class ExportResult:
    """A finished bulk export: ``transactionTime`` and one ``(type, url)`` per NDJSON file."""

    transaction_time: str | None
    outputs: tuple[tuple[str, str], ...]


class OpenEmrClient:
    """One OpenEMR site. ``system`` and ``user`` are token sources (either may be absent)."""

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        system: TokenSource | None,
        user: TokenSource | None,
        http: httpx.Client,
        page_size: int = 200,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoints = endpoints
        self._system = system
        self._user = user
        self._http = http
        self.page_size = max(1, min(page_size, 200))  # OpenEMR caps _count at 200 (§3.2)
        self._sleep = sleep
        self.requests = 0

    # ------------------------------------------------------------------ plumbing

    def _source(self, kind: str) -> TokenSource:
        source = self._system if kind == "backend" else self._user
        if source is None:
            what = "backend-services" if kind == "backend" else "user-delegated"
            raise NotRegistered(f"no OpenEMR {what} client is registered (run `meoring openemr register`)")
        return source

    def _request(
        self,
        method: str,
        url: str,
        *,
        auth: str,
        scope: str,
        params: Params | None = None,
        accept: str = "application/json",
        headers: Mapping[str, str] | None = None,
        ok: frozenset[int] = frozenset(),
        **kwargs: Any,
    ) -> httpx.Response:
        """Send with a token of kind ``auth``; ``scope`` names what a 401 would be missing."""
        source = self._source(auth)
        path = httpx.URL(url).path
        retries = list(_READ_RETRIES) if method == "GET" else []
        renewed = False
        while True:
            bearer = source.token()
            all_headers = {"Accept": accept, "Authorization": f"Bearer {bearer}", **(headers or {})}
            self.requests += 1
            try:
                query: list[tuple[str, str | int | float | bool | None]] = list(query_pairs(params))
                response = self._http.request(method, url, params=query or None, headers=all_headers, **kwargs)
            except httpx.TransportError as exc:
                if retries:
                    self._sleep(retries.pop(0))
                    continue
                raise OpenEmrUnavailable(f"OpenEMR {method} {path} failed ({type(exc).__name__})") from None
            status = response.status_code
            log.debug("openemr request", extra={"event": "openemr_request", "method": method, "path": path,
                                                "status": status})
            if status in ok or 200 <= status < 300:
                return response
            if status == 401 and not renewed:
                # Expired early, revoked, or a scope problem: a fresh token tells which (§2.8).
                source.invalidate(bearer)
                renewed = True
                continue
            if status == 401:
                text = _message(response)
                if "denied" in text.lower():
                    raise OpenEmrRefused(f"OpenEMR rejected a fresh {auth} token for {method} {path} (401)",
                                         status=401, url=path)
                raise MissingScope(
                    f"OpenEMR answered 401 to {method} {path} with a fresh {auth} token: the client lacks "
                    f"the scope {scope} (register it, and have it granted)", scope=scope, url=path)
            if status == 400 and "revoked" in _message(response).lower():
                # The trusted-user row is gone (logout or admin revoke, §2.8): no token will work.
                reason = "OpenEMR revoked the user's tokens (logged out or revoked by an administrator)"
                mark = getattr(source, "mark_relogin", None)
                if callable(mark):
                    mark(reason)
                    raise ReloginRequired(f"OpenEMR re-login required: {reason} — run `meoring openemr login`")
                raise OpenEmrRefused(f"OpenEMR refused {method} {path}: tokens revoked", status=400, url=path)
            if status == 403:
                raise AccessDenied(
                    f"OpenEMR denied {method} {path} (403: an ACL denial for the user behind the token, or "
                    "api:oemr missing)", status=403, url=path)
            if status >= 500 or status == 429:
                if retries:
                    self._sleep(retries.pop(0))
                    continue
                raise OpenEmrUnavailable(f"OpenEMR {method} {path} answered HTTP {status}", status=status, url=path)
            fields = _fields(response)
            detail = f" (fields: {', '.join(fields)})" if fields else ""
            raise OpenEmrRefused(f"OpenEMR refused {method} {path}: HTTP {status}{detail}", status=status, url=path,
                                 fields=fields)

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise OpenEmrUnavailable(f"OpenEMR answered {what} with something that is not JSON",
                                     status=response.status_code) from None

    # ------------------------------------------------------------------ FHIR reads

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """``GET FHIR/[type]/[id]`` with the backend token; None if OpenEMR has no such resource."""
        response = self._request("GET", f"{self.endpoints.fhir}/{resource_type}/{resource_id}", auth="backend",
                                 scope=f"system/{resource_type}.rs", ok=frozenset({404}))
        if response.status_code == 404:
            return None
        body = self._json(response, f"{resource_type} read")
        return body if isinstance(body, dict) else None

    def search_page(self, resource_type: str, params: Params | None = None, *, post: bool = False) -> dict[str, Any]:
        """One search request: a ``collection`` Bundle (``POST [type]/_search`` with ``post``)."""
        url = f"{self.endpoints.fhir}/{resource_type}"
        scope = f"system/{resource_type}.rs"
        if post:
            response = self._request("POST", f"{url}/_search", auth="backend", scope=scope,
                                     content=urlencode(query_pairs(params)).encode("ascii"),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        else:
            response = self._request("GET", url, auth="backend", scope=scope, params=params)
        body = self._json(response, f"{resource_type} search")
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise OpenEmrUnavailable(f"OpenEMR answered a {resource_type} search without a Bundle")
        return body

    def search_pages(self, resource_type: str, params: Params | None = None, *,
                     post: bool = False) -> Iterator[list[dict[str, Any]]]:
        """The matches, a page at a time.

        OpenEMR never sends ``next`` links (§3.2). For Patient the hub pages itself with
        ``_count``/``_offset`` and stops at a short page; every other resource answers all
        matches at once (and ignores ``_count``), so there is one page.
        """
        base = [(k, v) for k, v in query_pairs(params) if k not in ("_count", "_offset")]
        if resource_type != "Patient":
            yield _resources(self.search_page(resource_type, base, post=post))
            return
        offset = 0
        while True:
            page = _resources(self.search_page(
                resource_type, [*base, ("_count", str(self.page_size)), ("_offset", str(offset))], post=post))
            yield page
            if len(page) < self.page_size:
                return
            offset += len(page)

    def search(self, resource_type: str, params: Params | None = None, *, post: bool = False) -> list[dict[str, Any]]:
        """Every match of a search (all pages)."""
        return [r for page in self.search_pages(resource_type, params, post=post) for r in page]

    # ------------------------------------------------------------------ Patient writes

    def create_patient(self, resource: Mapping[str, Any]) -> tuple[int, str]:
        """``POST FHIR/Patient`` with the user token: OpenEMR's ``(pid, uuid)`` (201, §3.1)."""
        response = self._request("POST", f"{self.endpoints.fhir}/Patient", auth="user", scope="user/Patient.write",
                                 content=json.dumps(resource).encode("utf-8"),
                                 headers={"Content-Type": _FHIR_JSON})
        body = self._json(response, "Patient create")
        if not isinstance(body, dict) or "uuid" not in body:
            raise OpenEmrUnavailable("OpenEMR's Patient create answer has no uuid", status=response.status_code)
        # Older answers wrap it like the standard API: {"data": {"pid", "uuid"}}; accept both.
        data: dict[str, Any] = body["data"] if isinstance(body.get("data"), dict) else body
        return int(data.get("pid") or 0), str(data["uuid"])

    def update_patient(self, patient_uuid: str, resource: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT FHIR/Patient/{uuid}``: the updated Patient (200). 404 (``[]``) raises OpenEmrRefused."""
        body = dict(resource)
        body["id"] = patient_uuid
        response = self._request("PUT", f"{self.endpoints.fhir}/Patient/{patient_uuid}", auth="user",
                                 scope="user/Patient.write", content=json.dumps(body).encode("utf-8"),
                                 headers={"Content-Type": _FHIR_JSON})
        answer = self._json(response, "Patient update")
        return answer if isinstance(answer, dict) else {}

    def patient_pid(self, patient_uuid: str) -> int:
        """The numeric ``pid`` of a patient uuid (``GET /api/patient/:puuid``, §4.1): documents need it."""
        response = self._request("GET", f"{self.endpoints.api}/patient/{patient_uuid}", auth="user",
                                 scope="user/patient.rs")
        body = self._json(response, "patient lookup")
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, list):
            data = data[0] if data else None
        if not isinstance(data, dict) or not data.get("pid"):
            raise OpenEmrRefused("OpenEMR has no patient with that uuid (standard API)", status=404)
        return int(data["pid"])

    # ------------------------------------------------------------------ documents (§4.4)

    def upload_document(self, pid: int, category_path: str, filename: str, content: bytes, mimetype: str,
                        *, encounter: int | None = None) -> None:
        """``POST /api/patient/{pid}/document?path=...``, file in form field ``document``.

        OpenEMR answers 200 ``true`` and no id; any failure is a 404 with an empty body (bad
        category, empty file, MIME type not allowed, storage error) — reported as refused.
        """
        params: list[tuple[str, str | int]] = [("path", category_path)]
        if encounter is not None:
            params.append(("eid", encounter))
        response = self._request("POST", f"{self.endpoints.api}/patient/{pid}/document", auth="user",
                                 scope="user/document.c", params=params, ok=frozenset({404}),
                                 files={"document": (filename, content, mimetype)})
        if response.status_code == 404:
            raise OpenEmrRefused(
                "OpenEMR refused the document upload (404 with an empty body: unknown category path, empty "
                "file, MIME type not allowed, or a storage error)", status=404,
                url=httpx.URL(f"{self.endpoints.api}/patient/{pid}/document").path)
        if response.content.strip() not in (b"true", b"1"):
            raise OpenEmrUnavailable("OpenEMR answered a document upload with something other than true",
                                     status=response.status_code)

    def list_documents(self, pid: int, category_path: str) -> list[dict[str, Any]]:
        """``GET /api/patient/{pid}/document?path=...``: ``[{filename, hash, id, mimetype, docdate}]``.

        An empty category answers 404 with an empty body (§4.4): that is an empty list here.
        """
        response = self._request("GET", f"{self.endpoints.api}/patient/{pid}/document", auth="user",
                                 scope="user/document.s", params=[("path", category_path)], ok=frozenset({404}))
        if response.status_code == 404:
            return []
        body = self._json(response, "document list")
        return [d for d in body if isinstance(d, dict)] if isinstance(body, list) else []

    def get_document(self, pid: int, document_id: int) -> bytes | None:
        """``GET /api/patient/{pid}/document/{did}``: the raw bytes; None when absent (400, §4.4)."""
        response = self._request("GET", f"{self.endpoints.api}/patient/{pid}/document/{document_id}", auth="user",
                                 scope="user/document.r", accept="*/*", ok=frozenset({400, 404}))
        if response.status_code in (400, 404):
            return None
        return response.content

    # ------------------------------------------------------------------ bulk export (§3.4)

    def start_export(self, *, types: Sequence[str] = ("Patient",), since: str | None = None) -> str:
        """``GET FHIR/$export`` (system level); returns the status URL from ``Content-Location``.

        OpenEMR insists on ``Accept: application/fhir+json`` and ``Prefer: respond-async``.
        """
        params: list[tuple[str, str | int]] = [("_type", ",".join(types)), ("_outputFormat", "application/fhir+ndjson")]
        if since:
            params.append(("_since", since))
        response = self._request("GET", f"{self.endpoints.fhir}/$export", auth="backend",
                                 scope="system/*.$export", params=params, accept=_FHIR_JSON,
                                 headers={"Prefer": "respond-async"})
        location: str | None = response.headers.get("Content-Location")
        if response.status_code != 202 or not location:
            raise OpenEmrUnavailable(f"OpenEMR answered $export with HTTP {response.status_code} and no status URL",
                                     status=response.status_code)
        return location

    def export_status(self, status_url: str) -> tuple[ExportResult | None, float | None]:
        """One poll: the result when done, else ``(None, Retry-After seconds or None)``."""
        response = self._request("GET", status_url, auth="backend", scope="system/*.$bulkdata-status",
                                 accept="application/json")
        if response.status_code == 202:
            retry = response.headers.get("Retry-After")
            return None, float(retry) if retry and retry.strip().isdigit() else None
        body = self._json(response, "$bulkdata-status")
        outputs = tuple(
            (str(o.get("type")), str(o.get("url"))) for o in (body.get("output") or []) if isinstance(o, dict)
        ) if isinstance(body, dict) else ()
        return ExportResult(body.get("transactionTime") if isinstance(body, dict) else None, outputs), None

    def fetch_binary(self, url: str) -> bytes:
        """An export file: ``GET FHIR/Binary/{id}`` answers the raw NDJSON bytes (§3.1, §3.4)."""
        response = self._request("GET", url, auth="backend", scope="system/Binary.read", accept="*/*")
        return response.content

    def export(self, *, types: Sequence[str] = ("Patient",), since: str | None = None, poll_interval: float = 2.0,
               timeout: float = 1800.0, clock: Callable[[], float] = time.monotonic) -> ExportResult:
        """Start an export and poll its status URL until it is done (or ``timeout`` passes)."""
        status_url = self.start_export(types=types, since=since)
        deadline = clock() + timeout
        while True:
            result, retry_after = self.export_status(status_url)
            if result is not None:
                return result
            if clock() > deadline:
                raise OpenEmrUnavailable(f"OpenEMR's bulk export did not finish within {int(timeout)} s")
            self._sleep(min(retry_after if retry_after is not None else poll_interval, 60.0))


def _resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in bundle.get("entry") or []:
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            out.append(entry["resource"])
    return out
