"""The hub's FHIR R4 REST client (https://hl7.org/fhir/R4/http.html), sync and async.

What it guarantees to its callers (the pipeline, the CLI, CDS Hooks):

* **Nothing invalid leaves.** With ``validate=True`` every outgoing resource (and every
  entry of an outgoing Bundle) is checked by :func:`hub.fhir.validation.validate_resource`
  first; :class:`~hub.errors.ValidationFailed` is raised and no request is sent.
* **Errors say what to do next** (see :mod:`hub.errors`):
  :class:`~hub.errors.TransientDeliveryError` after retries on connection errors,
  timeouts, 429 and 5xx ran out (send again later); :class:`~hub.errors.RejectedByServer`
  for any other 4xx that came with an OperationOutcome, its issues turned into the message
  (fix the data); :class:`~hub.errors.PermanentDeliveryError` for other refusals.
* **No PHI in errors or logs.** Request bodies never appear; URLs are reported without
  their query string (conditional operations put identifiers there); values the client
  sent in a query or ``If-None-Exist`` are redacted where the server's diagnostics echo
  them. Logger ``hub.fhir`` records method, path, status, attempt and elapsed time.
* **Retries cannot duplicate data.** A request that is not idempotent (plain ``POST``
  create, a transaction/batch with unconditional ``POST`` entries) is retried only after
  failures that prove it was not applied, unless the policy says otherwise
  (:class:`~hub.fhir.retry.RetryPolicy`).

The transport is a seam (``transport=``): production uses httpx's default, tests may pass
any ``httpx.BaseTransport``. Request building and response interpretation are shared by
:class:`FhirClient` and :class:`AsyncFhirClient`; only the sending loop differs.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import httpx

import hub
from hub.errors import DeliveryError, PermanentDeliveryError, RejectedByServer, TransientDeliveryError
from hub.fhir.outcome import describe_outcome, is_operation_outcome
from hub.fhir.retry import RetryPolicy, parse_retry_after
from hub.fhir.validation import validate_resource

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncFhirClient",
    "FhirClient",
    "FhirResponse",
    "Prefer",
    "SearchParams",
]

logger = logging.getLogger("hub.fhir")

Prefer: TypeAlias = Literal["representation", "minimal", "OperationOutcome"]
"""Values of ``Prefer: return=`` (FHIR R4 http.html#ops)."""

SearchParams: TypeAlias = Mapping[str, str | int | Sequence[str | int]] | Sequence[tuple[str, str | int]]
"""Search parameters: a mapping (a sequence value repeats the parameter, e.g. two ``date``
bounds) or a sequence of ``(name, value)`` pairs. Values are sent as given (``system|code``)."""

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=10.0)
"""Connect 5 s, read and write 30 s, wait for a pooled connection 10 s."""

_FHIR_JSON = "application/fhir+json"
_USER_AGENT = f"meoring-hub/{hub.__version__}"
_TYPE_RE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 datatypes.html#id
_LOCATION_RE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?/?$"
)
_ETAG_RE = re.compile(r'^(?:W/)?"?(?P<version>[^"]*)"?$')
_SAFE_QUERY_CHARS = ":/|,$"
# Result parameters (FHIR R4 search.html#return) carry no patient data; redacting their values
# ("birthdate", "Patient") from the server's text would only garble it.
_CONTROL_PARAMS = frozenset(
    {
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_elements",
        "_summary",
        "_total",
        "_format",
        "_pretty",
        "_type",
    }
)

