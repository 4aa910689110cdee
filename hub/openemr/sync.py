"""Mirror OpenEMR's Patients into HAPI: full, incremental, and by bulk ``$export``.

* **full** — page through ``Patient?_count=N&_offset=k`` (OpenEMR pages only Patient and
  never sends ``next`` links, §3.2) and ``PUT`` every Patient into HAPI;
* **incremental** — the same with ``_lastUpdated=ge<since>``. The cursor (feed cursor
  ``openemr:patients``, JSON ``{"since": <newest meta.lastUpdated seen>, "ids": [...]}``)
  remembers which patients were sent with exactly that ``lastUpdated``: OpenEMR's timestamps
  have whole seconds, so ``gt`` could miss a change made in the same second as the last
  one seen, while ``ge`` alone would resend them all; ``ge`` minus those ids does neither;
* **bulk** — system-level ``$export?_type=Patient`` (``Prefer: respond-async``), poll the
  status URL, read each NDJSON file from ``Binary`` (§3.4); the cursor moves to the
  export's ``transactionTime``. For the initial load of a large OpenEMR.

Every copy is ``PUT Patient/<uuid>`` in transaction Bundles (:mod:`hub.openemr.mirror`), so
any of the three can be repeated or interrupted and resumed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from hub.config import OpenEmrSettings
from hub.openemr.client import OpenEmrClient
from hub.openemr.mirror import hapi_patient, transaction
from hub.openemr.reader import CachedReader
from hub.store.cursors import FeedCursors

__all__ = ["CURSOR", "PatientMirror", "SyncResult", "TransactionSink"]

log = logging.getLogger("hub.openemr")

CURSOR = "openemr:patients"


class TransactionSink(Protocol):
    """Where mirrored Patients go: :class:`hub.fhir.client.FhirClient` in production."""

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SyncResult:
    mode: str
    patients: int
    seconds: float
    cursor: str | None

    @property
    def per_second(self) -> float:
        return self.patients / self.seconds if self.seconds > 0 else 0.0


def _chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class PatientMirror:
    """Copies Patients from OpenEMR into the FHIR server (HAPI)."""

    def __init__(
        self,
        client: OpenEmrClient,
        fhir: TransactionSink,
        cursors: FeedCursors,
        settings: OpenEmrSettings,
        *,
        reader: CachedReader | None = None,
        batch_size: int = 100,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._client = client
        self._fhir = fhir
        self._cursors = cursors
        self._settings = settings
        self._reader = reader
        self._batch = batch_size
        self._clock = clock

    def cursor(self) -> tuple[str | None, set[str]]:
        """``(since, ids sent with exactly that lastUpdated)``; ``(None, ∅)`` before the first sync."""
        raw = self._cursors.get(CURSOR)
        if not raw:
            return None, set()
        try:
            data = json.loads(raw)
        except ValueError:
            return raw, set()
        if not isinstance(data, dict):
            return None, set()
        return data.get("since"), {str(i) for i in data.get("ids") or []}

    def _save(self, since: str, ids: Iterable[str]) -> None:
        self._cursors.set(CURSOR, json.dumps({"since": since, "ids": sorted(ids)}))

    def _send(self, patients: Iterable[dict[str, Any]]) -> tuple[int, str | None, set[str]]:
        count, newest, at_newest = 0, None, set()
        for chunk in _chunks(patients, self._batch):
            self._fhir.transaction(transaction(hapi_patient(p, self._settings) for p in chunk))
            for patient in chunk:
                if self._reader is not None:
                    self._reader.put(patient)
                updated = (patient.get("meta") or {}).get("lastUpdated")
                if not isinstance(updated, str):
                    continue
                if newest is None or updated > newest:
                    newest, at_newest = updated, {str(patient["id"])}
                elif updated == newest:
                    at_newest.add(str(patient["id"]))
            count += len(chunk)
        return count, newest, at_newest

    def _paged(self, params: list[tuple[str, str | int]], skip: tuple[str | None, set[str]] = (None, set()),
               ) -> Iterator[dict[str, Any]]:
        since, seen = skip
        for page in self._client.search_pages("Patient", params):
            for patient in page:
                if since and str(patient.get("id")) in seen and (patient.get("meta") or {}).get("lastUpdated") == since:
                    continue  # sent last time with this very lastUpdated
                yield patient

    def _run(self, mode: str, patients: Iterable[dict[str, Any]], previous: tuple[str | None, set[str]]) -> SyncResult:
        start = self._clock()
        started_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        count, newest, at_newest = self._send(patients)
        since, seen = previous
        if newest is not None and newest == since:
            at_newest |= seen
        if newest is None:
            newest, at_newest = since or started_at, seen
        self._save(newest, at_newest)
        result = SyncResult(mode, count, self._clock() - start, newest)
        log.info("openemr patients mirrored", extra={"event": "openemr_sync", "mode": mode, "patients": count,
                                                      "seconds": round(result.seconds, 3)})
        return result

    def full(self) -> SyncResult:
        """Every Patient, by paged search."""
        return self._run("full", self._paged([]), (None, set()))

    def incremental(self) -> SyncResult:
        """Patients changed since the cursor (a full sync when there is none yet)."""
        previous = self.cursor()
        if not previous[0]:
            return self.full()
        return self._run("incremental", self._paged([("_lastUpdated", f"ge{previous[0]}")], previous), previous)

    def bulk(self, *, since: str | None = None) -> SyncResult:
        """Every Patient (or those changed ``since``) through a system-level bulk ``$export``."""
        start = self._clock()
        export = self._client.export(types=("Patient",), since=since,
                                     poll_interval=self._settings.export_poll_interval_s,
                                     timeout=self._settings.export_timeout_s)

        def patients() -> Iterator[dict[str, Any]]:
            for kind, url in export.outputs:
                if kind != "Patient":
                    continue
                for line in self._client.fetch_binary(url).splitlines():
                    if line.strip():
                        resource = json.loads(line)
                        if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
                            yield resource

        count, newest, at_newest = self._send(patients())
        # Everything up to transactionTime is in the export; a later incremental sync starts there.
        cursor = export.transaction_time or newest
        if cursor:
            self._save(cursor, at_newest if cursor == newest else ())
        result = SyncResult("bulk", count, self._clock() - start, cursor)
        log.info("openemr patients mirrored", extra={"event": "openemr_sync", "mode": "bulk", "patients": count,
                                                      "seconds": round(result.seconds, 3)})
        return result
