"""Deliverers: carry an outbox entry to its target. One per target name.

Before a transaction Bundle goes to the FHIR server, :func:`prepare_transaction` resolves its
"write only if absent" entries (mapping files' ``write: if_absent``, see
:mod:`hub.mapping.bundle`); everything that sends translated bundles to a FHIR server calls it
(the :class:`FhirBundleDeliverer` does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from hub.errors import PermanentDeliveryError
from hub.store.records import OutboxEntry

if TYPE_CHECKING:
    from hub.fhir.client import SearchParams

__all__ = [
    "Deliverer",
    "FhirBundleDeliverer",
    "SearchClient",
    "TransactionClient",
    "if_absent_target",
    "prepare_transaction",
]

#: Ids asked for in one search (a bound on the URL's length; a bundle rarely has more than a few).
ID_SEARCH_CHUNK = 100

_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ID_CONDITION = re.compile(r"_id=(?P<id>[A-Za-z0-9\-.]{1,64})")


class Deliverer(Protocol):
    """Delivers one outbox entry or raises a :class:`hub.errors.DeliveryError`.

    ``TransientDeliveryError`` means "try again later"; any other ``HubError`` is final.
    """

    target: str

    def deliver(self, entry: OutboxEntry) -> None: ...


class SearchClient(Protocol):
    """What :func:`prepare_transaction` needs: :meth:`hub.fhir.client.FhirClient.search`."""

    def search(
        self,
        resource_type: str,
        params: SearchParams | None = None,
        *,
        page_size: int | None = None,
        fresh: bool = False,
    ) -> Iterator[dict[str, Any]]: ...


class TransactionClient(SearchClient, Protocol):
    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]: ...

    def batch(self, bundle: dict[str, Any]) -> dict[str, Any]: ...


def if_absent_target(entry: Any) -> tuple[str, str] | None:
    """``(type, id)`` when a Bundle entry is a create-if-absent by id, as the hub encodes it:
    ``request`` ``POST Type`` with ``ifNoneExist: _id=<id>`` and a ``Type`` resource whose ``id``
    is that id. Any other entry (other conditions, other shapes): None, left as it is."""
    if not isinstance(entry, Mapping):
        return None
    request = entry.get("request")
    resource = entry.get("resource")
    if not isinstance(request, Mapping) or not isinstance(resource, Mapping):
        return None
    if request.get("method") != "POST":
        return None
    resource_type = request.get("url")
    condition = request.get("ifNoneExist")
    if not isinstance(resource_type, str) or not isinstance(condition, str) or not _TYPE.fullmatch(resource_type):
        return None
    match = _ID_CONDITION.fullmatch(condition.removeprefix("?"))
    if match is None:
        return None
    resource_id = match["id"]
    if resource.get("resourceType") != resource_type or resource.get("id") != resource_id:
        return None
    return resource_type, resource_id


def prepare_transaction(client: SearchClient, bundle: dict[str, Any]) -> dict[str, Any]:
    """The ``bundle`` to send: its create-if-absent entries (:func:`if_absent_target`) resolved.

    Why: such an entry (``write: if_absent`` in a mapping file - the Patient and Encounter of an
    ORU, ORM, SIU..., which must exist but whose demographics and visit belong to the ADT feed)
    is ``POST Type`` + ``ifNoneExist: _id=<id>``, and a server would create it under an id of
    its own while the other entries reference ``Type/<id>``. So the server is asked which of
    those ids exist - one search per resource type, ``GET Type?_id=a,b,c&_elements=id`` (paged,
    at most :data:`ID_SEARCH_CHUNK` ids a request), sent with ``Cache-Control: no-cache`` so
    that a server keeping search results for a while (HAPI does, one minute by default) answers
    from its current state and not from a result set older than the ADT just delivered. Then
    an entry whose resource exists is dropped (nothing is written; the other entries' literal
    references resolve to the stored resource) and every other one becomes ``PUT Type/<id>``
    (the client-assigned id, as for any other entry). Other entries are passed through
    untouched; a bundle without such entries, or not a ``transaction``, is returned as it is
    (no request). The input is not modified.

    Errors are the client's: a search that fails for a transient reason (connection, timeout,
    429, 5xx) raises :class:`~hub.errors.TransientDeliveryError` like a failed transaction, so
    the outbox entry is retried - and resolved again then, against the server's state at that
    time.

    The race: the check and the transaction are two requests, not one. If an ADT and an ORU for
    a brand-new patient are delivered at the same moment (two delivery threads or workers), the
    ORU's search may run before the ADT's transaction commits: the ORU's entry becomes a PUT of
    its minimal Patient, and if that PUT commits after the ADT's, the stored Patient lacks the
    ADT's address, phones and contacts until the next ADT for that patient (A08, A31...) writes
    them again. Nothing is duplicated (one id) and no reference breaks; the window is the time
    between one search and one transaction. A server-side conditional create cannot close it:
    it would assign its own id to what it creates.
    """
    entries = bundle.get("entry")
    if bundle.get("type") != "transaction" or not isinstance(entries, list):
        return bundle
    targets = [if_absent_target(entry) for entry in entries]
    wanted: dict[str, list[str]] = {}
    for target in targets:
        if target is not None and target[1] not in wanted.setdefault(target[0], []):
            wanted[target[0]].append(target[1])
    if not wanted:
        return bundle
    existing = {(kind, found) for kind, ids in wanted.items() for found in _existing(client, kind, ids)}
    prepared: list[Any] = []
    for entry, target in zip(entries, targets, strict=True):
        if target is None:
            prepared.append(entry)
        elif target not in existing:
            prepared.append({**entry, "request": {"method": "PUT", "url": f"{target[0]}/{target[1]}"}})
    return {**bundle, "entry": prepared}


def _existing(client: SearchClient, resource_type: str, ids: list[str]) -> set[str]:
    """Which of ``ids`` name a ``resource_type`` resource on the server (deleted ones do not)."""
    found: set[str] = set()
    for start in range(0, len(ids), ID_SEARCH_CHUNK):
        chunk = ids[start : start + ID_SEARCH_CHUNK]
        asked = set(chunk)
        params = {"_id": ",".join(chunk), "_elements": "id"}
        for resource in client.search(resource_type, params, page_size=len(chunk), fresh=True):
            resource_id = resource.get("id")
            if resource.get("resourceType") == resource_type and resource_id in asked:
                found.add(resource_id)
    return found


class FhirBundleDeliverer:
    """Posts the entry's Bundle to the FHIR server as a transaction (all or nothing), after
    :func:`prepare_transaction`; a batch is posted as it is."""

    target = "fhir"

    def __init__(self, client: TransactionClient) -> None:
        self._client = client

    def deliver(self, entry: OutboxEntry) -> None:
        try:
            bundle = json.loads(entry.body)
        except ValueError as exc:
            raise PermanentDeliveryError(f"outbox entry {entry.outbox_id} does not hold valid JSON") from exc
        if entry.operation == "transaction":
            if not isinstance(bundle, dict):
                raise PermanentDeliveryError(f"outbox entry {entry.outbox_id} does not hold a Bundle")
            prepared = prepare_transaction(self._client, bundle)
            if prepared is not bundle and not prepared["entry"]:
                return  # every entry was a create-if-absent of a resource that exists: nothing to write
            self._client.transaction(prepared)
        elif entry.operation == "batch":
            self._client.batch(bundle)
        else:
            raise PermanentDeliveryError(f"unknown FHIR operation {entry.operation!r}")
