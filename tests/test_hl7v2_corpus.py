"""The HL7 v2 corpus: 63 realistic messages (v2.3 to v2.8, fictional people and organisations)
across every mapped message type, each with asserted key facts of its FHIR translation.

Every message is checked for: a stable translation (same bundle twice, ``m…`` ids), references
that resolve inside the bundle (what HAPI's referential integrity demands), exactly the expected
resource counts, and exactly the expected unmapped-code reports. Then per message the facts that
matter: codes mapped through the ConceptMaps, values typed (Quantity, Range, dateTime, integer),
identifiers and references. Cross-message facts check identity: an A08 updates the A01's Patient,
a corrected result its Observation, an RDE the MedicationRequest of the OMP.

The v2.3/2.4 messages keep their era's habits: timestamps without UTC offset (the date is kept,
the time dropped, a warning reported), CE instead of CWE, no MSH-21, MSH-9 without structure.
The messages are data written for this project; tests/test_hl7v2_hapi.py sends them to HAPI.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from adapters.hl7v2 import Hl7v2Translator
from adapters.hl7v2.ack import parse_error_location
from hub.errors import MappingError, ValidationFailed
from hub.pipeline.translator import Translation

DATA = Path(__file__).parent / "data" / "hl7v2"
ID = re.compile(r"^m[0-9a-f]{30}$")
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
#: Provenance.recorded when neither EVN-2 nor MSH-7 carries a UTC offset (v2.3/2.4 senders)
RECEIVED = datetime(2025, 4, 3, 12, 0, tzinfo=UTC)

#: message → resource counts of its bundle (Provenance included).
COUNTS: dict[str, dict[str, int]] = {
    "adt_a01_v23_ins_gt1.hl7": {
        "Patient": 1,
        "Encounter": 1,
        "Condition": 1,
        "RelatedPerson": 2,
        "Organization": 1,
        "Coverage": 1,
        "Account": 1,
        "Provenance": 1,
    },
    "adt_a08_v23_update.hl7": {
        "Patient": 1,
        "Encounter": 1,
        "Organization": 1,
        "Coverage": 1,
        "Account": 1,
        "Provenance": 1,
    },
    "adt_a01_v24_nk1_multi.hl7": {
        "Patient": 1,
        "Encounter": 1,
        "RelatedPerson": 2,
        "Procedure": 1,
        "Organization": 1,
        "Coverage": 1,
        "Provenance": 1,
    },
    "adt_a01_v25_rol.hl7": {"Patient": 1, "Encounter": 1, "Provenance": 1},
    "adt_a01_v26_surgery.hl7": {
        "Patient": 1,
        "Encounter": 1,
        "Condition": 1,
        "Procedure": 1,
        "Organization": 2,
        "Coverage": 2,
        "Provenance": 1,
    },
    "adt_a01_v27_contacts.hl7": {"Patient": 1, "Encounter": 1, "Observation": 1, "RelatedPerson": 1, "Provenance": 1},
    "adt_a01_v28_newborn.hl7": {"Patient": 1, "Encounter": 1, "Observation": 1, "RelatedPerson": 1, "Provenance": 1},
    "adt_a04_v231_er.hl7": {"Patient": 1, "Encounter": 1, "AllergyIntolerance": 1, "Provenance": 1},
    "adt_a04_v25_outpt.hl7": {"Patient": 1, "Encounter": 1, "Organization": 1, "Coverage": 1, "Provenance": 1},
    "adt_a04_v26_vitals.hl7": {"Patient": 1, "Encounter": 1, "Observation": 3, "Provenance": 1},
    "adt_a13_v25.hl7": {"Patient": 1, "Encounter": 1, "Provenance": 1},
    "adt_a02_v251_transfer.hl7": {"Patient": 1, "Encounter": 1, "Provenance": 1},
    "adt_a02_v23.hl7": {"Patient": 1, "Encounter": 1, "Provenance": 1},
    "adt_a03_v231_proc.hl7": {"Patient": 1, "Encounter": 1, "Condition": 1, "Procedure": 1, "Provenance": 1},
    "adt_a03_v26_home.hl7": {"Patient": 1, "Encounter": 1, "Provenance": 1},
    "adt_a05_v24_preadmit.hl7": {"Patient": 1, "Encounter": 1, "Organization": 1, "Coverage": 1, "Provenance": 1},
    "adt_a05_v27.hl7": {"Patient": 1, "Encounter": 1, "Provenance": 1},
    "adt_a11_v25.hl7": {"Patient": 1, "Encounter": 1, "Provenance": 1},
    "adt_a11_v23.hl7": {"Patient": 1, "Encounter": 1, "Provenance": 1},
    "adt_a28_v24_person.hl7": {"Patient": 1, "RelatedPerson": 1, "Organization": 1, "Coverage": 1, "Provenance": 1},
    "adt_a31_v251_person.hl7": {"Patient": 1, "AllergyIntolerance": 1, "Provenance": 1},
    "adt_a40_v24_merge.hl7": {"Patient": 2, "Provenance": 1},
    "adt_a40_v28_merge.hl7": {"Patient": 2, "Provenance": 1},
    "orm_o01_v23_rxo.hl7": {"Patient": 1, "Encounter": 1, "Medication": 1, "MedicationRequest": 1, "Provenance": 1},
    "orm_o01_v24_rxo_range.hl7": {
        "Patient": 1,
        "Encounter": 1,
        "Medication": 1,
        "MedicationRequest": 1,
        "Provenance": 1,
    },
    "orm_o01_v24_lab.hl7": {
        "Patient": 1,
        "Encounter": 1,
        "ServiceRequest": 1,
        "Organization": 1,
        "Coverage": 1,
        "Provenance": 1,
    },
    "orm_o01_v25_rad.hl7": {"Patient": 1, "Encounter": 1, "ServiceRequest": 1, "Provenance": 1},
    "orm_o01_v231_cancel.hl7": {"Patient": 1, "ServiceRequest": 1, "Provenance": 1},
    "omp_o09_v25.hl7": {"Patient": 1, "Encounter": 1, "Medication": 1, "MedicationRequest": 1, "Provenance": 1},
    "omp_o09_v26_prn.hl7": {"Patient": 1, "Medication": 1, "MedicationRequest": 1, "Provenance": 1},
    "rde_o11_v25.hl7": {"Patient": 1, "Encounter": 1, "Medication": 1, "MedicationRequest": 1, "Provenance": 1},
    "rde_o11_v23_timing.hl7": {"Patient": 1, "Encounter": 1, "Medication": 1, "MedicationRequest": 1, "Provenance": 1},
    "rde_o11_v24_iv.hl7": {"Patient": 1, "Encounter": 1, "Medication": 1, "MedicationRequest": 1, "Provenance": 1},
    "rde_o11_v26_two_orders.hl7": {"Patient": 1, "Medication": 2, "MedicationRequest": 2, "Provenance": 1},
    "rde_o25_v251_refill.hl7": {"Patient": 1, "Medication": 1, "MedicationRequest": 1, "Provenance": 1},
    "oml_o21_v251_two_orders.hl7": {
        "Patient": 1,
        "Encounter": 1,
        "ServiceRequest": 2,
        "Specimen": 2,
        "Organization": 1,
        "Coverage": 1,
        "Provenance": 1,
    },
    "oml_o21_v26.hl7": {"Patient": 1, "ServiceRequest": 1, "Observation": 1, "Provenance": 1},
    "oml_o21_v25_urine.hl7": {"Patient": 1, "ServiceRequest": 1, "Specimen": 1, "Provenance": 1},
    "oru_r01_v25_specimen.hl7": {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Specimen": 1,
        "Observation": 4,
        "Provenance": 1,
    },
    "oru_r01_v251_micro.hl7": {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 4,
        "Provenance": 1,
    },
    "oru_r01_v26_tq1.hl7": {
        "Patient": 1,
        "Encounter": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 1,
        "Provenance": 1,
    },
    "oru_r01_v27_prt.hl7": {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 1,
        "Provenance": 1,
    },
    "oru_r01_v28.hl7": {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Specimen": 1,
        "Observation": 1,
        "Provenance": 1,
    },
    "oru_r01_v24_chem.hl7": {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 10,
        "Provenance": 1,
    },
    "oru_r01_v23_rad.hl7": {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 2,
        "Provenance": 1,
    },
    "oru_r01_v231_prelim.hl7": {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 2,
        "Provenance": 1,
    },
    "oru_r01_v231_corrected.hl7": {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 2,
        "Provenance": 1,
    },
    "oru_r01_v25_unmapped_interp.hl7": {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 2,
        "Provenance": 1,
    },
    "oru_r01_v251_units.hl7": {
        "Patient": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 3,
        "Provenance": 1,
    },
    "oul_r22_v251.hl7": {
        "Patient": 1,
        "Encounter": 1,
        "Specimen": 1,
        "Observation": 4,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Provenance": 1,
    },
    "oul_r22_v26_two_specimens.hl7": {
        "Patient": 1,
        "Specimen": 2,
        "ServiceRequest": 2,
        "DiagnosticReport": 2,
        "Observation": 2,
        "Provenance": 1,
    },
    "oul_r22_v25_prelim.hl7": {
        "Patient": 1,
        "Specimen": 1,
        "ServiceRequest": 1,
        "DiagnosticReport": 1,
        "Observation": 1,
        "Provenance": 1,
    },
    "vxu_v04_v251_two_doses.hl7": {"Patient": 1, "Immunization": 2, "Observation": 1, "Provenance": 1},
    "vxu_v04_v24.hl7": {"Patient": 1, "Immunization": 1, "Provenance": 1},
    "vxu_v04_v25_refusal.hl7": {"Patient": 1, "Immunization": 1, "Provenance": 1},
    "siu_s12_v24.hl7": {"Patient": 1, "Appointment": 1, "Provenance": 1},
    "siu_s13_v251_reschedule.hl7": {"Patient": 1, "Appointment": 1, "Provenance": 1},
    "siu_s14_v26.hl7": {"Patient": 1, "Appointment": 1, "Provenance": 1},
    "siu_s15_v23_cancel.hl7": {"Patient": 1, "Appointment": 1, "Provenance": 1},
    "siu_s12_v27_tq1.hl7": {"Patient": 1, "Appointment": 1, "Provenance": 1},
    "mdm_t02_v24.hl7": {"Patient": 1, "Encounter": 1, "DocumentReference": 1, "Provenance": 1},
    "mdm_t02_v26_addendum.hl7": {"Patient": 1, "Encounter": 1, "DocumentReference": 1, "Provenance": 1},
    "mdm_t02_v23.hl7": {"Patient": 1, "Encounter": 1, "DocumentReference": 1, "Provenance": 1},
}
CORPUS = list(COUNTS)

#: codes the ConceptMaps do not map, per message: (field, code); every other code must map.
UNMAPPED: dict[str, set[tuple[str, str]]] = {
    "adt_a01_v24_nk1_multi.hl7": {("PID-13[2].2", "NET"), ("NK1[2]-3.1", "EMR")},
    "adt_a01_v27_contacts.hl7": {("PID-13[2].2", "NET")},
    "oru_r01_v25_unmapped_interp.hl7": {("OBX[2]-8", "PANIC")},
}
_UNMAPPED = re.compile(r"^(?P<field>\S+): code '(?P<code>[^']+)' not in ConceptMap")


@cache
def translator() -> Hl7v2Translator:
    return Hl7v2Translator()


@cache
def run(name: str) -> Translation:
    return translator().translate_raw((DATA / name).read_bytes(), received_at=RECEIVED)[0]


def resources(name: str, kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in run(name).bundle["entry"] if e["resource"]["resourceType"] == kind]


def one(name: str, kind: str) -> dict[str, Any]:
    (found,) = resources(name, kind)
    return found


def ref(resource: dict[str, Any]) -> dict[str, str]:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def by_code(name: str, kind: str = "Observation", element: str = "code") -> dict[str, dict[str, Any]]:
    return {r[element]["coding"][0]["code"]: r for r in resources(name, kind)}


def references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


# -- every message ------------------------------------------------------------------------------
def test_corpus_size_and_versions() -> None:
    assert len(CORPUS) >= 60
    assert all((DATA / name).is_file() for name in CORPUS)
    versions = set()
    for name in CORPUS:
        msh = (DATA / name).read_bytes().split(b"\r")[0].split(b"\n")[0].decode()
        versions.add(msh.split("|")[11])
    assert {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"} <= versions
    kinds = {"_".join(name.split("_")[:2]) for name in CORPUS}
    for kind in (
        "adt_a01",
        "adt_a02",
        "adt_a03",
        "adt_a04",
        "adt_a05",
        "adt_a08",
        "adt_a11",
        "adt_a13",
        "adt_a28",
        "adt_a31",
        "adt_a40",
        "orm_o01",
        "omp_o09",
        "rde_o11",
        "oml_o21",
        "oru_r01",
        "oul_r22",
        "vxu_v04",
        "siu_s12",
        "siu_s13",
        "siu_s14",
        "siu_s15",
        "mdm_t02",
    ):
        assert kind in kinds, kind


@pytest.mark.parametrize("name", CORPUS)
def test_stable_ids_consistent_references_expected_counts(name: str) -> None:
    translation = run(name)
    entries = translation.bundle["entry"]
    present = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries}
    assert len(present) == len(entries), "one entry per resource"
    assert all(ID.match(e["resource"]["id"]) for e in entries)
    for entry in entries:
        for target in references(entry["resource"]):
            assert target in present, f"{entry['resource']['resourceType']} refers to {target} outside the bundle"
    assert Counter(e["resource"]["resourceType"] for e in entries) == COUNTS[name]
    again = translator().translate_raw((DATA / name).read_bytes(), received_at=RECEIVED)[0]
    assert again.bundle == translation.bundle, "a replay yields the same ids and content"


@pytest.mark.parametrize("name", CORPUS)
def test_codes_map_or_are_reported(name: str) -> None:
    reported = set()
    for warning in run(name).warnings:
        match = _UNMAPPED.match(warning)
        if match:
            reported.add((match["field"], match["code"]))
    assert reported == UNMAPPED.get(name, set())


# -- ADT ----------------------------------------------------------------------------------------
def test_adt_a01_v23_insurance_guarantor_account() -> None:
    name = "adt_a01_v23_ins_gt1.hl7"
    patient = one(name, "Patient")
    assert patient["gender"] == "female" and patient["birthDate"] == "1962-03-14"
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    assert patient["identifier"][0] == {
        "value": "GF100234",
        "system": "urn:id:GREENFIELD",
        "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
    }
    ssn = next(i for i in patient["identifier"] if i.get("system") == "http://hl7.org/fhir/sid/us-ssn")
    assert ssn["value"] == "000-12-3456"
    encounter = one(name, "Encounter")
    assert encounter["period"]["start"] == "1999-05-12"  # v2.3 TS without offset: date kept
    assert any("PV1-44: time without UTC offset" in w for w in run(name).warnings)
    spouse, guarantor = resources(name, "RelatedPerson")
    assert spouse["relationship"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
        "code": "SPS",
    }
    assert spouse["patient"] == ref(patient) and spouse["name"][0]["family"] == "Hartley"
    assert guarantor["identifier"] == [{"value": "GT-3391"}] and guarantor["birthDate"] == "1960-01-07"
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
        "code": "GUAR",
        "display": "guarantor",
    } in guarantor["relationship"][1]["coding"]
    account = one(name, "Account")
    assert account["identifier"][0]["value"] == "ACC-77120"
    assert account["identifier"][0]["type"]["coding"][0]["code"] == "AN"
    assert account["subject"] == [ref(patient)] and account["guarantor"] == [{"party": ref(guarantor)}]
    coverage, insurer = one(name, "Coverage"), one(name, "Organization")
    assert insurer["name"] == "Blue Cedar Insurance" and insurer["identifier"] == [
        {"value": "BCI01", "system": "urn:id:NAIC"}
    ]
    assert insurer["type"][0]["coding"][0]["code"] == "ins"
    assert coverage["status"] == "active" and coverage["payor"] == [ref(insurer)]
    assert coverage["beneficiary"] == ref(patient) and coverage["subscriber"] == ref(patient)  # IN1-17 SEL
    assert coverage["relationship"]["coding"][0]["code"] == "self"
    assert coverage["subscriberId"] == "BCG-4471902" and coverage["order"] == 1
    assert coverage["period"] == {"start": "1999-01-01", "end": "1999-12-31"}
    assert [(c["type"]["coding"][0]["code"], c["value"]) for c in coverage["class"]] == [
        ("plan", "BCGOLD"),
        ("group", "GRP-8812"),
    ]


def test_adt_a08_updates_the_a01_resources() -> None:
    a01, a08 = "adt_a01_v23_ins_gt1.hl7", "adt_a08_v23_update.hl7"
    for kind in ("Patient", "Encounter", "Coverage", "Organization", "Account"):
        assert one(a01, kind)["id"] == one(a08, kind)["id"], kind
    assert one(a08, "Patient")["address"][0]["line"] == ["48 Quarry Road"]
    assert one(a08, "Encounter")["location"][0]["location"]["display"] == "GREENFIELD 3W 314 A"
    assert one(a01, "Provenance")["id"] != one(a08, "Provenance")["id"]


def test_adt_a01_v24_contacts_insured_spouse_procedure() -> None:
    name = "adt_a01_v24_nk1_multi.hl7"
    patient = one(name, "Patient")
    assert patient["communication"][0]["language"]["coding"][0]["code"] == "JPN"
    assert {"value": "kenji.n@example.org", "system": "email"} in patient["telecom"]
    assert len(patient["contact"]) == 2  # both NK1 are contacts; only the person is a RelatedPerson
    spouse, insured = resources(name, "RelatedPerson")
    assert spouse["relationship"][1]["coding"][0]["code"] == "EP"
    assert insured["birthDate"] == "1990-02-15" and insured["gender"] == "female"
    coverage = one(name, "Coverage")
    assert coverage["subscriber"] == ref(insured) and coverage["relationship"]["coding"][0]["code"] == "spouse"
    assert coverage["subscriberId"] == "SHM-220981-01"  # IN1-49 wins over the policy number
    procedure = one(name, "Procedure")
    assert procedure["status"] == "completed"
    assert procedure["code"]["coding"][0] == {
        "code": "27130",
        "display": "Total hip arthroplasty",
        "system": "http://www.ama-assn.org/go/cpt",
    }
    assert procedure["performedDateTime"] == "2003-09-07"
    assert [p["function"]["coding"][0]["code"] for p in procedure["performer"]] == ["88189002", "304292004"]
    assert procedure["subject"] == ref(patient) and procedure["encounter"] == ref(one(name, "Encounter"))


def test_adt_a01_v25_rol_participants_and_primary_care() -> None:
    name = "adt_a01_v25_rol.hl7"
    patient, encounter = one(name, "Patient"), one(name, "Encounter")
    assert patient["generalPractitioner"] == [
        {"type": "Practitioner", "identifier": {"value": "P9001"}, "display": "Dr. Helen Whitcombe"}
    ]
    kinds = [p["type"][0]["coding"][0]["code"] for p in encounter["participant"]]
    assert kinds == ["ATND", "ATND", "CON"]  # PV1-7, ROL AT, ROL CP (table 0443 → ParticipationType)
    assert encounter["participant"][1]["period"]["start"] == "2011-03-02T08:00:00-08:00"
    assert encounter["type"][0]["coding"][0]["code"] == "U"


def test_adt_a01_v26_two_coverages_and_surgery() -> None:
    name = "adt_a01_v26_surgery.hl7"
    primary, secondary = resources(name, "Coverage")
    medicare, supplemental = resources(name, "Organization")
    assert (primary["order"], secondary["order"]) == (1, 2)
    assert primary["payor"] == [ref(medicare)] and secondary["payor"] == [ref(supplemental)]
    assert medicare["name"] == "Centers for Medicare and Medicaid Services"
    procedure = one(name, "Procedure")
    assert procedure["identifier"] == [{"value": "PRC-20150619-01", "system": "urn:id:RIVERVALE"}]
    assert procedure["category"]["coding"][0]["code"] == "P"
    assert procedure["reasonCode"][0]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10-cm"
    assert procedure["performedDateTime"] == "2015-06-19T09:15:00-07:00"
    appendicitis = one(name, "Condition")
    assert appendicitis["code"]["coding"][0]["code"] == "K35.80"
    assert appendicitis["category"][1]["coding"][0] == {  # DG1-6 A (table 0052 → diagnosis-role)
        "system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
        "code": "AD",
        "display": "Admission diagnosis",
    }


def test_adt_a01_v27_emergency_with_temperature() -> None:
    name = "adt_a01_v27_contacts.hl7"
    patient, encounter = one(name, "Patient"), one(name, "Encounter")
    assert encounter["class"]["code"] == "EMER" and encounter["status"] == "in-progress"
    assert {"value": "+1 (541) 5558800 ext. 12", "system": "phone", "use": "work"} in patient["telecom"]
    temperature = one(name, "Observation")
    assert temperature["valueQuantity"] == {"value": 38.9, "unit": "degree Celsius", "system": UCUM, "code": "Cel"}
    assert temperature["interpretation"][0]["coding"][0]["code"] == "H"
    assert temperature["effectiveDateTime"] == "2019-01-14T19:50:00-08:00"
    father = one(name, "RelatedPerson")
    assert father["gender"] == "male" and father["birthDate"] == "1961-08-18"
    assert father["relationship"][0]["coding"][0]["code"] == "FTH"


def test_adt_a01_v28_newborn() -> None:
    name = "adt_a01_v28_newborn.hl7"
    baby = one(name, "Patient")
    assert baby["birthDate"] == "2024-08-15" and baby["multipleBirthInteger"] == 1
    assert "multipleBirthBoolean" not in baby  # PID-24 only when PID-25 is empty
    assert "PID-24" not in run(name).unconsumed  # read: the birth order wins
    assert baby["extension"][0] == {
        "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
        "valueString": "Eze",
    }
    mother = one(name, "RelatedPerson")
    assert mother["relationship"][0]["coding"][0]["code"] == "MTH" and mother["patient"] == ref(baby)
    weight = one(name, "Observation")
    assert weight["valueQuantity"] == {"value": 2480, "unit": "gram", "system": UCUM, "code": "g"}
    assert one(name, "Encounter")["type"][0]["coding"][0]["code"] == "N"


def test_adt_a04_registrations() -> None:
    er = "adt_a04_v231_er.hl7"
    assert one(er, "Encounter")["class"]["code"] == "EMER"
    assert one(er, "Encounter")["identifier"][0]["value"] == "HC-ER-20020228-17"
    allergy = one(er, "AllergyIntolerance")
    assert allergy["category"] == ["medication"] and allergy["criticality"] == "high"
    assert allergy["reaction"][0]["manifestation"][0]["text"] == "Hives"
    assert [i["value"] for i in one(er, "Patient")["identifier"]] == ["HC55200", "HC-EXT-5520"]
    outpatient = "adt_a04_v25_outpt.hl7"
    assert one(outpatient, "Encounter")["class"]["code"] == "AMB"
    assert one(outpatient, "Patient")["telecom"] == [{"value": "+1 (603) 5550777", "system": "phone", "use": "mobile"}]
    assert one(outpatient, "Coverage")["subscriber"] == ref(one(outpatient, "Patient"))
    vitals = by_code("adt_a04_v26_vitals.hl7")
    assert vitals["8302-2"]["valueQuantity"]["value"] == 182
    assert vitals["29463-7"]["valueQuantity"] == {"value": 91.4, "unit": "kilogram", "system": UCUM, "code": "kg"}
    assert vitals["72166-2"]["valueCodeableConcept"]["coding"][0] == {
        "code": "8517006",
        "display": "Ex-smoker",
        "system": "http://snomed.info/sct",
    }
    assert vitals["72166-2"]["encounter"] == ref(one("adt_a04_v26_vitals.hl7", "Encounter"))


def test_adt_visit_events_update_one_encounter() -> None:
    admit, transfer, cancel_discharge = "adt_a01_v25_rol.hl7", "adt_a02_v251_transfer.hl7", "adt_a13_v25.hl7"
    ids = {one(n, "Encounter")["id"] for n in (admit, transfer, cancel_discharge)}
    assert len(ids) == 1
    assert [loc["status"] for loc in one(transfer, "Encounter")["location"]] == ["active", "completed"]
    assert one(transfer, "Encounter")["location"][0]["location"]["display"] == "RIVERVALE CCU 0101 1"
    assert one(cancel_discharge, "Encounter")["status"] == "in-progress"
    v23 = one("adt_a02_v23.hl7", "Encounter")
    assert v23["id"] == one("adt_a01_v23_ins_gt1.hl7", "Encounter")["id"]
    assert v23["location"][1] == {"location": {"display": "GREENFIELD 3W 314 A"}, "status": "completed"}


def test_adt_a03_discharges() -> None:
    name = "adt_a03_v231_proc.hl7"
    encounter = one(name, "Encounter")
    assert encounter["id"] == one("adt_a01_v23_ins_gt1.hl7", "Encounter")["id"]
    assert encounter["status"] == "finished" and encounter["period"]["end"] == "1999-05-18"
    procedure = one(name, "Procedure")
    assert procedure["code"]["coding"][0]["code"] == "96.04" and procedure["encounter"] == ref(encounter)
    assert procedure["performer"][0]["function"]["coding"][0]["display"] == "Surgeon"
    pneumonia = one(name, "Condition")
    assert pneumonia["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-9-cm"
    assert pneumonia["category"][1]["coding"][0] == {  # DG1-6 F: no diagnosis-role in the IG, kept
        "system": "http://terminology.hl7.org/CodeSystem/v2-0052",
        "code": "F",
        "display": "Final",
    }
    home = one("adt_a03_v26_home.hl7", "Encounter")
    assert home["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "06"
    assert home["period"] == {"start": "2015-06-19T06:00:00-07:00", "end": "2015-06-23T10:30:00-07:00"}
    assert home["id"] == one("adt_a01_v26_surgery.hl7", "Encounter")["id"]


def test_adt_a05_preadmissions() -> None:
    name = "adt_a05_v24_preadmit.hl7"
    encounter = one(name, "Encounter")
    assert encounter["status"] == "planned" and encounter["class"]["code"] == "PRENC"
    assert encounter["location"][0]["status"] == "planned"
    assert encounter["hospitalization"]["preAdmissionIdentifier"]["value"] == "PRE-4471"
    assert encounter["reasonCode"][0]["coding"][0]["code"] == "M17.11"
    assert one(name, "Coverage")["payor"] == [ref(one(name, "Organization"))]
    assert one(name, "Patient")["maritalStatus"]["coding"][0]["code"] == "W"
    self_guarantor = "adt_a05_v27.hl7"
    assert one(self_guarantor, "Encounter")["class"]["code"] == "AMB"
    assert one(self_guarantor, "Encounter")["status"] == "planned"
    assert not resources(self_guarantor, "RelatedPerson")  # GT1-11 SEL: the patient, not a RelatedPerson


def test_adt_a11_cancels_the_visit() -> None:
    v25, v23 = one("adt_a11_v25.hl7", "Encounter"), one("adt_a11_v23.hl7", "Encounter")
    assert v25["status"] == "cancelled" and v23["status"] == "cancelled"
    assert v25["id"] == one("adt_a04_v25_outpt.hl7", "Encounter")["id"]
    assert v23["id"] == one("adt_a04_v231_er.hl7", "Encounter")["id"]


def test_adt_person_events() -> None:
    a28, a31 = "adt_a28_v24_person.hl7", "adt_a31_v251_person.hl7"
    assert one(a28, "Patient")["id"] == one(a31, "Patient")["id"]
    assert one(a28, "Patient")["identifier"][0]["type"]["coding"][0]["code"] == "PI"
    assert one(a28, "Patient")["maritalStatus"]["coding"][0]["code"] == "D"
    assert one(a31, "Patient")["maritalStatus"]["coding"][0]["code"] == "M"
    assert one(a28, "RelatedPerson")["relationship"][0]["coding"][0]["code"] == "BRO"
    assert one(a28, "Coverage")["beneficiary"] == ref(one(a28, "Patient"))
    allergy = one(a31, "AllergyIntolerance")
    assert allergy["category"] == ["environment"] and allergy["criticality"] == "low"
    assert not resources(a28, "Encounter") and not resources(a31, "Encounter")


def test_adt_a40_merges() -> None:
    survivor, retired = resources("adt_a40_v24_merge.hl7", "Patient")
    assert survivor["id"] == one("adt_a28_v24_person.hl7", "Patient")["id"]
    assert retired["active"] is False and retired["identifier"][0]["value"] == "NS-339999"
    assert survivor["link"] == [{"type": "replaces", "other": ref(retired)}]
    survivor28, retired28 = resources("adt_a40_v28_merge.hl7", "Patient")
    assert survivor28["id"] == one("adt_a01_v27_contacts.hl7", "Patient")["id"]
    assert retired28["name"][0]["family"] == "Bergstrom" and retired28["name"][0]["given"] == ["Linea"]  # MRG-7


# -- orders ------------------------------------------------------------------------------------
def test_orm_pharmacy_order_v23() -> None:
    name = "orm_o01_v23_rxo.hl7"
    request, medication = one(name, "MedicationRequest"), one(name, "Medication")
    assert request["status"] == "active" and request["intent"] == "original-order"
    assert request["priority"] == "stat"  # ORC-7.6 S (TQ, v2.3)
    assert request["medicationReference"] == ref(medication)
    assert medication["code"]["coding"][0] == {
        "code": "197361",
        "display": "Amoxicillin 500 MG Oral Capsule",
        "system": RXNORM,
    }
    assert medication["form"]["coding"][0]["code"] == "C25158"
    dosage = request["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"] == {"unit": "milligram", "value": 500}
    assert dosage["route"]["coding"][0] == {
        "code": "PO",
        "display": "Oral",
        "system": "http://terminology.hl7.org/CodeSystem/v2-0162",
    }
    assert request["dispenseRequest"] == {
        "quantity": {"unit": "capsule", "system": UCUM, "code": "{cap}", "value": 30},
        "numberOfRepeatsAllowed": 0,
    }
    assert request["note"] == [{"text": "Take with food."}]
    assert request["authoredOn"] == "1999-05-13"
    assert not resources(name, "ServiceRequest")  # a pharmacy order is a MedicationRequest only


def test_orm_pharmacy_order_dose_range_substitution() -> None:
    request = one("orm_o01_v24_rxo_range.hl7", "MedicationRequest")
    dose = request["dosageInstruction"][0]["doseAndRate"][0]["doseRange"]
    assert (dose["low"]["value"], dose["high"]["value"], dose["low"]["code"]) == (1, 2, "{tbl}")
    assert request["substitution"]["allowedCodeableConcept"]["coding"][0]["code"] == "G"
    assert request["reasonCode"][0]["coding"][0]["code"] == "M25.551"
    assert {i["type"]["coding"][0]["code"]: i["value"] for i in request["identifier"]} == {
        "PLAC": "RX-88001",
        "FILL": "PH-31001",
    }


def test_orm_lab_and_radiology_orders() -> None:
    lab = one("orm_o01_v24_lab.hl7", "ServiceRequest")
    assert lab["status"] == "active" and lab["priority"] == "routine"
    assert lab["code"]["coding"][0]["code"] == "24331-1" and lab["note"] == [
        {"text": "Patient fasting since midnight."}
    ]
    assert one("orm_o01_v24_lab.hl7", "Coverage")["subscriber"] == ref(one("orm_o01_v24_lab.hl7", "Patient"))
    cancel = one("orm_o01_v231_cancel.hl7", "ServiceRequest")
    assert cancel["id"] == lab["id"] and cancel["status"] == "revoked"  # ORC-5 CA, table 0038
    rad = one("orm_o01_v25_rad.hl7", "ServiceRequest")
    assert rad["reasonCode"][0]["coding"][0]["code"] == "R05.9"
    assert {i["type"]["coding"][0]["code"] for i in rad["identifier"]} == {"PLAC", "FILL"}
    assert rad["requester"]["display"] == "Dr. Tomas Novak"
    assert rad["priority"] == "routine"  # OBR-27.6 (TQ), no ORC-7


def test_omp_pharmacy_orders_with_tq1() -> None:
    request = one("omp_o09_v25.hl7", "MedicationRequest")
    dosage = request["dosageInstruction"][0]
    assert dosage["timing"]["code"]["coding"][0]["code"] == "Q8H"
    assert dosage["timing"]["repeat"] == {
        "timeOfDay": ["06:00:00", "14:00:00", "22:00:00"],
        "boundsPeriod": {"start": "2012-09-08T14:00:00-07:00"},
    }
    assert dosage["doseAndRate"][0]["doseQuantity"] == {"unit": "milligram", "system": UCUM, "code": "mg", "value": 400}
    assert request["priority"] == "routine" and request["dispenseRequest"]["numberOfRepeatsAllowed"] == 1
    prn = one("omp_o09_v26_prn.hl7", "MedicationRequest")
    assert prn["priority"] == "asap" and prn["substitution"]["allowedCodeableConcept"]["coding"][0]["code"] == "N"
    assert prn["dosageInstruction"][0]["timing"]["repeat"] == {"count": 12}
    assert {"text": "as needed for itching"} in prn["dosageInstruction"][0]["additionalInstruction"]
    assert "encounter" not in prn


def test_rde_encoded_order_updates_the_placer_order() -> None:
    placed, encoded = one("omp_o09_v25.hl7", "MedicationRequest"), one("rde_o11_v25.hl7", "MedicationRequest")
    assert placed["id"] == encoded["id"]  # same placer order number RX-91001
    assert one("omp_o09_v25.hl7", "Medication")["id"] == one("rde_o11_v25.hl7", "Medication")["id"]
    assert encoded["intent"] == "order" and encoded["status"] == "active"  # ORC-5 IP
    assert {"value": "RX-2012-0908-77"} in encoded["identifier"]  # RXE-15 prescription number
    dosage = encoded["dosageInstruction"][0]
    assert dosage["maxDosePerPeriod"] == {
        "numerator": {"unit": "milligram", "system": UCUM, "code": "mg", "value": 1200},
        "denominator": {"value": 1, "unit": "day", "system": UCUM, "code": "d"},
    }
    assert dosage["timing"]["repeat"]["boundsPeriod"] == {
        "start": "2012-09-08T14:00:00-07:00",
        "end": "2012-09-15T14:00:00-07:00",
    }
    assert (
        one("rde_o11_v23_timing.hl7", "MedicationRequest")["id"]
        == one("orm_o01_v23_rxo.hl7", "MedicationRequest")["id"]
    )


def test_rde_v23_timing_in_rxe1() -> None:
    request = one("rde_o11_v23_timing.hl7", "MedicationRequest")
    timing = request["dosageInstruction"][0]["timing"]
    assert timing == {"code": {"text": "Q8H"}, "repeat": {"boundsPeriod": {"start": "1999-05-13", "end": "1999-05-20"}}}
    assert request["priority"] == "routine"  # RXE-1.6
    assert request["dispenseRequest"]["quantity"]["value"] == 21


def test_rde_iv_rate_and_two_orders() -> None:
    iv = one("rde_o11_v24_iv.hl7", "MedicationRequest")
    rate = iv["dosageInstruction"][0]["doseAndRate"][0]["rateQuantity"]
    assert rate == {"unit": "milliliter per hour", "system": UCUM, "code": "mL/h", "value": 125}
    assert iv["dosageInstruction"][0]["site"]["coding"][0]["code"] == "LA" and iv["priority"] == "stat"
    first, second = resources("rde_o11_v26_two_orders.hl7", "MedicationRequest")
    drugs = resources("rde_o11_v26_two_orders.hl7", "Medication")
    assert [r["medicationReference"] for r in (first, second)] == [ref(d) for d in drugs]
    assert [r["dosageInstruction"][0]["timing"]["code"]["coding"][0]["code"] for r in (first, second)] == ["QD", "QHS"]
    assert first["dispenseRequest"]["numberOfRepeatsAllowed"] == 3
    refill = one("rde_o25_v251_refill.hl7", "MedicationRequest")
    assert refill["id"] == first["id"] and refill["status"] == "active"  # ORC-1 RF
    assert refill["dispenseRequest"]["numberOfRepeatsAllowed"] == 2


def test_oml_lab_orders() -> None:
    urine = "oml_o21_v25_urine.hl7"
    order, specimen = one(urine, "ServiceRequest"), one(urine, "Specimen")
    assert order["priority"] == "asap" and order["specimen"] == [ref(specimen)]
    assert specimen["collection"]["quantity"] == {"unit": "milliliter", "system": UCUM, "code": "mL", "value": 30}
    assert specimen["collection"]["method"]["coding"][0]["code"] == "CLEANCATCH"
    v26 = "oml_o21_v26.hl7"
    assert one(v26, "ServiceRequest")["supportingInfo"] == [ref(one(v26, "Observation"))]
    assert one(v26, "Observation")["valueCodeableConcept"]["coding"][0]["code"] == "N"
    assert one(v26, "ServiceRequest")["note"] == [{"text": "Diabetes follow-up."}]


def test_oml_first_order_and_coverage() -> None:
    name = "oml_o21_v251_two_orders.hl7"
    order = resources(name, "ServiceRequest")[0]
    assert order["priority"] == "stat" and order["occurrenceDateTime"] == "2025-04-10T08:00:00-04:00"
    assert one(name, "Coverage")["payor"] == [ref(one(name, "Organization"))]


def test_oml_second_order_is_its_own_order_not_a_prior_result() -> None:
    # OML_O21 allows an ORC inside the first order's PRIOR_RESULT/ORDER_PRIOR; a second order
    # must still become its own ServiceRequest, with its own priority and specimen.
    orders = resources("oml_o21_v251_two_orders.hl7", "ServiceRequest")
    assert [o["identifier"][0]["value"] for o in orders] == ["PL-7701", "PL-7702"]
    assert [o["priority"] for o in orders] == ["stat", "routine"]


# -- results -----------------------------------------------------------------------------------
def test_oru_specimen_and_specimen_observations() -> None:
    name = "oru_r01_v25_specimen.hl7"
    specimen, report, order = one(name, "Specimen"), one(name, "DiagnosticReport"), one(name, "ServiceRequest")
    assert specimen["id"] == one("oml_o21_v25_urine.hl7", "Specimen")["id"]  # placer specimen id SP-66110
    assert order["id"] == one("oml_o21_v25_urine.hl7", "ServiceRequest")["id"]
    assert specimen["accessionIdentifier"] == {"value": "CL-U-9001", "system": "urn:id:CITYLAB"}
    assert specimen["status"] == "available" and specimen["receivedTime"] == "2010-05-01T11:30:00-07:00"
    assert report["specimen"] == [ref(specimen)] and order["specimen"] == [ref(specimen)]
    results = {o["code"]["coding"][0]["code"]: o for o in resources(name, "Observation")}
    assert report["result"] == [ref(results[c]) for c in ("5811-5", "5804-0", "2756-5")]
    assert all(results[c]["specimen"] == ref(specimen) for c in ("5811-5", "5804-0", "2756-5", "33882-2"))
    assert "basedOn" not in results["33882-2"]  # an observation about the specimen, not a result
    assert results["5811-5"]["valueQuantity"] == {"value": 1.021}
    assert results["2756-5"]["valueQuantity"]["code"] == "[pH]"
    assert results["5804-0"]["valueCodeableConcept"]["coding"][0]["code"] == "260385009"


def test_oru_microbiology() -> None:
    name = "oru_r01_v251_micro.hl7"
    report = one(name, "DiagnosticReport")
    assert report["category"][0]["coding"][0] == {
        "code": "MB",
        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
    }
    obs = by_code(name)
    assert obs["630-4"]["valueCodeableConcept"]["coding"][0]["display"] == "Escherichia coli"
    assert obs["630-4"]["interpretation"][0]["coding"][0]["code"] == "A"
    assert obs["19090-0"]["valueQuantity"] == {
        "value": 100000,
        "comparator": ">",
        "unit": "colony forming units per mL",
        "system": UCUM,
        "code": "{CFU}/mL",
    }
    assert obs["18864-9"]["valueString"] == "R" and obs["18864-9"]["interpretation"][0]["coding"][0]["code"] == "R"
    assert obs["18906-8"]["note"] == [{"text": "Susceptibility by disk diffusion."}]
    assert len({o["id"] for o in obs.values()}) == 4


def test_oru_v26_timing_and_v27_participations() -> None:
    v26 = "oru_r01_v26_tq1.hl7"
    assert one(v26, "ServiceRequest")["priority"] == "routine"
    hba1c = one(v26, "Observation")
    assert hba1c["valueQuantity"] == {"value": 6.9, "unit": "percent", "system": UCUM, "code": "%"}
    assert hba1c["encounter"] == ref(one(v26, "Encounter"))
    v27 = "oru_r01_v27_prt.hl7"
    assert one(v27, "ServiceRequest")["requester"]["display"] == "Dr. Deniz Yilmaz"  # PRT OP
    assert one(v27, "DiagnosticReport")["resultsInterpreter"][0]["identifier"] == {"value": "L3001"}  # PRT PRI
    tsh = one(v27, "Observation")
    assert tsh["performer"] == [{"type": "Practitioner", "identifier": {"value": "T0042"}, "display": "Simran Kaur"}]
    assert tsh["valueQuantity"]["code"] == "m[IU]/L"


def test_oru_v28_filler_only_specimen() -> None:
    name = "oru_r01_v28.hl7"
    specimen = one(name, "Specimen")
    assert specimen["accessionIdentifier"] == {"value": "CL-S-90120", "system": "urn:id:CITYLAB"}
    assert one(name, "Observation")["specimen"] == ref(specimen)
    assert one(name, "Observation")["referenceRange"] == [{"text": "<200"}]


def test_oru_v24_chemistry_panel_units_without_system() -> None:
    name = "oru_r01_v24_chem.hl7"
    obs = by_code(name)
    assert len(obs) == 10
    assert obs["2345-7"]["valueQuantity"] == {"value": 104, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
    assert obs["2951-2"]["valueQuantity"] == {"value": 139, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}
    assert obs["2345-7"]["interpretation"][0]["coding"][0]["code"] == "H"
    report = one(name, "DiagnosticReport")
    assert report["effectiveDateTime"] == "2006-09-12" and "issued" not in report  # no offset: instant left out
    assert len(report["result"]) == 10
    # ORC-1/2/3 are read although ORC-5 and OBR-2/3 take precedence (IG ORC[ServiceRequest])
    assert not {"ORC-1", "ORC-2", "ORC-3"} & set(run(name).unconsumed)


def test_oru_v23_radiology_text() -> None:
    findings, impression = resources("oru_r01_v23_rad.hl7", "Observation")
    assert findings["valueString"] == "FINDINGS: Lungs are clear. No effusion.\nHeart size normal."
    assert impression["valueString"] == "No acute cardiopulmonary process."
    report = one("oru_r01_v23_rad.hl7", "DiagnosticReport")
    assert report["resultsInterpreter"] == [{"display": "R7001"}]
    assert one("oru_r01_v23_rad.hl7", "ServiceRequest")["id"] == one("orm_o01_v25_rad.hl7", "ServiceRequest")["id"]


def test_oru_correction_updates_the_preliminary_observation() -> None:
    prelim, corrected = "oru_r01_v231_prelim.hl7", "oru_r01_v231_corrected.hl7"
    assert [o["id"] for o in resources(prelim, "Observation")] == [o["id"] for o in resources(corrected, "Observation")]
    inr_before, inr_after = by_code(prelim)["6301-6"], by_code(corrected)["6301-6"]
    assert inr_before["status"] == "preliminary" and inr_before["valueQuantity"]["value"] == 2.8
    assert inr_after["status"] == "corrected" and inr_after["valueQuantity"]["value"] == 3.4
    assert inr_after["valueQuantity"]["code"] == "{INR}"
    assert one(prelim, "DiagnosticReport")["status"] == "preliminary"
    assert one(corrected, "DiagnosticReport")["status"] == "corrected"
    assert one(prelim, "DiagnosticReport")["id"] == one(corrected, "DiagnosticReport")["id"]


def test_oru_unmapped_interpretation_passes_through() -> None:
    ferritin, hemoglobin = resources("oru_r01_v25_unmapped_interp.hl7", "Observation")
    assert ferritin["interpretation"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "code": "LX",
    }
    assert hemoglobin["interpretation"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0078",
        "code": "PANIC",
    }


def test_oru_units_and_date_values() -> None:
    obs = by_code("oru_r01_v251_units.hl7")
    assert obs["33914-3"]["valueQuantity"]["code"] == "mL/min/{1.73_m2}"
    assert obs["33914-3"]["interpretation"][0]["coding"][0]["code"] == "L"
    assert obs["2160-0"]["valueQuantity"] == {"value": 1.3, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
    assert obs["21112-8"]["valueDateTime"] == "1945-01-03"


def test_oul_specimen_centred_results() -> None:
    name = "oul_r22_v251.hl7"
    specimen, report, order = one(name, "Specimen"), one(name, "DiagnosticReport"), one(name, "ServiceRequest")
    assert specimen["id"] == resources("oml_o21_v251_two_orders.hl7", "Specimen")[1]["id"]  # placer id SP-7702
    assert specimen["receivedTime"] == "2025-04-10T08:30:00-04:00"
    condition = next(o for o in resources(name, "Observation") if o["code"]["coding"][0]["code"] == "35604-8")
    assert condition["specimen"] == ref(specimen) and "basedOn" not in condition
    results = [o for o in resources(name, "Observation") if o is not condition]
    assert report["result"] == [ref(o) for o in results] and report["specimen"] == [ref(specimen)]
    assert all(o["basedOn"] == [ref(order)] and o["specimen"] == ref(specimen) for o in results)
    assert order["specimen"] == [ref(specimen)] and order["status"] == "completed"
    assert report["status"] == "final" and report["issued"] == "2025-04-11T14:55:00-04:00"
    assert one(name, "Encounter")["identifier"][0]["value"] == "SR-OP-88001"


def test_oul_two_specimens_keep_their_results_apart() -> None:
    name = "oul_r22_v26_two_specimens.hl7"
    serum, urine = resources(name, "Specimen")
    first, second = resources(name, "DiagnosticReport")
    assert first["specimen"] == [ref(serum)] and second["specimen"] == [ref(urine)]
    glucose_serum, glucose_urine = resources(name, "Observation")
    assert glucose_serum["specimen"] == ref(serum) and glucose_urine["specimen"] == ref(urine)
    assert first["result"] == [ref(glucose_serum)] and second["result"] == [ref(glucose_urine)]
    assert glucose_urine["valueQuantity"]["value"] == 0


def test_oul_preliminary_with_condition_and_note() -> None:
    name = "oul_r22_v25_prelim.hl7"
    assert one(name, "Specimen")["condition"][0]["coding"][0]["code"] == "HEM"
    potassium = one(name, "Observation")
    assert potassium["status"] == "preliminary" and potassium["interpretation"][0]["coding"][0]["code"] == "H"
    assert potassium["note"] == [{"text": "Hemolysed sample; result may be falsely elevated."}]
    assert one(name, "DiagnosticReport")["status"] == "preliminary"


# -- vaccination, scheduling, documents -------------------------------------------------------------
def test_vxu_two_doses() -> None:
    name = "vxu_v04_v251_two_doses.hl7"
    mmr, varicella = resources(name, "Immunization")
    assert mmr["vaccineCode"]["coding"][0] == {"code": "03", "display": "MMR", "system": "http://hl7.org/fhir/sid/cvx"}
    assert mmr["doseQuantity"] == {"value": 0.5, "unit": "milliliters", "system": UCUM, "code": "mL"}
    assert mmr["site"]["coding"][0]["code"] == "LA" and varicella["site"]["coding"][0]["code"] == "RA"
    assert mmr["manufacturer"]["display"] == "Merck and Co., Inc." and mmr["expirationDate"] == "2024-11-30"
    assert mmr["primarySource"] is True and mmr["performer"][0]["actor"]["display"] == "Lucia Ortega"
    assert mmr["identifier"][0]["value"] == "CC-IZ-7001" and varicella["identifier"][0]["value"] == "CC-IZ-7002"
    eligibility = one(name, "Observation")
    assert eligibility["partOf"] == [ref(mmr)] and eligibility["valueCodeableConcept"]["coding"][0]["code"] == "V02"
    assert one(name, "Patient")["contact"][0]["relationship"][0]["coding"][0]["code"] == "MTH"
    assert not {"RXA-1", "RXA-2"} & set(run(name).unconsumed)  # sub-id counters, not data


def test_vxu_v24_and_refusal() -> None:
    dtap = one("vxu_v04_v24.hl7", "Immunization")
    assert dtap["occurrenceDateTime"] == "2007-05-14" and dtap["status"] == "completed"
    assert dtap["doseQuantity"] == {"value": 0.5, "unit": "milliliters"}  # ISO+ units are not UCUM
    refusal = one("vxu_v04_v25_refusal.hl7", "Immunization")
    assert refusal["status"] == "not-done" and "doseQuantity" not in refusal  # 999 = unknown amount
    assert refusal["statusReason"]["coding"][0]["code"] == "00"


def test_siu_appointment_lifecycle() -> None:
    booked, moved, cancelled = "siu_s12_v24.hl7", "siu_s13_v251_reschedule.hl7", "siu_s15_v23_cancel.hl7"
    ids = {one(n, "Appointment")["id"] for n in (booked, moved, cancelled)}
    assert len(ids) == 1
    first = one(booked, "Appointment")
    assert (first["start"], first["end"], first["minutesDuration"]) == (
        "2005-08-15T10:00:00-04:00",
        "2005-08-15T10:20:00-04:00",
        20,
    )
    assert first["serviceType"][0]["coding"][0]["code"] == "99213"
    assert [p["status"] for p in first["participant"]] == ["accepted"] * 3
    assert "RGS" not in run(booked).unconsumed  # a grouping segment (set id, action code), not data
    assert one(moved, "Appointment")["start"] == "2005-08-22T14:00:00-04:00"
    assert one(cancelled, "Appointment")["status"] == "cancelled"
    modified = one("siu_s14_v26.hl7", "Appointment")
    assert modified["comment"] == "Patient requests interpreter (Spanish)." and modified["minutesDuration"] == 45
    assert modified["participant"][1]["actor"]["display"] == "Dr. Claire Moreau"
    mri = one("siu_s12_v27_tq1.hl7", "Appointment")
    assert (mri["start"], mri["end"]) == ("2022-01-18T08:00:00-08:00", "2022-01-18T09:00:00-08:00")  # TQ1-7/8


def test_mdm_documents() -> None:
    import base64

    consult = one("mdm_t02_v24.hl7", "DocumentReference")
    assert consult["type"]["coding"][0]["code"] == "CN" and consult["docStatus"] == "final"
    text = base64.b64decode(consult["content"][0]["attachment"]["data"]).decode()
    assert text == "Reason for consult: chronic cough.\nPlan: spirometry and review in 4 weeks."
    assert "date" not in consult  # TXA-4 without offset: an instant cannot keep only the date
    operative = one("mdm_t02_v26_addendum.hl7", "DocumentReference")
    assert operative["content"][0]["attachment"]["contentType"] == "text/plain"
    assert base64.b64decode(operative["content"][0]["attachment"]["data"]).startswith(b"Laparoscopic appendectomy")
    assert operative["context"]["encounter"] == [ref(one("adt_a01_v26_surgery.hl7", "Encounter"))]
    summary = one("mdm_t02_v23.hl7", "DocumentReference")
    assert summary["docStatus"] == "preliminary" and summary["status"] == "current"
    assert summary["author"][0]["display"] == "Irena Kowalczyk"


def test_a_real_prior_result_stays_a_prior_result() -> None:
    """A prior result announced by its own PID keeps its ORC/OBR inside PRIOR_RESULT."""
    from adapters.hl7v2.parser import parse
    from adapters.hl7v2.structure import group

    raw = (
        "MSH|^~\\&|CPOE|SUNRISE|HUB|HUB|20250410071000||OML^O21^OML_O21|P-1|P|2.5.1\r"
        "PID|1||MRN1^^^SUNRISE^MR||Doe^Jan\r"
        "ORC|NW|PL-1^CPOE\r"
        "OBR|1|PL-1^CPOE||2951-2^Sodium^LN\r"
        "PID|1||MRN1^^^SUNRISE^MR||Doe^Jan\r"
        "ORC|RE|PL-0^CPOE\r"
        "OBR|1|PL-0^CPOE||2951-2^Sodium^LN\r"
        "OBX|1|NM|2951-2^Sodium^LN||140|mmol/L\r"
        "ORC|NW|PL-2^CPOE\r"
        "OBR|1|PL-2^CPOE||57021-8^CBC^LN\r"
    )
    tree = group(parse(raw).segments, "OML_O21")
    orders = tree.groups("ORDER")
    assert len(orders) == 2  # PL-1 (with its prior result) and PL-2
    [request] = orders[0].groups("OBSERVATION_REQUEST")
    [prior] = request.groups("PRIOR_RESULT")
    assert [s.name for s in prior.walk()] == ["PID", "ORC", "OBR", "OBX"]
    assert [s.value(2) for s in orders[1].walk() if s.name == "ORC"] == ["PL-2"]


def test_a_missing_field_fails_naming_that_field_never_a_bare_fhir_path() -> None:
    """Blank each valued field of every corpus message, one at a time: the message still
    translates, or it fails with an error that names an HL7 field (what ERR-2 of the AE
    carries) - never with a FHIR validation error naming only a FHIR path. Maps guard the
    elements R4 requires with ``required`` rules (RXA-3 → Immunization.occurrence, RXE-2 /
    RXO-1 → the medication, OBX-5 → DocumentReference.content)."""
    tried = 0
    required: set[str] = set()
    for path in sorted(DATA.glob("*.hl7")):
        raw = path.read_bytes()
        segments = re.split(rb"\r\n|\r|\n", raw)
        try:
            translator().translate_raw(raw)
        except MappingError:
            continue  # the corpus's own negative cases
        for index, segment in enumerate(segments):
            if segment.removeprefix(b"\xef\xbb\xbf")[:3] in (b"MSH", b"FHS", b"BHS", b"BTS", b"FTS", b""):
                continue
            fields = segment.split(b"|")
            name = fields[0].decode("latin-1")
            for number in range(1, len(fields)):
                if not fields[number]:
                    continue
                blanked = [*fields[:number], b"", *fields[number + 1 :]]
                message = b"\r".join([*segments[:index], b"|".join(blanked), *segments[index + 1 :]])
                tried += 1
                try:
                    translator().translate_raw(message)
                except ValidationFailed as exc:
                    pytest.fail(f"{path.name}: blank {name}-{number} → FHIR-only error {exc}")
                except MappingError as exc:
                    where = parse_error_location(exc.location or "")  # what ERR-2 will say
                    assert where is not None and where[2] > 0, (path.name, name, number, exc.location)
                    if exc.code == "required":
                        required.add(f"{name}-{number}")
    assert tried > 2000
    assert {"RXA-3", "RXE-2", "RXO-1", "OBX-5"} <= required