# Failures after which the request provably did not reach the server's application.
_NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
)
# Failures after which the server may or may not have applied the request.
_MAYBE_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
_NOT_APPLIED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class FhirResponse:
    """The result of a write (create, update, delete).

    ``resource`` is the body the server returned: the resource for
    ``Prefer: return=representation``, an OperationOutcome for
    ``return=OperationOutcome``, ``None`` for ``return=minimal`` or an empty body.
    ``location`` is the ``Location`` (or ``Content-Location``) header, ``etag`` the
    ``ETag`` header (``W/"3"``).
    """

    status: int
    resource: dict[str, Any] | None = None
    location: str | None = None
    etag: str | None = None
    last_modified: str | None = None

    @property
    def created(self) -> bool:
        """Whether the server created a resource (201), as opposed to matching/updating one."""
        return self.status == 201

    @property
    def resource_type(self) -> str | None:
        match = _LOCATION_RE.search(urlsplit(self.location).path) if self.location else None
        if match:
            return match["type"]
        if self.resource and self.resource.get("resourceType") != "OperationOutcome":
            value = self.resource.get("resourceType")
            return value if isinstance(value, str) else None
        return None

    @property
    def id(self) -> str | None:
        """The logical id, from ``Location`` or else from the returned resource."""
        match = _LOCATION_RE.search(urlsplit(self.location).path) if self.location else None
        if match:
            return match["id"]
        if self.resource and self.resource.get("resourceType") != "OperationOutcome":
            value = self.resource.get("id")
            return value if isinstance(value, str) else None
        return None

    @property
    def version_id(self) -> str | None:
        """The version id, from ``ETag``, ``Location`` (``/_history/n``) or ``meta.versionId``."""
        if self.etag:
            match = _ETAG_RE.match(self.etag.strip())
            if match and match["version"]:
                return match["version"]
        match = _LOCATION_RE.search(urlsplit(self.location).path) if self.location else None
        if match and match["version"]:
            return match["version"]
        if self.resource:
            meta = self.resource.get("meta")
            if isinstance(meta, Mapping) and isinstance(meta.get("versionId"), str):
                return str(meta["versionId"])
        return None

    @property
    def outcome(self) -> dict[str, Any] | None:
        """The returned OperationOutcome (``Prefer: return=OperationOutcome``, deletes)."""
        return self.resource if is_operation_outcome(self.resource) else None


# --------------------------------------------------------------------------- request building


