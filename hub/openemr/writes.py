"""Writes go to OpenEMR first; only what OpenEMR accepted reaches the cache and HAPI.

A write is an outbox entry with target ``openemr`` (durable before anything is sent);
:class:`OpenEmrDeliverer` carries it out when the pipeline worker claims it:

``patient.create``  look the MRN up in OpenEMR first (a timed-out earlier attempt may have
                    been applied), else ``POST FHIR/Patient`` (201 ``{pid, uuid}``); read the
                    Patient back (OpenEMR's version is the truth), cache it, and queue its HAPI
                    copy (``PUT Patient/<uuid>``, an outbox entry with target ``fhir``).
``patient.update``  ``PUT FHIR/Patient/<uuid>`` (idempotent), cache the answer, queue the copy.
``document.upload`` list the category first and look for the same bytes (by hash), else
                    upload (200 ``true``, no id) and list the category to learn the id
                    (§4.4); then queue the HAPI resource for it, with the OpenEMR document id as
                    an identifier, together with the patient's HAPI copy.

So a failure at any step leaves the entry retrying (5xx, timeout: transient) and a retry
never duplicates; a refusal (4xx) dead-letters it with the reason and nothing goes to HAPI.
When a person must act first (re-login required, client disabled) the entry is **held**:
it raises :class:`~hub.openemr.errors.IntegrationBlocked` (a ``DeliveryHeld``), which the
worker retries without counting the attempt, so it waits instead of running out of attempts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hub.config import OpenEmrSettings
from hub.errors import PermanentDeliveryError
from hub.openemr.client import OpenEmrClient
from hub.openemr.errors import IntegrationBlocked, NotRegistered, OpenEmrRefused, OpenEmrUnavailable
from hub.openemr.mirror import hapi_patient, mrn_of, transaction, with_mrn
from hub.openemr.reader import CachedReader
from hub.store import Store
from hub.store.records import OutboxEntry

__all__ = ["TARGET", "AppliedWrite", "OpenEmrDeliverer", "OpenEmrWriter"]

log = logging.getLogger("hub.openemr")

TARGET = "openemr"
OPERATIONS = ("patient.create", "patient.update", "document.upload")


class OpenEmrWriter:
    """Queues OpenEMR writes in the outbox; the worker's :class:`OpenEmrDeliverer` carries them out."""

    def __init__(self, store: Store, settings: OpenEmrSettings) -> None:
        self._store = store
        self._settings = settings

    def enqueue(self, operation: str, body: Mapping[str, Any], resource_count: int = 1) -> int:
        return self._store.outbox.enqueue(target=TARGET, operation=operation,
                                          body=json.dumps(body, separators=(",", ":")), resource_count=resource_count)

    @staticmethod
    def patient_create_body(resource: Mapping[str, Any], mrn: str) -> dict[str, Any]:
        return {"mrn": mrn, "resource": with_mrn(resource, mrn)}

    def create_patient(self, resource: Mapping[str, Any], *, mrn: str | None = None) -> int:
        """Queue a Patient create; the MRN (OpenEMR's pubpid) is what makes a retry safe."""
        mrn = mrn or mrn_of(resource, self._settings.mrn_system)
        if not mrn:
            raise ValueError("a Patient create needs an MRN (identifier under openemr.mrn_system, or mrn=)")
        return self.enqueue("patient.create", self.patient_create_body(resource, mrn))

    def update_patient(self, patient_uuid: str, resource: Mapping[str, Any]) -> int:
        """Queue ``PUT FHIR/Patient/<uuid>``."""
        return self.enqueue("patient.update", {"uuid": patient_uuid, "resource": dict(resource)})

    def upload_document(
        self,
        patient_uuid: str,
        *,
        category_path: str,
        filename: str,
        content: bytes,
        mimetype: str,
        fhir_resource: Mapping[str, Any] | None = None,
        pid: int | None = None,
        encounter: int | None = None,
    ) -> int:
        """Queue a document upload into ``category_path`` (e.g. ``/Categories/Lab_Report``, §4.4).

        ``fhir_resource`` (a DiagnosticReport, DocumentReference…) goes to HAPI once OpenEMR
        holds the document; without one a DocumentReference is written.
        """
        if not content:
            raise ValueError("an empty document cannot be uploaded (OpenEMR refuses it)")
        if " " in category_path:
            raise ValueError("a category path has no spaces: write Lab_Report for 'Lab Report' (openemr.md §4.4)")
        body = {
            "patient_uuid": patient_uuid,
            "pid": pid,
            "encounter": encounter,
            "category_path": category_path if category_path.startswith("/") else f"/{category_path}",
            "filename": filename,
            "mimetype": mimetype,
            "content_b64": base64.b64encode(content).decode("ascii"),
            "fhir_resource": dict(fhir_resource) if fhir_resource is not None else None,
        }
        return self.enqueue("document.upload", body)


