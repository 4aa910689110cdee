"""Assembling the output: a FHIR R4 ``transaction`` Bundle of ``PUT Type/id`` entries, and the
Provenance that records where a message's resources came from.

PUT with deterministic ids makes delivery idempotent (FHIR R4 http.html#update, "update as
create"): replaying a message, or receiving an A08 after its A01, updates the same resources.

A resource whose map says ``write: if_absent`` (the Patient and Encounter of an order, result,
schedule or document message: registration owns them) is a conditional create instead:
``POST Type`` with ``ifNoneExist: _id=<id>``, the body still carrying its deterministic id and
every other entry still referencing it as ``Type/id``. A server would give a POST a new id of its
own, so delivery resolves these entries first (:func:`hub.pipeline.delivery.prepare_transaction`):
an entry whose resource exists is dropped, the others become ``PUT Type/id``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection, Iterable, Sequence
from typing import Any

__all__ = ["full_url", "provenance", "transaction"]

_FULL_URL_NAMESPACE = uuid.UUID("6f1c2b1e-6d0a-5c8e-9a57-3d2f0e8b4c11")
INBOX_SYSTEM = "urn:meoring:inbox"
MESSAGE_SYSTEM = "urn:meoring:message-control-id"


_NAMESPACE_BYTES = _FULL_URL_NAMESPACE.bytes


def full_url(resource_type: str, resource_id: str) -> str:
    """A stable ``urn:uuid:`` for an entry (R4 bdl: every transaction entry needs a fullUrl; the
    server's base URL is not known when translating). References stay ``Type/id``.

    The UUID is ``uuid.uuid5(namespace, "Type/id")`` (RFC 4122 §4.3: SHA-1, version 5, RFC 4122
    variant), computed without building ``uuid.UUID`` objects (one per resource adds up).
    """
    return _full_url(f"{resource_type}/{resource_id}")


def _full_url(reference: str) -> str:
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + reference.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    x = digest.hex()
    return f"urn:uuid:{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def transaction(resources: Iterable[dict[str, Any]], if_absent: Collection[str] = ()) -> dict[str, Any]:
    """A transaction Bundle updating each resource by type and id (``PUT Type/id``).

    A resource whose ``Type/id`` is in ``if_absent`` is to be written only if no resource has that
    id: its entry is ``POST Type`` with ``ifNoneExist: _id=<id>`` (fullUrl and body id unchanged).
    """
    entries = []
    conditional = len(if_absent) > 0
    for resource in resources:
        resource_type: str = resource["resourceType"]
        resource_id: str = resource["id"]
        reference = f"{resource_type}/{resource_id}"
        if conditional and reference in if_absent:
            request = {"method": "POST", "url": resource_type, "ifNoneExist": f"_id={resource_id}"}
        else:
            request = {"method": "PUT", "url": reference}
        entries.append({"fullUrl": _full_url(reference), "resource": resource, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def provenance(
    *,
    resource_id: str,
    targets: Sequence[str],
    recorded: str,
    sender: str,
    sender_system: str,
    message_id: str,
    inbox_id: int | None,
    activity: dict[str, Any] | None = None,
    occurred: str | None = None,
) -> dict[str, Any]:
    """One Provenance for a message (FHIR R4 Provenance; HL7 v2-to-FHIR IG MSH[Provenance]).

    ``targets`` are ``Type/id`` references to every resource the message touched; the message
    is an entity (role ``source``) identified by its control id within the sender's namespace,
    and the inbox record (the raw message as received) a second one.
    """
    entities: list[dict[str, Any]] = [
        {
            "role": "source",
            "what": {
                "identifier": {
                    "system": MESSAGE_SYSTEM,
                    "value": message_id,
                    "assigner": {"display": sender},
                },
                "display": "inbound message",
            },
        }
    ]
    if inbox_id is not None:
        entities.append(
            {
                "role": "source",
                "what": {
                    "identifier": {"system": INBOX_SYSTEM, "value": str(inbox_id)},
                    "display": "inbox record",
                },
            }
        )
    body: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": resource_id,
        "target": [{"reference": ref} for ref in targets],
        "recorded": recorded,
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": {"identifier": {"system": sender_system, "value": sender}, "display": sender},
            }
        ],
        "entity": entities,
    }
    if occurred:
        body["occurredDateTime"] = occurred
    if activity:
        body["activity"] = activity
    return body
