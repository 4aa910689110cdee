"""Cache-aside reads of OpenEMR's FHIR resources, in the hub's read cache (``read_cache`` table).

Read the cache first; on a miss read OpenEMR and keep the answer for ``openemr.cache_ttl_s``.
The hub's own writes invalidate what they change at once (:meth:`CachedReader.invalidate`),
so the hub never serves its own stale copy of something it just wrote. Entries from other
writers to OpenEMR live at most the TTL.

Keys: ``openemr:<Type>/<id>`` for a read, ``openemr:<Type>?<sorted query>`` for a search (a
hash when the query is long: the key column holds 255 characters).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from hub.openemr.client import OpenEmrClient, Params, query_pairs
from hub.store.cache import ReadCache

__all__ = ["READ_TYPES", "CachedReader", "read_key", "search_prefix"]

#: The resources the hub reads from OpenEMR (issue 4, item 3).
READ_TYPES = frozenset({
    "Patient", "Encounter", "Observation", "Condition", "AllergyIntolerance", "MedicationRequest",
    "ServiceRequest", "DiagnosticReport", "DocumentReference", "Practitioner",
})


def read_key(resource_type: str, resource_id: str) -> str:
    return f"openemr:{resource_type}/{resource_id}"


def search_prefix(resource_type: str) -> str:
    return f"openemr:{resource_type}?"


def _search_key(resource_type: str, params: Params | None) -> str:
    query = urlencode(sorted(query_pairs(params)))
    key = f"{search_prefix(resource_type)}{query}"
    if len(key) > 200:
        key = f"{search_prefix(resource_type)}#{hashlib.sha256(query.encode('utf-8')).hexdigest()}"
    return key


class CachedReader:
    """Reads through the cache; ``ttl`` of zero reads OpenEMR every time."""

    def __init__(self, client: OpenEmrClient, cache: ReadCache, *, ttl: timedelta) -> None:
        self._client = client
        self._cache = cache
        self._ttl = ttl
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._ttl > timedelta(0)

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """One resource, or None if OpenEMR has none by that id (absence is not cached)."""
        key = read_key(resource_type, resource_id)
        if self.enabled:
            cached = self._cache.get(key)
            if isinstance(cached, dict):
                self.hits += 1
                return cached
        self.misses += 1
        resource = self._client.read(resource_type, resource_id)
        if resource is not None:
            self.put(resource)
        return resource

    def search(self, resource_type: str, params: Params | None = None, *, post: bool = False) -> list[dict[str, Any]]:
        """Every match (OpenEMR pages only Patient; the client handles that)."""
        key = _search_key(resource_type, params)
        if self.enabled:
            cached = self._cache.get(key)
            if isinstance(cached, list):
                self.hits += 1
                return cached
        self.misses += 1
        found = self._client.search(resource_type, params, post=post)
        if self.enabled:
            self._cache.put(key, found, ttl=self._ttl)
        return found

    def put(self, resource: dict[str, Any]) -> None:
        """Remember a resource just read from (or written to and read back from) OpenEMR."""
        if not self.enabled:
            return
        resource_type, resource_id = resource.get("resourceType"), resource.get("id")
        if isinstance(resource_type, str) and isinstance(resource_id, str):
            etag = (resource.get("meta") or {}).get("versionId")
            self._cache.put(read_key(resource_type, resource_id), resource, ttl=self._ttl,
                            etag=str(etag) if etag is not None else None)

    def invalidate(self, resource_type: str, resource_id: str | None = None) -> None:
        """Forget one resource (when given) and every cached search of its type."""
        if resource_id is not None:
            self._cache.invalidate(read_key(resource_type, resource_id))
        self._cache.invalidate(prefix=search_prefix(resource_type))