@dataclass(frozen=True)
class AppliedWrite:
    """What one OpenEMR write did: the patient's uuid, whether OpenEMR created something, the HAPI entry."""

    patient_uuid: str
    created: bool
    pid: int | None = None
    document_id: int | None = None
    fhir_outbox_id: int | None = None


def _document_resource_id(site: str, resource_type: str, key: str) -> str:
    """A stable HAPI id for the resource of OpenEMR document ``key`` (``pid/id``): a retry PUTs the same one.

    ``o`` + 25 base32 characters of SHA-256: never all digits (HAPI refuses numeric client ids).
    """
    digest = hashlib.sha256("\x1f".join(("openemr", site, resource_type, key)).encode("utf-8")).digest()
    return "o" + base64.b32encode(digest)[:25].decode("ascii").lower()


def _hashes(content: bytes) -> set[str]:
    # OpenEMR's document `hash` column has been SHA-1 and, since 6.0, SHA3-512: accept either.
    return {hashlib.sha1(content).hexdigest(), hashlib.sha3_512(content).hexdigest()}  # noqa: S324


class OpenEmrDeliverer:
    """The pipeline's deliverer for target ``openemr`` (see the module doc)."""

    target = TARGET

    def __init__(self, client: OpenEmrClient, store: Store, settings: OpenEmrSettings,
                 *, reader: CachedReader | None = None, fhir_target: str = "fhir") -> None:
        self._client = client
        self._store = store
        self._settings = settings
        self._reader = reader
        self._fhir_target = fhir_target

    # -- the Deliverer protocol ---------------------------------------------------------
    def deliver(self, entry: OutboxEntry) -> None:
        try:
            body = json.loads(entry.body)
        except ValueError:
            raise PermanentDeliveryError(f"outbox entry {entry.outbox_id} does not hold valid JSON") from None
        try:
            self.apply(entry.operation, body)
        except NotRegistered as exc:
            # Configured but not registered (yet): the write waits for `meoring openemr register`.
            # IntegrationBlocked is a DeliveryHeld: the worker keeps it without using up attempts.
            raise IntegrationBlocked(str(exc)) from exc

    # -- operations ---------------------------------------------------------------------
    def apply(self, operation: str, body: Mapping[str, Any]) -> AppliedWrite:
        """Carry out one write now (the outbox entry's work); raises like the client does."""
        if operation == "patient.create":
            return self._create_patient(body)
        if operation == "patient.update":
            return self._update_patient(body)
        if operation == "document.upload":
            return self._upload_document(body)
        raise PermanentDeliveryError(f"unknown OpenEMR operation {operation!r}")

    def find_by_mrn(self, mrn: str) -> list[dict[str, Any]]:
        """OpenEMR Patients whose ``PT`` identifier (pubpid) is ``mrn``.

        OpenEMR's ``identifier`` search matches pubpid *and* SSN (§3.2), so the answers are
        filtered; this read bypasses the cache (a write decision needs the current truth).
        """
        found = self._client.search("Patient", [("identifier", mrn)])
        return [p for p in found if mrn_of(p) == mrn]

    def _mirror(self, patient_uuid: str, extra: list[dict[str, Any]] | None = None) -> int:
        """Read the Patient back from OpenEMR, cache it, and queue its HAPI copy (plus ``extra``)."""
        patient = self._client.read("Patient", patient_uuid)
        if patient is None:
            raise OpenEmrUnavailable("OpenEMR does not return the Patient it just stored; retrying later")
        if self._reader is not None:
            self._reader.put(patient)
        resources = [hapi_patient(patient, self._settings), *(extra or [])]
        return self._store.outbox.enqueue(
            target=self._fhir_target, operation="transaction",
            body=json.dumps(transaction(resources), separators=(",", ":")), resource_count=len(resources),
        )

    def _invalidate(self, resource_type: str, resource_id: str | None = None) -> None:
        if self._reader is not None:
            self._reader.invalidate(resource_type, resource_id)

    def _create_patient(self, body: Mapping[str, Any]) -> AppliedWrite:
        mrn = str(body["mrn"])
        existing = self.find_by_mrn(mrn)
        if len(existing) > 1:
            raise OpenEmrRefused("OpenEMR holds several patients with this MRN; resolve the duplicate there")
        created = not existing
        pid: int | None = None
        if existing:
            patient_uuid = str(existing[0]["id"])
        else:
            pid, patient_uuid = self._client.create_patient(body["resource"])
        self._invalidate("Patient", patient_uuid)
        fhir_id = self._mirror(patient_uuid)
        log.info("openemr patient created" if created else "openemr patient already present",
                 extra={"event": "openemr_patient_create", "new": created, "fhir_outbox_id": fhir_id})
        return AppliedWrite(patient_uuid, created, pid=pid, fhir_outbox_id=fhir_id)

    def _update_patient(self, body: Mapping[str, Any]) -> AppliedWrite:
        patient_uuid = str(body["uuid"])
        self._client.update_patient(patient_uuid, body["resource"])
        self._invalidate("Patient", patient_uuid)
        fhir_id = self._mirror(patient_uuid)
        return AppliedWrite(patient_uuid, False, fhir_outbox_id=fhir_id)

    def _upload_document(self, body: Mapping[str, Any]) -> AppliedWrite:
        patient_uuid = str(body["patient_uuid"])
        pid = int(body["pid"]) if body.get("pid") else self._client.patient_pid(patient_uuid)
        path = str(body["category_path"])
        content = base64.b64decode(body["content_b64"])
        hashes = _hashes(content)

        def find() -> dict[str, Any] | None:
            for document in self._client.list_documents(pid, path):
                if str(document.get("hash") or "").lower() in hashes:
                    return document
            return None

        document = find()
        created = document is None
        if document is None:
            self._client.upload_document(pid, path, str(body["filename"]), content, str(body["mimetype"]),
                                         encounter=body.get("encounter"))
            document = find()
            if document is None:
                raise OpenEmrUnavailable("OpenEMR accepted the document but does not list it yet; retrying later")
        document_id = int(document["id"])
        self._invalidate("DocumentReference")
        resource = self._document_resource(body, patient_uuid, pid, document_id)
        fhir_id = self._mirror(patient_uuid, [resource])
        log.info("openemr document stored", extra={"event": "openemr_document", "new": created,
                                                   "document_id": document_id, "fhir_outbox_id": fhir_id})
        return AppliedWrite(patient_uuid, created, pid=pid, document_id=document_id, fhir_outbox_id=fhir_id)

    def _document_resource(self, body: Mapping[str, Any], patient_uuid: str, pid: int,
                           document_id: int) -> dict[str, Any]:
        key = f"{pid}/{document_id}"
        identifier = {"system": self._settings.document_id_system, "value": key}
        given = body.get("fhir_resource")
        if isinstance(given, Mapping):
            resource = dict(given)
            resource["identifier"] = [*(i for i in resource.get("identifier") or []
                                        if i.get("system") != self._settings.document_id_system), identifier]
        else:
            resource = {
                "resourceType": "DocumentReference",
                "status": "current",
                "identifier": [identifier],
                "subject": {"reference": f"Patient/{patient_uuid}"},
                "content": [{"attachment": {"contentType": str(body["mimetype"]), "title": str(body["filename"])}}],
            }
        resource.setdefault("id", _document_resource_id(self._settings.site, str(resource["resourceType"]), key))
        return resource
