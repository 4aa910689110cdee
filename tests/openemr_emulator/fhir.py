"""Patient records as OpenEMR stores and renders them (openemr.md §3.1, §3.2, §4.1).

``patient_data`` has ``pid`` (integer key), ``uuid`` (= FHIR ``Patient.id``) and ``pubpid``
(the chart number, = pid when blank); the FHIR Patient carries ``pubpid`` as the ``PT``
identifier and the SSN as ``SS`` (§3.2). ``POST /fhir/Patient`` parses the FHIR resource back
into those columns and validates them like OpenEMR's PatientValidator on insert: ``fname``
(1-255), ``lname`` (2-255), ``sex`` (4-30) and ``DOB`` are required (§4.3).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
US_CORE_PATIENT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"

_GENDER_TO_SEX = {"male": "Male", "female": "Female", "other": "Unknown", "unknown": "Unknown"}
_SEX_TO_GENDER = {"Male": "male", "Female": "female"}


def instant(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def parse_instant(value: str) -> float:
    text = value.strip().replace("Z", "+00:00")
    if len(text) == 10:
        text += "T00:00:00+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def versioned_profiles(profile: str) -> list[str]:
    """Each profile unversioned and with |3.1.1, |7.0.0, |8.0.0 (VersionedProfileTrait, §3.3)."""
    return [profile, f"{profile}|3.1.1", f"{profile}|7.0.0", f"{profile}|8.0.0"]


def render_patient(row: Any) -> dict[str, Any]:
    """The FHIR Patient of a ``patients`` row."""
    identifiers: list[dict[str, Any]] = [{
        "use": "official",
        "type": {"coding": [{"system": V2_0203, "code": "PT"}]},
        "system": V2_0203,
        "value": row["pubpid"] or str(row["pid"]),  # pubpid defaults to pid when blank (§3.2)
    }]
    if row["ss"]:
        identifiers.append({"use": "official", "type": {"coding": [{"system": V2_0203, "code": "SS"}]},
                            "system": "http://hl7.org/fhir/sid/us-ssn", "value": row["ss"]})
    given = [g for g in (row["fname"], row["mname"]) if g]
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": row["uuid"],
        "meta": {"versionId": "1", "lastUpdated": instant(row["updated"]),
                 "profile": versioned_profiles(US_CORE_PATIENT)},
        "identifier": identifiers,
        "active": True,
        "name": [{"use": "official", "family": row["lname"], "given": given}],
        "gender": _SEX_TO_GENDER.get(row["sex"] or "", "unknown"),
    }
    if row["dob"]:
        patient["birthDate"] = row["dob"]
    telecom = []
    if row["phone"]:
        telecom.append({"system": "phone", "value": row["phone"], "use": "home"})
    if row["email"]:
        telecom.append({"system": "email", "value": row["email"], "use": "home"})
    if telecom:
        patient["telecom"] = telecom
    if row["street"] or row["city"]:
        address = {"line": [row["street"]] if row["street"] else [], "city": row["city"] or None,
                   "state": row["state"] or None, "postalCode": row["postal_code"] or None}
        patient["address"] = [{k: v for k, v in address.items() if v}]
    return patient


def parse_patient(resource: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``patient_data`` columns from a FHIR Patient, and the validation errors (by field)."""
    names = resource.get("name") or [{}]
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], dict) else {}
    given = [g for g in name.get("given") or [] if isinstance(g, str)]
    columns: dict[str, Any] = {
        "fname": given[0] if given else "",
        "mname": given[1] if len(given) > 1 else "",
        "lname": name.get("family") or "",
        "sex": _GENDER_TO_SEX.get(str(resource.get("gender") or ""), ""),
        "dob": resource.get("birthDate") or "",
        "pubpid": "",
        "ss": "",
        "phone": "",
        "email": "",
        "street": "",
        "city": "",
        "state": "",
        "postal_code": "",
    }
    for identifier in resource.get("identifier") or []:
        codes = {c.get("code") for c in (identifier.get("type") or {}).get("coding") or [] if isinstance(c, dict)}
        if "PT" in codes:
            columns["pubpid"] = str(identifier.get("value") or "")
        elif "SS" in codes:
            columns["ss"] = str(identifier.get("value") or "")
    for telecom in resource.get("telecom") or []:
        if telecom.get("system") == "phone" and not columns["phone"]:
            columns["phone"] = str(telecom.get("value") or "")
        if telecom.get("system") == "email" and not columns["email"]:
            columns["email"] = str(telecom.get("value") or "")
    addresses = resource.get("address") or []
    if addresses and isinstance(addresses[0], dict):
        address = addresses[0]
        columns["street"] = " ".join(address.get("line") or [])
        columns["city"] = address.get("city") or ""
        columns["state"] = address.get("state") or ""
        columns["postal_code"] = address.get("postalCode") or ""
    errors: dict[str, str] = {}
    if not 1 <= len(columns["fname"]) <= 255:
        errors["fname"] = "fname must be provided (1-255 characters)"
    if not 2 <= len(columns["lname"]) <= 255:
        errors["lname"] = "lname must be 2-255 characters"
    if not 4 <= len(columns["sex"]) <= 30:
        errors["sex"] = "sex must be provided (4-30 characters)"
    try:
        datetime.strptime(columns["dob"], "%Y-%m-%d")
    except ValueError:
        errors["DOB"] = "DOB must be a date Y-m-d"
    return columns, errors


def bundle(fhir_base: str, self_url: str, resources: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """A search answer as OpenEMR sends it (§3.2): ``collection``, ``total`` = entries in *this*
    response, one ``self`` link and never a ``next`` link."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "total": len(resources),
        "meta": {"lastUpdated": instant(now)},
        "link": [{"relation": "self", "url": self_url}],
        "entry": [{"fullUrl": f"{fhir_base}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }
