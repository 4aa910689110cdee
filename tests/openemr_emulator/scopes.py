"""OpenEMR's scope list and the per-request scope check (openemr.md §2.7, §2.8)."""

from __future__ import annotations

import re

OIDC_SCOPES = [
    "openid", "fhirUser", "online_access", "offline_access", "launch", "launch/patient", "api:oemr", "api:fhir",
    "api:port", "profile", "name", "address", "given_name", "family_name", "nickname", "phone", "phone_verified",
    "email", "email_verified",
]
#: FHIR resources with v1 ``.read`` scopes (§2.7).
V1_READ = [
    "AllergyIntolerance", "Appointment", "CarePlan", "CareTeam", "Condition", "Coverage", "Device", "DiagnosticReport",
    "DocumentReference", "Binary", "Encounter", "Goal", "Group", "Immunization", "Location", "Medication",
    "MedicationRequest", "Observation", "Organization", "Patient", "Person", "Practitioner", "PractitionerRole",
    "Procedure", "Provenance", "ValueSet", "OperationDefinition",
]
#: FHIR resources with v2 ``.rs`` scopes: v1 minus some, plus some (§2.7).
V2_RS = [r for r in V1_READ if r not in {
    "Appointment", "Binary", "Group", "Location", "Medication", "Person", "ValueSet", "OperationDefinition",
}] + ["Media", "MedicationDispense", "Questionnaire", "QuestionnaireResponse", "RelatedPerson", "ServiceRequest",
      "Specimen"]
FHIR_WRITE = ["Patient", "Practitioner", "Organization"]  # only user/<X>.write (§2.7)
#: Standard API scopes: resource → allowed v2 permission letters (§2.7).
API_SCOPES = {
    "allergy": "cruds", "appointment": "cruds", "dental_issue": "cruds", "medical_problem": "cruds",
    "medication": "cruds", "surgery": "cruds", "document": "crs", "drug": "rs", "employer": "s", "encounter": "crus",
    "facility": "crus", "insurance": "crus", "insurance_company": "crus", "patient": "crus", "practitioner": "crus",
    "soap_note": "crus", "vital": "crus", "immunization": "rs", "insurance_type": "s", "list": "r", "message": "cud",
    "prescription": "crds", "procedure": "rs", "product": "s", "transaction": "cuds", "user": "rs", "version": "s",
}
SYSTEM_OPERATIONS = ["system/Patient.$export", "system/Group.$export", "system/*.$export", "system/*.$bulkdata-status"]

_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z_*]+)\.(\$[A-Za-z-]+|read|write|[cruds]+)(\?.*)?$")


def _ordered_subset(letters: str, allowed: str = "cruds") -> bool:
    position = -1
    for letter in letters:
        index = allowed.find(letter)
        if index <= position:
            return False
        position = index
    return bool(letters)


def server_scopes(system_scopes: bool) -> list[str]:
    """The advertised list (``scopes_supported``); system scopes only with rest_system_scopes_api (§1)."""
    out = list(OIDC_SCOPES)
    for ctx in ("patient", "user", "system"):
        if ctx == "system" and not system_scopes:
            continue
        out += [f"{ctx}/{r}.read" for r in V1_READ]
        out += [f"{ctx}/{r}.rs" for r in V2_RS]
    out += [f"user/{r}.write" for r in FHIR_WRITE]
    out += [f"user/{r}.{p}" for r, p in API_SCOPES.items()]
    if system_scopes:
        out += SYSTEM_OPERATIONS
    return out


def is_known_scope(scope: str, system_scopes: bool) -> bool:
    """Is ``scope`` in the server scope list (leniently, as OpenEMR matches, §2.7)?"""
    if scope in OIDC_SCOPES:
        return True
    if scope == "site:default" or scope == "launch/encounter":
        return False  # no longer / never in the list (§2.7)
    match = _SCOPE.match(scope)
    if not match:
        return False
    ctx, resource, perm = match.group(1), match.group(2), match.group(3)
    if ctx == "system" and not system_scopes:
        return False
    if perm.startswith("$"):
        return scope.split("?")[0] in SYSTEM_OPERATIONS or (perm == "$docref" and resource == "DocumentReference")
    if resource in API_SCOPES and ctx == "user":
        allowed = API_SCOPES[resource]
        if perm in ("read", "write"):
            return True
        return _ordered_subset(perm) and set(perm) <= set(allowed)
    if perm == "read":
        return resource in V1_READ
    if perm == "write":
        return ctx == "user" and resource in FHIR_WRITE
    if not _ordered_subset(perm):
        return False
    if set(perm) <= {"r", "s"}:
        return resource in V2_RS or resource in V1_READ
    return ctx == "user" and resource in FHIR_WRITE


def _letters(perm: str) -> set[str]:
    if perm == "read":
        return {"r", "s"}
    if perm == "write":
        return {"c", "u", "d"}
    return set(perm)


def grants(scopes: list[str], ctx: str, resource: str, need: str) -> bool:
    """Does a token holding ``scopes`` allow ``need`` (a letter, or ``$op``) on ``ctx/resource``?"""
    for scope in scopes:
        match = _SCOPE.match(scope)
        if not match or match.group(1) != ctx:
            continue
        if match.group(2) not in (resource, "*"):
            continue
        perm = match.group(3)
        if need.startswith("$"):
            if perm == need:
                return True
            continue
        if not perm.startswith("$") and need in _letters(perm):
            return True
    return False
