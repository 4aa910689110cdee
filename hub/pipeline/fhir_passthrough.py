"""The ``fhir`` channel: FHIR R4 JSON in, validated and made idempotent, FHIR out.

Accepts a ``transaction`` or ``batch`` Bundle, or a single resource. Only idempotent
requests pass: ``PUT Type/id``, a conditional ``POST`` with ``ifNoneExist``, a
conditional ``PUT Type?query`` or ``DELETE``. A plain POST would create a duplicate on
every replay, so it is refused with the entry's index named.
"""

from __future__ import annotations

import json
from typing import Any

from hub.errors import MappingError
from hub.fhir.validation import validate_resource
from hub.pipeline.translator import InboundMessage, Translation


class FhirBundlePassthrough:
    channel = "fhir"

    def translate(self, message: InboundMessage) -> Translation:
        try:
            document = json.loads(message.payload.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            raise MappingError("payload is not UTF-8 JSON", code="structure") from None
        if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
            raise MappingError("payload is not a FHIR resource (no resourceType)", location="resourceType")
        if document["resourceType"] != "Bundle" or document.get("type") not in ("transaction", "batch"):
            document = self._wrap(document)
        for index, entry in enumerate(document.get("entry") or []):
            self._check_entry(index, entry)
        validate_resource(document)
        return Translation(bundle=document)

    @staticmethod
    def _wrap(resource: dict[str, Any]) -> dict[str, Any]:
        resource_id = resource.get("id")
        if not isinstance(resource_id, str) or not resource_id:
            raise MappingError(
                "a single resource needs an id so that a replay updates it instead of duplicating it",
                location=f"{resource['resourceType']}.id",
            )
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"{resource['resourceType']}/{resource_id}",
                    "resource": resource,
                    "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource_id}"},
                }
            ],
        }

    @staticmethod
    def _check_entry(index: int, entry: Any) -> None:
        where = f"Bundle.entry[{index}].request"
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            raise MappingError("entry has no request", location=where)
        method = str(request.get("method", "")).upper()
        url = str(request.get("url", ""))
        if method == "POST" and not request.get("ifNoneExist"):
            raise MappingError("POST without ifNoneExist is not idempotent; use PUT with an id "
                               "or a conditional create", location=f"{where}.ifNoneExist")
        if method == "PUT" and "/" not in url and "?" not in url:
            raise MappingError("PUT needs Type/id or Type?search", location=f"{where}.url")
        if method not in {"POST", "PUT", "DELETE", "GET", "HEAD", "PATCH"}:
            raise MappingError("unknown request method", location=f"{where}.method")