@dataclass(frozen=True)
class _Call:
    """One logical request; the retry loop may send it several times."""

    operation: str
    method: str
    url: str
    params: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True
    redact: tuple[str, ...] = ()
    # Non-2xx statuses that are an answer, not an error, when they carry an OperationOutcome
    # ($validate reports an invalid resource with 400/412/422 on some servers).
    outcome_statuses: frozenset[int] = frozenset()

    @property
    def safe_url(self) -> str:
        """The URL without query string or fragment: safe to log and to put into errors."""
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))

    def build(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        return client.build_request(
            self.method,
            self.url,
            params=list(self.params) if self.params else None,
            content=self.body,
            headers=dict(self.headers),
        )


def _check_type(resource_type: object) -> str:
    if not isinstance(resource_type, str) or not _TYPE_RE.fullmatch(resource_type):
        raise ValueError("resource type must be a FHIR resource type name such as 'Patient'")
    return resource_type


def _check_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise ValueError(f"{what} must be a FHIR id: 1-64 characters from A-Z a-z 0-9 - .")
    return value


def _normalise_params(params: SearchParams | None) -> tuple[tuple[str, str], ...]:
    if not params:
        return ()
    pairs: list[tuple[str, str]] = []
    items: Iterable[tuple[str, Any]] = params.items() if isinstance(params, Mapping) else params
    for name, value in items:
        if not isinstance(name, str) or not name:
            raise ValueError("search parameter names must be non-empty strings")
        if isinstance(value, bool):
            pairs.append((name, "true" if value else "false"))
        elif isinstance(value, str | int):
            pairs.append((name, str(value)))
        elif isinstance(value, Sequence):
            pairs.extend((name, str(v)) for v in value)
        else:
            raise ValueError(f"search parameter {name!r}: value must be str, int or a sequence of them")
    return tuple(pairs)


def _param_secrets(pairs: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """Values (and their ``system|value`` parts) that the server might echo back."""
    out: list[str] = []
    for name, value in pairs:
        if name in _CONTROL_PARAMS:
            continue
        for piece in (value, *value.split("|"), *value.split(",")):
            if piece:
                # Servers echo the value as received or as re-encoded in a match URL.
                out.extend((piece, quote(piece, safe=""), quote_plus(piece)))
    return tuple(dict.fromkeys(out))


def _dumps(resource: Mapping[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _etag(version: str | int) -> str:
    value = str(version).strip()
    if value.startswith(('W/"', '"')):
        return value
    return f'W/"{_check_id(value, "if_match version")}"'


def _bundle_is_idempotent(bundle: Mapping[str, Any]) -> bool:
    for entry in bundle.get("entry") or []:
        request = entry.get("request") if isinstance(entry, Mapping) else None
        if not isinstance(request, Mapping):
            return False
        method = str(request.get("method") or "").upper()
        if method == "POST" and not request.get("ifNoneExist"):
            return False
        # PATCH is not idempotent in general (a JSON Patch "add" to a list appends again).
        if method not in {"GET", "HEAD", "PUT", "DELETE", "POST"}:
            return False
    return True


def _bundle_secrets(bundle: Mapping[str, Any]) -> tuple[str, ...]:
    """Query values in entry URLs and ``ifNoneExist`` of an outgoing Bundle."""
    pairs: list[tuple[str, str]] = []
    for entry in bundle.get("entry") or []:
        request = entry.get("request") if isinstance(entry, Mapping) else None
        if not isinstance(request, Mapping):
            continue
        url = str(request.get("url") or "")
        if "?" in url:
            pairs.extend(parse_qsl(url.split("?", 1)[1]))
        if request.get("ifNoneExist"):
            pairs.extend(parse_qsl(str(request["ifNoneExist"]).lstrip("?")))
    return _param_secrets(pairs)


def _json_body(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def _content_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "no content-type")
    return value.split(";", 1)[0].strip()


def _standard_reason(status: int) -> str:
    """The RFC 9110 reason phrase; HTTP/1.1 servers such as Tomcat no longer send one."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _status_hint(call: _Call, status: int) -> str:
    """What a status means *for this request*: a 412 after If-Match is not a 412 after a search."""
    if status == 404:
        return "not found"
    if status == 410:
        return "gone: the resource was deleted"
    if status in (409, 412) and "If-Match" in call.headers:
        # FHIR says 412 for a failed If-Match; HAPI answers 409 (HAPI-0989). Same meaning here.
        return "version conflict: If-Match does not name the current version (it was changed since)"
    if status == 409:
        return "conflict: the resource was changed concurrently or is in use"
    if status == 412:
        if "If-None-Exist" in call.headers or (call.params and call.method in {"PUT", "DELETE", "PATCH"}):
            return "precondition failed: the conditional criteria matched more than one resource"
        return "precondition failed"
    if status == 422:
        return "unprocessable: the server's validation or business rules refused it"
    if status == 401:
        return "unauthorised: credentials missing or rejected"
    if status == 403:
        return "forbidden"
    return ""


def _describe_failure(call: _Call, response: httpx.Response, body: Any) -> str:
    head = f"{call.operation} {call.method} {call.safe_url}: HTTP {response.status_code}"
    reason = response.reason_phrase or _standard_reason(response.status_code)
    if reason:
        head += f" {reason}"
    hint = _status_hint(call, response.status_code)
    if hint:
        head += f" ({hint})"
    if is_operation_outcome(body):
        return f"{head}: {describe_outcome(body, redact=call.redact)}"
    if body is not None:
        return f"{head}: JSON body is not an OperationOutcome"
    # Non-JSON error pages (proxies, servlet containers) may echo the request: describe, never quote.
    return f"{head}: no OperationOutcome ({_content_type(response)}, {len(response.content)} bytes)"


def _error_for(call: _Call, response: httpx.Response) -> DeliveryError | None:
    """The exception for a final response, or ``None`` if it is a success."""
    status = response.status_code
    body = _json_body(response)
    if 200 <= status < 300 or (status in call.outcome_statuses and is_operation_outcome(body)):
        return None
    message = _describe_failure(call, response, body)
    if status == 429 or status >= 500:
        # Only reached when the retry loop declined: see _Attempts.after_response.
        message += "; not retried because the request is not idempotent and the server may have applied it"
        return TransientDeliveryError(message, status=status, url=call.safe_url)
    if is_operation_outcome(body):
        return RejectedByServer(message, status=status, url=call.safe_url, operation_outcome=body)
    return PermanentDeliveryError(message, status=status, url=call.safe_url)


def _resource_body(call: _Call, response: httpx.Response, expected_type: str | None) -> dict[str, Any]:
    body = _json_body(response)
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise PermanentDeliveryError(
            f"{call.operation} {call.method} {call.safe_url}: HTTP {response.status_code} "
            f"but the body is not a FHIR JSON resource ({_content_type(response)})",
            status=response.status_code,
            url=call.safe_url,
        )
    if expected_type is not None and body["resourceType"] != expected_type:
        raise PermanentDeliveryError(
            f"{call.operation} {call.method} {call.safe_url}: expected a {expected_type}, "
            f"the server returned a {body['resourceType']}",
            status=response.status_code,
            url=call.safe_url,
        )
    return body


def _write_result(response: httpx.Response) -> FhirResponse:
    body = _json_body(response)
    headers = response.headers
    return FhirResponse(
        status=response.status_code,
        resource=body if isinstance(body, dict) and "resourceType" in body else None,
        location=headers.get("location") or headers.get("content-location"),
        etag=headers.get("etag"),
        last_modified=headers.get("last-modified"),
    )


# --------------------------------------------------------------------------- retry decisions


class _Attempts:
    """The retry state of one call: counts attempts, decides to wait or to give up, logs."""

    def __init__(self, call: _Call, policy: RetryPolicy) -> None:
        self.call = call
        self.policy = policy
        self.start = policy.clock()
        self.number = 0
        self._attempt_start = self.start

    def begin(self) -> None:
        self.number += 1
        self._attempt_start = self.policy.clock()

    def _log(self, level: int, outcome: str, status: int | None, note: str = "") -> None:
        now = self.policy.clock()
        path = urlsplit(self.call.url).path
        logger.log(
            level,
            "FHIR %s %s -> %s (attempt %d/%d, %.3f s)%s",
            self.call.method,
            path,
            outcome,
            self.number,
            self.policy.max_attempts,
            now - self._attempt_start,
            note,
            extra={
                "fhir_method": self.call.method,
                "fhir_path": path,
                "fhir_status": status,
                "fhir_attempt": self.number,
                "fhir_elapsed_ms": round((now - self._attempt_start) * 1000, 1),
                "fhir_total_ms": round((now - self.start) * 1000, 1),
            },
        )

    def _retry_or_raise(
        self, describe: str, status: int | None, retry_after: float | None, cause: Exception | None = None
    ) -> float:
        elapsed = self.policy.clock() - self.start
        if self.number >= self.policy.max_attempts:
            reason = f"gave up after {self.number} attempts"
        else:
            delay = self.policy.delay(self.number, retry_after)
            if elapsed + delay <= self.policy.max_elapsed:
                self._log(logging.WARNING, describe, status, f"; retrying in {delay:.2f} s")
                return delay
            reason = (
                f"gave up after {self.number} attempts: the next retry would pass "
                f"the {self.policy.max_elapsed:g} s budget"
            )
        self._log(logging.WARNING, describe, status, "; giving up")
        raise TransientDeliveryError(
            f"{self.call.operation} {self.call.method} {self.call.safe_url}: {describe}; "
            f"{reason} in {elapsed:.1f} s",
            status=status,
            url=self.call.safe_url,
        ) from cause

    def after_error(self, exc: httpx.TransportError) -> float:
        """Seconds to wait before the next attempt after a transport error; raises when done."""
        describe = type(exc).__name__
        if isinstance(exc, _NOT_SENT_ERRORS):
            return self._retry_or_raise(describe, None, None, exc)
        if isinstance(exc, _MAYBE_SENT_ERRORS):
            if self.call.idempotent or self.policy.retry_non_idempotent:
                return self._retry_or_raise(describe, None, None, exc)
            self._log(logging.WARNING, describe, None, "; not retried (not idempotent)")
            raise TransientDeliveryError(
                f"{self.call.operation} {self.call.method} {self.call.safe_url}: {describe}; "
                "not retried because the request is not idempotent and the server may have applied it",
                url=self.call.safe_url,
            ) from exc
        self._log(logging.ERROR, describe, None)
        raise PermanentDeliveryError(
            f"{self.call.operation} {self.call.method} {self.call.safe_url}: {describe}",
            url=self.call.safe_url,
        ) from exc

    def after_response(self, response: httpx.Response) -> float | None:
        """Seconds to wait before retrying, or ``None`` when ``response`` is final."""
        status = response.status_code
        retryable = status == 429 or status >= 500
        if retryable and (
            status in _NOT_APPLIED_STATUSES or self.call.idempotent or self.policy.retry_non_idempotent
        ):
            retry_after = parse_retry_after(
                response.headers.get("retry-after"),
                now=self.policy.wall_clock(),
                date_header=response.headers.get("date"),
            )
            describe = f"HTTP {status}"
            body = _json_body(response)
            if is_operation_outcome(body):
                describe += f" ({describe_outcome(body, redact=self.call.redact)})"
            return self._retry_or_raise(describe, status, retry_after)
        note = "; not retried (not idempotent)" if retryable else ""
        self._log(logging.DEBUG if status < 400 else logging.WARNING, f"HTTP {status}", status, note)
        return None


# --------------------------------------------------------------------------- shared client core


class _FhirCore:
    """Everything but the I/O: argument checks, validation, request building."""

    def __init__(self, base_url: str, *, retry: RetryPolicy, validate: bool) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError("base_url must be an absolute http(s) URL such as http://host:8080/fhir")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query string or fragment")
        self.base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.retry = retry
        self.validate = validate

    @staticmethod
    def _default_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
        merged = {"Accept": _FHIR_JSON, "User-Agent": _USER_AGENT}
        merged.update(headers or {})
        return merged

    def _url(self, *segments: str) -> str:
        return "/".join((self.base_url, *segments))

    def _outgoing(self, resource: Mapping[str, Any]) -> str:
        if not isinstance(resource, Mapping):
            raise TypeError("resource must be a mapping (a FHIR resource as JSON)")
        resource_type = _check_type(resource.get("resourceType"))
        if self.validate:
            validate_resource(dict(resource))
        return resource_type

    @staticmethod
    def _write_headers(prefer: Prefer | None) -> dict[str, str]:
        headers = {"Content-Type": f"{_FHIR_JSON}; charset=utf-8"}
        if prefer is not None:
            if prefer not in ("representation", "minimal", "OperationOutcome"):
                raise ValueError("prefer must be 'representation', 'minimal' or 'OperationOutcome'")
            headers["Prefer"] = f"return={prefer}"
        return headers

    # Each _x_call builds the request of operation x; the public methods send it.

    def _read_call(self, resource_type: str, resource_id: str) -> _Call:
        return _Call("read", "GET", self._url(_check_type(resource_type), _check_id(resource_id)))

    def _vread_call(self, resource_type: str, resource_id: str, version_id: str) -> _Call:
        url = self._url(
            _check_type(resource_type),
            _check_id(resource_id),
            "_history",
            _check_id(version_id, "version_id"),
        )
        return _Call("vread", "GET", url)

    def _search_call(
        self, resource_type: str, params: SearchParams | None, page_size: int | None, fresh: bool = False
    ) -> _Call:
        pairs = _normalise_params(params)
        if page_size is not None:
            if page_size < 1:
                raise ValueError("page_size must be positive")
            pairs = (*(p for p in pairs if p[0] != "_count"), ("_count", str(page_size)))
        return _Call(
            "search",
            "GET",
            self._url(_check_type(resource_type)),
            params=pairs,
            headers={"Cache-Control": "no-cache"} if fresh else {},
            redact=_param_secrets(pairs),
        )

    def _next_call(self, first: _Call, bundle: Mapping[str, Any], seen: set[str]) -> _Call | None:
        next_url = None
        for link in bundle.get("link") or []:
            if isinstance(link, Mapping) and link.get("relation") == "next" and link.get("url"):
                next_url = str(link["url"])
                break
        if next_url is None:
            return None
        # Credentials go with every request: never follow a link off the configured server.
        if not (next_url.startswith((self.base_url + "/", self.base_url + "?")) or next_url == self.base_url):
            raise PermanentDeliveryError(
                f"search {first.safe_url}: the server's next link leaves {self.base_url}; not followed "
                "(is the server's public base URL configured differently?)",
                url=first.safe_url,
            )
        if next_url in seen:
            raise PermanentDeliveryError(
                f"search {first.safe_url}: the server's next link repeats an earlier page", url=first.safe_url
            )
        seen.add(next_url)
        return _Call("search", "GET", next_url, redact=first.redact)

    def _create_call(
        self, resource: Mapping[str, Any], if_none_exist: str | SearchParams | None, prefer: Prefer | None
    ) -> _Call:
        resource_type = self._outgoing(resource)
        headers = self._write_headers(prefer)
        redact: tuple[str, ...] = ()
        if if_none_exist is not None:
            if isinstance(if_none_exist, str):
                query = if_none_exist.lstrip("?")
                pairs = tuple(parse_qsl(query))
            else:
                pairs = _normalise_params(if_none_exist)
                query = urlencode(pairs, safe=_SAFE_QUERY_CHARS)
            if not query:
                raise ValueError("if_none_exist must not be empty")
            headers["If-None-Exist"] = query
            redact = _param_secrets(pairs)
        return _Call(
            "create",
            "POST",
            self._url(resource_type),
            body=_dumps(resource),
            headers=headers,
            idempotent=if_none_exist is not None,
            redact=redact,
        )

    def _update_call(
        self, resource: Mapping[str, Any], if_match: str | int | None, prefer: Prefer | None
    ) -> _Call:
        resource_type = self._outgoing(resource)
        resource_id = resource.get("id")
        if resource_id is None:
            raise ValueError("update needs resource.id (use create or conditional_update otherwise)")
        headers = self._write_headers(prefer)
        if if_match is not None:
            headers["If-Match"] = _etag(if_match)
        return _Call(
            "update",
            "PUT",
            self._url(resource_type, _check_id(resource_id, "resource.id")),
            body=_dumps(resource),
            headers=headers,
        )

    def _conditional_update_call(
        self, resource: Mapping[str, Any], search_params: SearchParams, prefer: Prefer | None
    ) -> _Call:
        resource_type = self._outgoing(resource)
        pairs = _normalise_params(search_params)
        if not pairs:
            raise ValueError("conditional_update needs search parameters")
        return _Call(
            "conditional update",
            "PUT",
            self._url(resource_type),
            params=pairs,
            body=_dumps(resource),
            headers=self._write_headers(prefer),
            redact=_param_secrets(pairs),
        )

    def _delete_call(self, resource_type: str, resource_id: str) -> _Call:
        return _Call("delete", "DELETE", self._url(_check_type(resource_type), _check_id(resource_id)))

    def _bundle_call(
        self, kind: Literal["transaction", "batch"], bundle: Mapping[str, Any], prefer: Prefer | None
    ) -> _Call:
        if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
            raise ValueError(f"{kind} needs a Bundle")
        if bundle.get("type") != kind:
            raise ValueError(f"{kind} needs Bundle.type = {kind!r}")
        self._outgoing(bundle)
        return _Call(
            kind,
            "POST",
            self.base_url,
            body=_dumps(bundle),
            headers=self._write_headers(prefer),
            idempotent=_bundle_is_idempotent(bundle),
            redact=_bundle_secrets(bundle),
        )

    def _validate_call(self, resource: Mapping[str, Any], profile: str | None) -> _Call:
        if not isinstance(resource, Mapping):
            raise TypeError("resource must be a mapping (a FHIR resource as JSON)")
        resource_type = _check_type(resource.get("resourceType"))
        params: tuple[tuple[str, str], ...] = (("profile", profile),) if profile else ()
        return _Call(
            "validate",
            "POST",
            self._url(resource_type, "$validate"),
            params=params,
            body=_dumps(resource),
            headers=self._write_headers(None),
            outcome_statuses=frozenset({400, 412, 422}),
        )

    def _capabilities_call(self) -> _Call:
        return _Call("capabilities", "GET", self._url("metadata"))


def _search_resources(bundle: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Resources of a searchset page; entries with ``search.mode = outcome`` are skipped."""
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, Mapping):
            continue
        search = entry.get("search")
        if isinstance(search, Mapping) and search.get("mode") == "outcome":
            continue
        resource = entry.get("resource")
        if isinstance(resource, dict):
            yield resource


# --------------------------------------------------------------------------- sync client


class FhirClient(_FhirCore):
    """A synchronous FHIR R4 client for one server; use as a context manager or call :meth:`close`.

    ``base_url`` is the service base (``http://host:8080/fhir``). ``transport``, ``auth``
    and ``timeout`` go to the underlying :class:`httpx.Client` (default timeouts: connect
    5 s, read/write 30 s). ``headers`` are added to every request. With ``validate``
    (default) outgoing resources are structure-checked first.
    """

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        validate: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, retry=retry, validate=validate)
        self._http = httpx.Client(
            transport=transport,
            auth=auth,
            timeout=timeout,
            headers=self._default_headers(headers),
            follow_redirects=False,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections. Idempotent."""
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        attempts = _Attempts(call, self.retry)
        while True:
            attempts.begin()
            try:
                response = self._http.send(call.build(self._http))
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
            else:
                wait = attempts.after_response(response)
                if wait is None:
                    error = _error_for(call, response)
                    if error is not None:
                        raise error
                    return response
                delay = wait
            self.retry.sleep(delay)

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """``GET [base]/[type]/[id]``: the current version. 404/410 raise RejectedByServer."""
        call = self._read_call(resource_type, resource_id)
        return _resource_body(call, self._send(call), resource_type)

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        """``GET [base]/[type]/[id]/_history/[vid]``: one version."""
        call = self._vread_call(resource_type, resource_id, version_id)
        return _resource_body(call, self._send(call), resource_type)

    def search_pages(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        page_size: int | None = None,
        fresh: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """``GET [base]/[type]?params``, then every ``next`` link: yields each searchset Bundle.

        Pages are fetched lazily, as the iterator is consumed. ``page_size`` sets ``_count``.
        ``fresh`` sends ``Cache-Control: no-cache``: a server that keeps search results for a
        while (HAPI JPA: ``reuse_cached_search_results_millis``, one minute by default) runs the
        search again instead of answering from a result set older than the latest writes.
        """
        first = self._search_call(resource_type, params, page_size, fresh)
        call: _Call | None = first
        seen: set[str] = set()
        while call is not None:
            page = _resource_body(call, self._send(call), "Bundle")
            yield page
            call = self._next_call(first, page, seen)

    def search(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        page_size: int | None = None,
        fresh: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """The resources of all pages of a search (matches and ``_include``\\ d ones), lazily
        (``fresh``: see :meth:`search_pages`)."""
        for page in self.search_pages(resource_type, params, page_size=page_size, fresh=fresh):
            yield from _search_resources(page)

    def create(
        self,
        resource: Mapping[str, Any],
        *,
        if_none_exist: str | SearchParams | None = None,
        prefer: Prefer | None = "representation",
    ) -> FhirResponse:
        """``POST [base]/[type]``; with ``if_none_exist`` a conditional create.

        ``if_none_exist`` is a query (``"identifier=sys|123"``) or search parameters; if one
        resource matches, nothing is created and the status is 200 instead of 201
        (:attr:`FhirResponse.created`); several matches raise RejectedByServer (412).
        """
        return _write_result(self._send(self._create_call(resource, if_none_exist, prefer)))

    def update(
        self,
        resource: Mapping[str, Any],
        *,
        if_match: str | int | None = None,
        prefer: Prefer | None = "representation",
    ) -> FhirResponse:
        """``PUT [base]/[type]/[id]`` (creates it if absent and the server allows client ids).

        ``if_match`` is a version id (``3``) or an ETag (``W/"3"``): the update is refused
        with a 409/412 RejectedByServer if the resource has moved on since.
        """
        return _write_result(self._send(self._update_call(resource, if_match, prefer)))

    def conditional_update(
        self,
        resource: Mapping[str, Any],
        search_params: SearchParams,
        *,
        prefer: Prefer | None = "representation",
    ) -> FhirResponse:
        """``PUT [base]/[type]?search``: update the one match, create if none, 412 if several."""
        return _write_result(self._send(self._conditional_update_call(resource, search_params, prefer)))

    def delete(self, resource_type: str, resource_id: str) -> FhirResponse:
        """``DELETE [base]/[type]/[id]``. Deleting an absent resource is not an error on most servers."""
        return _write_result(self._send(self._delete_call(resource_type, resource_id)))

    def transaction(self, bundle: Mapping[str, Any], *, prefer: Prefer | None = None) -> dict[str, Any]:
        """``POST [base]`` a ``transaction`` Bundle; all entries apply or none (4xx/5xx raises).

        Returns the ``transaction-response`` Bundle.
        """
        call = self._bundle_call("transaction", bundle, prefer)
        return _resource_body(call, self._send(call), "Bundle")

    def batch(self, bundle: Mapping[str, Any], *, prefer: Prefer | None = None) -> dict[str, Any]:
        """``POST [base]`` a ``batch`` Bundle; returns the ``batch-response``.

        Entries succeed or fail one by one and the HTTP status is 200 either way: check the
        result with :func:`hub.fhir.bundle.entry_failures` or
        :func:`hub.fhir.bundle.raise_for_entry_failures`.
        """
        call = self._bundle_call("batch", bundle, prefer)
        return _resource_body(call, self._send(call), "Bundle")

    def validate_remote(self, resource: Mapping[str, Any], *, profile: str | None = None) -> dict[str, Any]:
        """``POST [base]/[type]/$validate``: the server's OperationOutcome for ``resource``.

        Not validated locally first (that is the point). An invalid resource is an answer,
        not an error, even when the server reports it with 400/412/422.
        """
        call = self._validate_call(resource, profile)
        return _resource_body(call, self._send(call), "OperationOutcome")

    def capabilities(self) -> dict[str, Any]:
        """``GET [base]/metadata``: the server's CapabilityStatement."""
        call = self._capabilities_call()
        return _resource_body(call, self._send(call), "CapabilityStatement")


# --------------------------------------------------------------------------- async client


class AsyncFhirClient(_FhirCore):
    """The asynchronous twin of :class:`FhirClient`: same arguments, same methods, awaited.

    :meth:`search` and :meth:`search_pages` are async iterators. Waits between retries use
    :attr:`RetryPolicy.async_sleep`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        auth: httpx.Auth | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),
        validate: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, retry=retry, validate=validate)
        self._http = httpx.AsyncClient(
            transport=transport,
            auth=auth,
            timeout=timeout,
            headers=self._default_headers(headers),
            follow_redirects=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections. Idempotent."""
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        attempts = _Attempts(call, self.retry)
        while True:
            attempts.begin()
            try:
                response = await self._http.send(call.build(self._http))
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
            else:
                wait = attempts.after_response(response)
                if wait is None:
                    error = _error_for(call, response)
                    if error is not None:
                        raise error
                    return response
                delay = wait
            await self.retry.async_sleep(delay)

    async def _body(self, call: _Call, expected_type: str | None) -> dict[str, Any]:
        return _resource_body(call, await self._send(call), expected_type)

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """See :meth:`FhirClient.read`."""
        return await self._body(self._read_call(resource_type, resource_id), resource_type)

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict[str, Any]:
        """See :meth:`FhirClient.vread`."""
        return await self._body(self._vread_call(resource_type, resource_id, version_id), resource_type)

    async def search_pages(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        page_size: int | None = None,
        fresh: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """See :meth:`FhirClient.search_pages`."""
        first = self._search_call(resource_type, params, page_size, fresh)
        call: _Call | None = first
        seen: set[str] = set()
        while call is not None:
            page = await self._body(call, "Bundle")
            yield page
            call = self._next_call(first, page, seen)

    async def search(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        page_size: int | None = None,
        fresh: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """See :meth:`FhirClient.search`."""
        async for page in self.search_pages(resource_type, params, page_size=page_size, fresh=fresh):
            for resource in _search_resources(page):
                yield resource

    async def create(
        self,
        resource: Mapping[str, Any],
        *,
        if_none_exist: str | SearchParams | None = None,
        prefer: Prefer | None = "representation",
    ) -> FhirResponse:
        """See :meth:`FhirClient.create`."""
        return _write_result(await self._send(self._create_call(resource, if_none_exist, prefer)))

    async def update(
        self,
        resource: Mapping[str, Any],
        *,
        if_match: str | int | None = None,
        prefer: Prefer | None = "representation",
    ) -> FhirResponse:
        """See :meth:`FhirClient.update`."""
        return _write_result(await self._send(self._update_call(resource, if_match, prefer)))

    async def conditional_update(
        self,
        resource: Mapping[str, Any],
        search_params: SearchParams,
        *,
        prefer: Prefer | None = "representation",
    ) -> FhirResponse:
        """See :meth:`FhirClient.conditional_update`."""
        return _write_result(await self._send(self._conditional_update_call(resource, search_params, prefer)))

    async def delete(self, resource_type: str, resource_id: str) -> FhirResponse:
        """See :meth:`FhirClient.delete`."""
        return _write_result(await self._send(self._delete_call(resource_type, resource_id)))

    async def transaction(self, bundle: Mapping[str, Any], *, prefer: Prefer | None = None) -> dict[str, Any]:
        """See :meth:`FhirClient.transaction`."""
        return await self._body(self._bundle_call("transaction", bundle, prefer), "Bundle")

    async def batch(self, bundle: Mapping[str, Any], *, prefer: Prefer | None = None) -> dict[str, Any]:
        """See :meth:`FhirClient.batch`."""
        return await self._body(self._bundle_call("batch", bundle, prefer), "Bundle")

    async def validate_remote(
        self, resource: Mapping[str, Any], *, profile: str | None = None
    ) -> dict[str, Any]:
        """See :meth:`FhirClient.validate_remote`."""
        return await self._body(self._validate_call(resource, profile), "OperationOutcome")

    async def capabilities(self) -> dict[str, Any]:
        """See :meth:`FhirClient.capabilities`."""
        return await self._body(self._capabilities_call(), "CapabilityStatement")
