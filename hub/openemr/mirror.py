"""How OpenEMR's resources look in HAPI: the OpenEMR uuid as id and identifier, the MRN under its system.

A mirrored Patient keeps OpenEMR's id (its uuid, §3), so every copy is an idempotent
``PUT Patient/<uuid>``: a replay, a retry or a full re-sync changes nothing. It carries
two identifiers HAPI can be searched by: ``openemr.uuid_system|<uuid>`` and
``openemr.mrn_system|<pubpid>`` (the ``PT`` identifier, §3.2). OpenEMR's ``meta`` (its own
version and profiles) is dropped; references to resources the hub does not mirror
(``generalPractitioner``, ``managingOrganization``) become logical references by identifier,
so HAPI's referential integrity holds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from hub.config import OpenEmrSettings

__all__ = ["PT_SYSTEM", "hapi_patient", "mrn_of", "transaction", "with_mrn"]

#: HL7 v2 table 0203 — identifier type codes; PT = patient external identifier (OpenEMR's pubpid).
PT_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _is_pt(identifier: Mapping[str, Any]) -> bool:
    for coding in (identifier.get("type") or {}).get("coding") or []:
        if isinstance(coding, Mapping) and coding.get("code") == "PT":
            return True
    return False


def mrn_of(patient: Mapping[str, Any], mrn_system: str | None = None) -> str | None:
    """The MRN: an identifier under ``mrn_system``, else OpenEMR's ``PT`` identifier."""
    identifiers = [i for i in patient.get("identifier") or [] if isinstance(i, Mapping)]
    for identifier in identifiers:
        if mrn_system and identifier.get("system") == mrn_system and identifier.get("value"):
            return str(identifier["value"])
    for identifier in identifiers:
        if _is_pt(identifier) and identifier.get("value"):
            return str(identifier["value"])
    return None


def with_mrn(patient: Mapping[str, Any], mrn: str) -> dict[str, Any]:
    """A copy of ``patient`` carrying ``mrn`` as its ``PT`` identifier: OpenEMR stores that as pubpid."""
    out = copy.deepcopy(dict(patient))
    identifiers = [i for i in out.get("identifier") or [] if isinstance(i, Mapping) and not _is_pt(i)]
    identifiers.insert(0, {"use": "usual", "type": {"coding": [{"system": PT_SYSTEM, "code": "PT"}]},
                           "system": PT_SYSTEM, "value": mrn})
    out["identifier"] = identifiers
    return out


def _logical(reference: Any, settings: OpenEmrSettings) -> Any:
    if not isinstance(reference, Mapping) or not isinstance(reference.get("reference"), str):
        return reference
    kind, _, ident = reference["reference"].rpartition("/")
    out: dict[str, Any] = {"identifier": {"system": settings.uuid_system, "value": ident}}
    if kind:
        out["type"] = kind.rsplit("/", 1)[-1]
    if reference.get("display"):
        out["display"] = reference["display"]
    return out


def hapi_patient(patient: Mapping[str, Any], settings: OpenEmrSettings) -> dict[str, Any]:
    """The HAPI copy of an OpenEMR Patient (see the module doc)."""
    out = copy.deepcopy(dict(patient))
    uuid = str(out["id"])
    out.pop("meta", None)
    out.pop("text", None)  # OpenEMR's narrative (if any) describes its own record
    identifiers: list[dict[str, Any]] = []
    for identifier in out.get("identifier") or []:
        if not isinstance(identifier, Mapping):
            continue
        identifier = dict(identifier)
        if identifier.get("system") in (settings.uuid_system, settings.mrn_system):
            continue
        if _is_pt(identifier):
            identifier["system"] = settings.mrn_system
        identifiers.append(identifier)
    identifiers.append({"system": settings.uuid_system, "value": uuid})
    out["identifier"] = identifiers
    for name in ("generalPractitioner",):
        if isinstance(out.get(name), list):
            out[name] = [_logical(r, settings) for r in out[name]]
    if "managingOrganization" in out:
        out["managingOrganization"] = _logical(out["managingOrganization"], settings)
    out.pop("link", None)
    return out


def transaction(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle of ``PUT [type]/[id]`` entries: idempotent, all or nothing."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": dict(r),
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }
