"""Patients arriving in HL7 ADT are matched against OpenEMR by MRN (issue 4, item 5).

OpenEMR is the source of truth, so an ADT patient must be one OpenEMR knows. The policy
``openemr.unknown_patient_policy`` decides what happens to one it does not know:

``reject``  raise :class:`~hub.errors.MappingError` with code ``unknown_key`` at ``PID-3``:
            the HL7 v2 adapter answers AE (table 0357 code 204, unknown key identifier).
``create``  create it in OpenEMR first (``POST FHIR/Patient``, MRN as pubpid), then mirror
            it to HAPI. If OpenEMR cannot be reached the create is queued in the outbox
            (retried, held while a re-login is required) and the match says ``queued``.
            If OpenEMR refuses the patient (validation), that is a ``MappingError`` too (AE),
            and nothing reaches HAPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hub.errors import MappingError, TransientDeliveryError
from hub.openemr.errors import OpenEmrRefused
from hub.openemr.writes import OpenEmrDeliverer, OpenEmrWriter

__all__ = ["MatchPolicy", "PatientMatch", "match_or_create"]

MatchPolicy = Literal["create", "reject"]


@dataclass(frozen=True)
class PatientMatch:
    """``matched`` (OpenEMR knew the MRN), ``created`` (just now) or ``queued`` (outbox entry)."""

    status: Literal["matched", "created", "queued"]
    patient_uuid: str | None = None
    outbox_id: int | None = None

    @property
    def known(self) -> bool:
        return self.patient_uuid is not None


def match_or_create(
    deliverer: OpenEmrDeliverer,
    writer: OpenEmrWriter,
    patient: Mapping[str, Any],
    *,
    mrn: str,
    policy: MatchPolicy,
    location: str = "PID-3",
) -> PatientMatch:
    """Find the OpenEMR patient with ``mrn``, or apply ``policy`` (see the module doc).

    ``patient`` is the FHIR Patient built from the message (used only to create). Raises
    :class:`MappingError` (reject, refused, ambiguous MRN) or, while OpenEMR cannot answer
    the lookup, the client's transient errors (the caller retries the message later).
    """
    if not mrn:
        raise MappingError("the message carries no MRN to match in OpenEMR", location=location, code="required")
    found = deliverer.find_by_mrn(mrn)
    if len(found) > 1:
        raise MappingError("OpenEMR holds several patients with this MRN", location=location, code="duplicate_key")
    if found:
        return PatientMatch("matched", str(found[0]["id"]))
    if policy == "reject":
        raise MappingError("no OpenEMR patient has this MRN (policy: reject)", location=location, code="unknown_key")
    body = OpenEmrWriter.patient_create_body(patient, mrn)
    try:
        applied = deliverer.apply("patient.create", body)
    except OpenEmrRefused as exc:
        raise MappingError(f"OpenEMR refused the new patient: {exc}", location=location, code="rejected") from exc
    except TransientDeliveryError:
        # OpenEMR is down or a person must act: the create waits in the outbox (safe to repeat).
        outbox_id = writer.enqueue("patient.create", body)
        return PatientMatch("queued", None, outbox_id)
    return PatientMatch("created", applied.patient_uuid)
