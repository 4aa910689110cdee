"""HL7 v2 → FHIR R4 translation: key facts of the bundles built from realistic messages.

Messages (fictional patients) are in tests/data/hl7v2; the maps under test are the shipped
ones (mappings/hl7v2, mappings/conceptmaps). Every resource is also checked with the full
R4 validator, since HAPI will check it too.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import mappings
from adapters.hl7v2 import Hl7v2Translator, format_explain, split_batch, translate_bytes
from adapters.hl7v2.ack import ack_for_error
from hub.errors import MappingError, UnsupportedMessage, ValidationFailed
from hub.fhir.validation import validate_resource
from hub.mapping.bundle import full_url
from hub.pipeline.translator import InboundMessage, Translation, Translator

DATA = Path(__file__).parent / "data" / "hl7v2"
SAMPLES = Path(__file__).parents[1] / "mappings" / "samples" / "hl7v2"
ID = re.compile(r"^m[0-9a-f]{30}$")
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@cache
def translator() -> Hl7v2Translator:
    return Hl7v2Translator()


def run(name: str) -> Translation:
    return translator().translate_raw((DATA / name).read_bytes())[0]


def resources(translation: Translation, kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in translation.bundle["entry"] if e["resource"]["resourceType"] == kind]


def one(translation: Translation, kind: str) -> dict[str, Any]:
    (found,) = resources(translation, kind)
    return found


def ref(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def all_messages() -> list[tuple[str, bytes]]:
    out = []
    for path in sorted(DATA.glob("*.hl7")) + sorted(SAMPLES.glob("*.hl7")):
        raw = path.read_bytes()
        parts = split_batch(raw) if path.name.startswith("batch") else [raw]
        out += [(f"{path.name}#{i}", part) for i, part in enumerate(parts)]
    return out


@pytest.mark.parametrize(("name", "raw"), all_messages(), ids=[n for n, _ in all_messages()])
def test_every_message_is_a_valid_idempotent_transaction(name: str, raw: bytes) -> None:
    received = datetime(2025, 4, 3, 12, 0, tzinfo=UTC)  # Provenance.recorded when MSH-7 has no UTC offset
    translation, _ = translator().translate_raw(raw, received_at=received)
    bundle = translation.bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    entries = bundle["entry"]
    refs = [ref(e["resource"]) for e in entries]
    assert len(refs) == len(set(refs)), "one entry per resource"
    provenance = entries[-1]["resource"]
    assert provenance["resourceType"] == "Provenance"
    registration = provenance["activity"]["coding"][0]["display"].startswith("ADT^")
    for entry in entries:
        resource = entry["resource"]
        if not registration and resource["resourceType"] in ("Patient", "Encounter"):  # write: if_absent
            assert entry["request"] == {
                "method": "POST",
                "url": resource["resourceType"],
                "ifNoneExist": f"_id={resource['id']}",
            }
        else:
            assert entry["request"] == {"method": "PUT", "url": ref(resource)}
        assert entry["fullUrl"] == full_url(resource["resourceType"], resource["id"])
        assert ID.match(resource["id"])
        validate_resource(resource)  # full R4 structure validation
    assert [t["reference"] for t in provenance["target"]] == refs[:-1]
    again, _ = translator().translate_raw(raw, received_at=received)
    assert again.bundle == bundle, "deterministic: a replay yields the same bundle"


def test_registration_replaces_patient_and_encounter_other_messages_write_them_only_if_absent() -> None:
    """ADT owns demographics and visits: its Patient and Encounter are PUT (replace); an ORU's are
    conditional creates by id (mapping files' ``write: if_absent``), still under the deterministic
    id the other entries reference."""
    adt = translator().translate_raw((SAMPLES / "adt_a01.hl7").read_bytes())[0].bundle
    oru = translator().translate_raw((SAMPLES / "oru_r01.hl7").read_bytes())[0].bundle
    requests = {(e["resource"]["resourceType"], e["request"]["method"]) for e in adt["entry"]}
    assert ("Patient", "PUT") in requests and ("Encounter", "PUT") in requests
    assert {method for _, method in requests} == {"PUT"}
    by_type = {e["resource"]["resourceType"]: e for e in oru["entry"]}
    for kind in ("Patient", "Encounter"):
        entry = by_type[kind]
        resource_id = entry["resource"]["id"]
        assert ID.match(resource_id)
        assert entry["request"] == {"method": "POST", "url": kind, "ifNoneExist": f"_id={resource_id}"}
        assert entry["fullUrl"] == full_url(kind, resource_id)
    patient_ref = f"Patient/{by_type['Patient']['resource']['id']}"
    assert by_type["Encounter"]["resource"]["subject"] == {"reference": patient_ref}
    observations = [e for e in oru["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert observations and all(e["resource"]["subject"] == {"reference": patient_ref} for e in observations)
    others = [e for e in oru["entry"] if e["resource"]["resourceType"] not in ("Patient", "Encounter")]
    assert others and all(e["request"] == {"method": "PUT", "url": ref(e["resource"])} for e in others)


def test_translator_protocol_and_inbox_provenance() -> None:
    tr = translator()
    assert isinstance(tr, Translator)
    assert tr.channel == "hl7v2"
    inbound = InboundMessage(
        inbox_id=4711,
        channel="hl7v2",
        source="mllp:127.0.0.1",
        payload=(DATA / "adt_a01_v251.hl7").read_bytes(),
        received_at=datetime(2025, 4, 2, 22, 30, tzinfo=UTC),
    )
    translation = tr.translate(inbound)
    provenance = one(translation, "Provenance")
    whats = [e["what"]["identifier"] for e in provenance["entity"]]
    assert {"system": "urn:meoring:inbox", "value": "4711"} in whats
    assert any(w["value"] == "SR-A01-0001" for w in whats)
    assert provenance["recorded"] == "2025-04-02T22:30:00-04:00"  # EVN-2
    assert provenance["activity"]["coding"][0]["code"] == "A01"
    assert provenance["agent"][0]["who"]["identifier"]["value"].startswith("SUNRISE")


def test_adt_a01_facts() -> None:
    t = run("adt_a01_v251.hl7")
    patient = one(t, "Patient")
    assert patient["gender"] == "female"  # table 0001 via ConceptMap
    assert patient["birthDate"] == "1985-02-23"
    mrn = patient["identifier"][0]
    assert mrn["value"] == "SR4455667" and mrn["system"] == "urn:id:SUNRISE"
    assert mrn["type"]["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
    assert patient["name"][0] == {
        "family": "Testwoman",
        "given": ["Alma", "Louise"],
        "prefix": ["Ms."],
        "use": "official",
    }
    assert patient["telecom"] == [{"value": "+1 (617) 5550147", "system": "phone", "use": "home"}]
    assert patient["maritalStatus"]["coding"][0]["code"] == "S"
    assert patient["contact"][0]["relationship"][0]["coding"][0]["code"] == "BRO"
    encounter = one(t, "Encounter")
    assert encounter["status"] == "in-progress"
    assert encounter["class"]["code"] == "IMP"
    assert encounter["subject"] == {"reference": ref(patient)}
    assert encounter["identifier"][0]["value"] == "V7788990"
    assert encounter["period"]["start"] == "2025-04-02T22:15:00-04:00"
    assert encounter["participant"][0]["type"][0]["coding"][0]["code"] == "ATND"
    assert encounter["participant"][0]["individual"]["display"] == "Dr. Ruth Brennan"
    assert encounter["type"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0007",
        "code": "E",
        "display": "Emergency",
    }
    heart, complaint = resources(t, "Observation")
    assert heart["valueQuantity"] == {"value": 92, "unit": "beats per minute", "system": UCUM, "code": "/min"}
    assert heart["encounter"] == {"reference": ref(encounter)}
    assert complaint["valueString"] == "Chest tightness since evening"
    food, drug = resources(t, "AllergyIntolerance")
    assert food["category"] == ["food"] and "criticality" not in food  # MO is unmapped in table 0128
    assert drug["criticality"] == "high" and drug["patient"] == {"reference": ref(patient)}
    condition = one(t, "Condition")
    assert condition["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10"
    assert "ZPI" in t.unconsumed
    assert any("table-hl70128" in w for w in t.warnings)


def test_adt_event_sequence_updates_the_same_resources() -> None:
    a01, a08, a02, a03, a13, a11 = (
        run(n)
        for n in (
            "adt_a01_v251.hl7",
            "adt_a08_v251.hl7",
            "adt_a02_v24.hl7",
            "adt_a03_v251.hl7",
            "adt_a13_v251.hl7",
            "adt_a11_v231.hl7",
        )
    )
    patient_ids = {one(t, "Patient")["id"] for t in (a01, a08, a02, a03, a13, a11)}
    encounter_ids = {one(t, "Encounter")["id"] for t in (a01, a08, a02, a03, a13, a11)}
    assert len(patient_ids) == 1 and len(encounter_ids) == 1
    assert one(a08, "Patient")["address"][0]["line"] == ["Pier Road 19"]
    assert one(a08, "Encounter")["location"][0]["location"]["display"] == "SUNRISE ICU 06 B"
    locations = one(a02, "Encounter")["location"]
    assert [loc["status"] for loc in locations] == ["active", "completed"]
    discharged = one(a03, "Encounter")
    assert discharged["status"] == "finished"
    assert discharged["period"]["end"] == "2025-04-06T11:30:00-04:00"
    assert discharged["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "01"
    assert one(a13, "Encounter")["status"] == "in-progress"
    assert one(a11, "Encounter")["status"] == "cancelled"
    assert one(run("adt_a05_v25.hl7"), "Encounter")["status"] == "planned"


def test_oru_shares_patient_and_encounter_ids_with_adt() -> None:
    adt, oru = run("adt_a01_v251.hl7"), run("oru_r01_v251_cbc.hl7")
    assert one(adt, "Patient")["id"] == one(oru, "Patient")["id"]  # MRN with assigning authority: global
    assert one(adt, "Encounter")["id"] == one(oru, "Encounter")["id"]


def test_oru_r01_cbc() -> None:
    t = run("oru_r01_v251_cbc.hl7")
    order, report = one(t, "ServiceRequest"), one(t, "DiagnosticReport")
    observations = resources(t, "Observation")
    assert len(observations) == 5
    assert report["result"] == [{"reference": ref(o)} for o in observations]
    assert report["basedOn"] == [{"reference": ref(order)}]
    assert report["status"] == "final"
    assert report["code"]["coding"][0] == {
        "code": "58410-2",
        "display": "CBC panel - Blood by Automated count",
        "system": LOINC,
    }
    assert report["issued"] == "2025-04-03T07:10:00-04:00"
    types = {i["type"]["coding"][0]["code"]: i["value"] for i in order["identifier"]}
    assert types == {"PLAC": "PL-5501", "FILL": "FL-99001"}
    assert order["status"] == "completed" and order["intent"] == "order"
    assert order["note"] == [{"text": "Sample drawn from central line."}]
    hemoglobin = observations[2]
    assert hemoglobin["valueQuantity"] == {"value": 11.2, "unit": "g/dL", "system": UCUM, "code": "g/dL"}
    assert hemoglobin["interpretation"][0]["coding"][0]["code"] == "L"
    assert hemoglobin["referenceRange"] == [{"text": "12.0-15.5"}]
    assert hemoglobin["status"] == "final"
    assert hemoglobin["basedOn"] == [{"reference": ref(order)}]
    assert observations[0]["valueQuantity"]["code"] == "10*3/uL"


def test_corrected_result_updates_the_same_observation() -> None:
    first, corrected = run("oru_r01_v251_cbc.hl7"), run("oru_r01_v251_cbc_corrected.hl7")
    old, new = resources(first, "Observation")[2], resources(corrected, "Observation")[2]
    assert old["id"] == new["id"]
    assert new["status"] == "corrected" and new["valueQuantity"]["value"] == 11.8
    assert one(first, "DiagnosticReport")["id"] == one(corrected, "DiagnosticReport")["id"]
    assert one(corrected, "DiagnosticReport")["status"] == "corrected"
    assert [o["id"] for o in resources(first, "Observation")] == [o["id"] for o in resources(corrected, "Observation")]
    assert one(first, "Provenance")["id"] != one(corrected, "Provenance")["id"]  # one per message


def test_oru_v23_value_types_and_tolerance() -> None:
    t = run("oru_r01_v23_lf.hl7")
    cholesterol, comment, appearance, meal, text = resources(t, "Observation")
    assert cholesterol["valueQuantity"] == {"value": 212, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
    assert cholesterol["interpretation"][0]["coding"][0]["code"] == "H"
    assert comment["valueString"] == "Low HDL, see interpretation"
    assert appearance["valueCodeableConcept"]["coding"][0] == {
        "code": "LIPEMIC",
        "display": "Lipemic",
        "system": "urn:id:L",
    }
    assert meal["valueDateTime"] == "2010-09-10"
    assert text["valueString"] == "Line one\nLine two"
    assert one(t, "DiagnosticReport")["effectiveDateTime"] == "2010-09-11"  # no UTC offset: date kept
    assert any("time without UTC offset" in w for w in t.warnings)
    assert "SPM" in t.unconsumed  # not defined in v2.3, kept and reported
    identifiers = one(t, "Patient")["identifier"]
    assert [i["value"] for i in identifiers] == ["CL4411", "EXT-4411"]


def test_default_timezone_gives_local_times_an_offset(tmp_path: Path) -> None:
    tr = Hl7v2Translator(default_timezone="America/Denver")
    t, _ = tr.translate_raw((DATA / "oru_r01_v23_lf.hl7").read_bytes())
    assert one(t, "DiagnosticReport")["effectiveDateTime"] == "2010-09-11T07:00:00-06:00"


def test_encapsulated_pdf_becomes_presented_form() -> None:
    t = run("oru_r01_ed_pdf.hl7")
    report = one(t, "DiagnosticReport")
    (form,) = report["presentedForm"]
    assert form["contentType"] == "application/pdf"
    assert base64.b64decode(form["data"]).startswith(b"%PDF-1.4")
    (comment,) = resources(t, "Observation")  # the ED OBX is not an Observation
    assert report["result"] == [{"reference": ref(comment)}]


def test_structured_numeric_and_other_value_types() -> None:
    t = run("oru_r01_multi_order.hl7")
    obs = {o["code"]["coding"][0]["code"]: o for o in resources(t, "Observation")}
    assert obs["5792-7"]["valueQuantity"] == {
        "value": 15,
        "unit": "mg/dL",
        "system": UCUM,
        "code": "mg/dL",
        "comparator": "<",
    }
    assert obs["5767-9"]["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 40}}
    assert obs["2514-8"]["valueRange"]["low"]["value"] == 5 and obs["2514-8"]["valueRange"]["high"]["value"] == 15
    assert obs["5811-5"]["valueRange"] == {"low": {"value": 1.005}, "high": {"value": 1.03}}
    assert obs["8665-2"]["valueTime"] == "07:15:00"
    culture = obs["600-7"]
    assert culture["valueCodeableConcept"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert culture["status"] == "preliminary"
    assert culture["note"] == [{"text": "Preliminary identification; susceptibility to follow."}]
    assert obs["8251-1"]["valueString"] == "Called to ward | read back\nNurse: ^ok^ & \\ Hello"


def test_observations_stay_in_their_order_group() -> None:
    t = run("oru_r01_multi_order.hl7")
    first, second = resources(t, "DiagnosticReport")
    assert len(first["result"]) == 5 and len(second["result"]) == 2
    assert not {r["reference"] for r in first["result"]} & {r["reference"] for r in second["result"]}
    assert first["status"] == "final" and second["status"] == "preliminary"


def test_unmapped_codes_pass_through_and_are_reported() -> None:
    t = run("oru_r01_unmapped.hl7")
    glucose, potassium = resources(t, "Observation")
    assert glucose["interpretation"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0078",
        "code": "ZZ",
    }
    assert potassium["status"] == "unknown"  # R is deliberately unmapped in the IG; required element → default
    assert any("'ZZ' not in ConceptMap table-hl70078" in w and "passed through" in w for w in t.warnings)
    assert any("'R' not in ConceptMap table-hl70085" in w for w in t.warnings)


def test_character_sets_and_line_breaks() -> None:
    latin = run("oru_r01_latin1.hl7")
    assert one(latin, "Patient")["name"][0]["family"] == "Gonçalves"
    assert one(latin, "Observation")["valueString"] == "Hämolyse, Probe wiederholen"
    mixed = run("oru_r01_mixed_breaks.hl7")
    assert resources(mixed, "Observation")[0]["valueString"] == (
        "First line of a comment\nsecond line sent without escaping"
    )
    assert any("not a segment" in w for w in mixed.warnings)
    bom = run("adt_a01_v28_bom_crlf.hl7")
    assert one(bom, "Patient")["name"][0]["family"] == "Müller-Lüdenscheidt"
    lri = run("oru_r01_lri_5enc.hl7")
    assert one(lri, "Observation")["valueQuantity"]["value"] == 101


def test_merge_a40() -> None:
    t = run("adt_a40_v251.hl7")
    survivor, retired = resources(t, "Patient")
    assert survivor["link"] == [{"type": "replaces", "other": {"reference": ref(retired)}}]
    assert retired["active"] is False
    assert retired["link"] == [{"type": "replaced-by", "other": {"reference": ref(survivor)}}]
    assert retired["identifier"][0]["value"] == "SR9990001"
    assert retired["name"][0]["family"] == "Testwoman"
    # the retired record has the id its own earlier messages gave it
    earlier = (DATA / "adt_a08_v251.hl7").read_bytes().replace(b"SR4455667", b"SR9990001")
    assert one(translator().translate_raw(earlier)[0], "Patient")["id"] == retired["id"]
    assert one(run("adt_a01_v251.hl7"), "Patient")["id"] == survivor["id"]


def test_person_events_build_no_encounter() -> None:
    a28, a31 = run("adt_a28_v25.hl7"), run("adt_a31_v26.hl7")
    assert not resources(a28, "Encounter") and not resources(a31, "Encounter")
    assert "gender" not in one(a28, "Patient")
    assert any("'X' not in ConceptMap table-hl70001" in w for w in a28.warnings)
    assert one(a28, "Patient")["id"] == one(a31, "Patient")["id"]
    names = one(a31, "Patient")["name"]
    assert [n.get("use") for n in names] == ["official", "maiden"]
    assert one(a31, "Patient")["deceasedBoolean"] is False


def test_old_versions() -> None:
    a04 = run("adt_a04_v23_lf.hl7")
    patient = one(a04, "Patient")
    assert [(tp["value"], tp["use"]) for tp in patient["telecom"]] == [
        ("(307)555-0101", "home"),
        ("(307)555-0102", "work"),
    ]
    assert one(a04, "Encounter")["class"]["code"] == "AMB"
    assert one(a04, "Encounter")["period"]["start"] == "2008-11-03"
    v21 = run("adt_a01_v21.hl7")
    assert one(v21, "Patient")["identifier"] == [{"value": "M00123"}]
    assert one(v21, "Encounter")["identifier"][0]["value"] == "V0001"


def test_orm_o01() -> None:
    t = run("orm_o01_v231.hl7")
    order = one(t, "ServiceRequest")
    assert order["status"] == "active"  # ORC-1 NW, table 0119
    assert order["code"]["coding"][0]["code"] == "58410-2"
    assert order["requester"]["display"] == "Dr. Ruth Brennan"
    assert order["authoredOn"] == "2025-04-02T22:59:00-04:00"
    assert order["note"] == [{"text": "Draw with morning labs."}]
    assert order["subject"] == {"reference": ref(one(t, "Patient"))}
    assert order["priority"] == "routine"  # ORC-7.6 R
    # the order's DG1 is a Condition, the request's reason (IG ORM_O01: DG1 → reasonReference)
    chest_pain = one(t, "Condition")
    assert order["reasonReference"] == [{"reference": ref(chest_pain)}]
    assert chest_pain["code"]["coding"][0]["code"] == "R07.9"
    assert chest_pain["subject"] == order["subject"] and chest_pain["encounter"] == order["encounter"]
    assert "DG1" not in t.unconsumed
    # the placer number makes the ORM's ServiceRequest the ORU's
    assert order["id"] == one(run("oru_r01_v251_cbc.hl7"), "ServiceRequest")["id"]


def test_obr_priority_when_the_orc_has_none() -> None:
    """OBR-5 (v2.3/2.4 priority, table 0485 ConceptMap) gives the priority when ORC-7 does not."""
    raw = (DATA / "orm_o01_v231.hl7").read_bytes()
    raw = raw.replace(b"^^^20250403060000-0400^^R|", b"^^^20250403060000-0400|")
    raw = raw.replace(b"Automated count^LN|R|", b"Automated count^LN|S|")
    order = one(translator().translate_raw(raw)[0], "ServiceRequest")
    assert order["priority"] == "stat"


def test_oml_o21() -> None:
    t = run("oml_o21_v251.hl7")
    order, specimen, weight = one(t, "ServiceRequest"), one(t, "Specimen"), one(t, "Observation")
    assert order["specimen"] == [{"reference": ref(specimen)}]
    assert order["supportingInfo"] == [{"reference": ref(weight)}]
    assert order["occurrenceDateTime"] == "2025-04-03T06:00:00-04:00"
    assert specimen["type"]["coding"][0]["code"] == "119364003"
    assert specimen["collection"]["collectedDateTime"] == "2025-04-03T06:00:00-04:00"


def test_vxu_v04() -> None:
    t = run("vxu_v04_v251.hl7")
    hepb, mmr = resources(t, "Immunization")
    assert hepb["vaccineCode"]["coding"][0] == {
        "code": "08",
        "display": "Hep B, adolescent or pediatric",
        "system": "http://hl7.org/fhir/sid/cvx",
    }
    assert hepb["status"] == "completed" and hepb["primarySource"] is True
    assert hepb["doseQuantity"] == {"value": 0.5, "unit": "milliliters", "system": UCUM, "code": "mL"}
    assert hepb["lotNumber"] == "LOT-7781"
    assert hepb["manufacturer"]["display"] == "Merck and Co., Inc."
    assert hepb["performer"][0]["function"]["coding"][0]["code"] == "AP"
    assert hepb["route"]["coding"][0]["code"] == "C28161"
    assert hepb["identifier"][0]["value"] == "IZ-2025-0001"
    assert "doseQuantity" not in mmr and mmr["primarySource"] is False
    assert mmr["occurrenceDateTime"] == "2024-06-01"
    eligibility = one(t, "Observation")
    assert eligibility["partOf"] == [{"reference": ref(hepb)}]
    assert one(t, "Patient")["extension"][0]["valueString"] == "Parent"


def test_mdm_t02() -> None:
    t = run("mdm_t02_v25.hl7")
    document = one(t, "DocumentReference")
    assert document["status"] == "current" and document["docStatus"] == "final"
    assert document["type"]["coding"][0] == {
        "code": "DS",
        "system": "http://terminology.hl7.org/CodeSystem/v2-0270",
        "display": "Discharge summary",
    }
    assert document["masterIdentifier"]["value"] == "DOC-2025-0404-1"
    (content,) = document["content"]
    text = base64.b64decode(content["attachment"]["data"]).decode()
    assert text == "Patient admitted with chest pain.\nDischarged in stable condition & follow-up in 2 weeks."
    assert document["context"]["encounter"] == [{"reference": ref(one(t, "Encounter"))}]
    assert document["author"][0]["display"] == "Dr. Ruth Brennan"
    pdf = one(run("mdm_t02_ed.hl7"), "DocumentReference")
    assert [c["attachment"]["contentType"] for c in pdf["content"]] == ["application/pdf"]


def test_siu_s12_and_cancellation() -> None:
    booked, cancelled = run("siu_s12_v251.hl7"), run("siu_s15_v251.hl7")
    appointment = one(booked, "Appointment")
    assert appointment["id"] == one(cancelled, "Appointment")["id"]
    assert appointment["status"] == "booked" and one(cancelled, "Appointment")["status"] == "cancelled"
    assert appointment["start"] == "2025-04-15T10:00:00-04:00" and appointment["end"] == "2025-04-15T10:30:00-04:00"
    assert appointment["minutesDuration"] == 30
    assert appointment["comment"] == "Bring medication list."
    actors = [p["actor"] for p in appointment["participant"]]
    assert actors[0] == {"reference": ref(one(booked, "Patient"))}
    assert actors[1]["display"] == "Dr. Ruth Brennan"
    assert actors[2] == {"display": "SUNRISE CARDCLIN", "type": "Location"}
    assert appointment["serviceType"][0]["coding"][0]["system"] == "http://www.ama-assn.org/go/cpt"


# -- fields the bundled samples sent that the maps did not read (meoring translate --coverage) ---------------
def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def translate(raw: bytes) -> Translation:
    return translator().translate_raw(raw)[0]


@pytest.mark.parametrize(
    ("name", "left"),
    [
        ("adt_a01.hl7", []),
        ("adt_a03.hl7", []),
        ("adt_a08.hl7", []),
        ("oru_r01.hl7", ["NTE-2"]),  # NTE-2 source of comment: no target in the IG's NTE maps
        ("siu_s12.hl7", []),
        ("vxu_v04.hl7", ["PD1-11", "ORC-1"]),  # the IG maps neither (PD1[Patient], ORC[Immunization])
    ],
)
def test_sample_coverage(name: str, left: list[str]) -> None:
    """What --coverage still lists for the bundled samples: only fields the IG gives no target.
    Counters and markers (RXA-1/RXA-2, RGS) are not data and never listed."""
    assert translate(sample(name)).unconsumed == left


def test_oru_order_is_orc_and_obr_together() -> None:
    """ORC + OBR make one ServiceRequest (IG ORC/OBR[ServiceRequest]): ORC-5 wins over ORC-1,
    OBR-2/3 over ORC-2/3, ORC-12 over OBR-16 - and the id, from the order numbers, is the same
    whichever segment carries them."""
    raw = sample("oru_r01.hl7")
    order = one(translate(raw), "ServiceRequest")
    assert order["status"] == "completed" and order["intent"] == "order"  # ORC-5 CM (table 0038)
    assert {i["type"]["coding"][0]["code"]: (i["value"], i["system"]) for i in order["identifier"]} == {
        "PLAC": ("ORD7781", "urn:id:EPICORD"),
        "FILL": ("LAB99120", "urn:id:LABSYS"),
    }
    assert order["requester"] == {
        "type": "Practitioner",
        "identifier": {"value": "ATT123"},
        "display": "Dr. Chidi Okafor",
    }
    # numbers only in the ORC (IG: ORC-2/3 when OBR-2/3 are empty), no ORC-5: ORC-1 RE → active
    orc_only = raw.replace(b"|CM||||", b"|||||").replace(b"OBR|1|ORD7781^EPICORD|LAB99120^LABSYS|", b"OBR|1|||")
    from_orc = one(translate(orc_only), "ServiceRequest")
    assert from_orc["status"] == "active"
    assert [(i["type"]["coding"][0]["code"], i["value"]) for i in from_orc["identifier"]] == [
        ("PLAC", "ORD7781"),
        ("FILL", "LAB99120"),
    ]
    assert from_orc["id"] == order["id"]
    # no ORC-12: OBR-16 is the requester
    obr_requester = raw.replace(b"|||ATT123^Okafor^Chidi^^^Dr.\r", b"|||\r", 1).replace(
        b"||||||||ATT123^Okafor^Chidi^^^Dr.||", b"||||||||REF456^Lindqvist^Sara^^^Dr.||"
    )
    assert one(translate(obr_requester), "ServiceRequest")["requester"]["display"] == "Dr. Sara Lindqvist"


def test_provenance_operator_and_event_reason() -> None:
    """EVN-5 → Provenance.agent (enterer, who = the operator); EVN-4 → Provenance.reason through the
    table 0062 ConceptMap (IG EVN[Provenance]); still one Provenance per message."""
    raw = sample("adt_a01.hl7")
    t = translate(raw)
    provenance = one(t, "Provenance")
    author, operator = provenance["agent"]
    assert author["type"]["coding"][0]["code"] == "author"  # the sending facility (MSH-4)
    assert operator == {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "enterer",
                    "display": "Enterer",
                }
            ]
        },
        "who": {"type": "Practitioner", "identifier": {"value": "NURSE01"}, "display": "Anna Keller"},
    }
    assert "reason" not in provenance
    requested = one(translate(raw.replace(b"+0100|||NURSE01", b"+0100||01|NURSE01")), "Provenance")
    assert requested["reason"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                    "code": "PATRQT",
                    "display": "patient requested",
                }
            ]
        }
    ]
    unknown = one(translate(raw.replace(b"+0100|||NURSE01", b"+0100||U|NURSE01")), "Provenance")
    assert unknown["reason"] == [
        {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}
    ]
    local = translate(raw.replace(b"+0100|||NURSE01", b"+0100||ZZ|NURSE01"))
    assert one(local, "Provenance")["reason"] == [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0062", "code": "ZZ"}]}
    ]
    assert "EVN-4: code 'ZZ' not in ConceptMap table-hl70062-to-event-reason; passed through" in local.warnings
    two = one(
        translate(raw.replace(b"|||NURSE01^Keller^Anna|", b"|||NURSE01^Keller^Anna~^Okafor^Chidi|")), "Provenance"
    )
    assert [a["who"].get("display") for a in two["agent"][1:]] == ["Anna Keller", "Chidi Okafor"]
    assert "identifier" not in two["agent"][2]["who"]


def test_diagnosis_type_is_a_condition_category() -> None:
    """DG1-6 (table 0052) → a second Condition.category via the IG's DiagnosisType ConceptMap."""
    admitting = one(translate(sample("adt_a01.hl7")), "Condition")
    assert admitting["category"] == [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}
            ]
        },
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                    "code": "AD",
                    "display": "Admission diagnosis",
                }
            ]
        },
    ]
    working = one(run("adt_a01_v251.hl7"), "Condition")  # W: no diagnosis-role code in the IG, kept in v2-0052
    assert working["category"][1] == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0052", "code": "W", "display": "Working"}]
    }
    local = translate(sample("adt_a01.hl7").replace(b"||20250314|A", b"||20250314|Q"))
    assert one(local, "Condition")["category"][1] == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0052", "code": "Q"}]
    }
    assert any("DG1-6.1: code 'Q' not in ConceptMap table-hl70052-to-diagnosis-role" in w for w in local.warnings)


def test_siu_resource_timing_and_action_codes() -> None:
    raw = sample("siu_s12.hl7")
    appointment = one(translate(raw), "Appointment")
    patient, person, location = appointment["participant"]
    assert location["period"] == {"start": "2025-04-15T10:00:00-04:00"}  # AIL-6
    assert "period" not in person and "period" not in patient
    assert appointment["start"] == "2025-04-15T10:00:00-04:00"  # SCH-11.4 (AIS-4 says the same)
    # no SCH-11 / SCH-9: the first service times the appointment (AIS-4, AIS-7 in minutes)
    untimed = raw.replace(b"|30|MIN|^^30^20250415100000-0400^20250415103000-0400|", b"||||")
    by_ais = one(translate(untimed), "Appointment")
    assert (by_ais["start"], by_ais["minutesDuration"]) == ("2025-04-15T10:00:00-04:00", 30)
    assert by_ais["end"] == "2025-04-15T10:30:00-04:00"  # AIS-4 + AIS-7 minutes (R4 app-2: start and end)
    hours = one(translate(untimed.replace(b"|||30|MIN", b"|||2|H")), "Appointment")  # not minutes
    assert "minutesDuration" not in hours and hours["end"] == "2025-04-15T12:00:00-04:00"
    default_minutes = one(translate(untimed.replace(b"|||30|MIN", b"|||45|")), "Appointment")  # AIS-8 empty
    assert (default_minutes["end"], default_minutes["minutesDuration"]) == ("2025-04-15T10:45:00-04:00", 45)
    odd = translate(untimed.replace(b"|||30|MIN", b"|||30|FORTNIGHT"))  # units not understood: no end, said
    assert "end" not in one(odd, "Appointment") and any("AIS-7" in w and "no end" in w for w in odd.warnings)
    # AIP-6 → the person's period; segment action code D (table 0206) → left out of the Appointment
    moved = raw.replace(
        b"AIP|1|A|D4410^Brennan^Ruth^^^Dr.|ATND^Attending",
        b"AIP|1|U|D4410^Brennan^Ruth^^^Dr.|ATND^Attending||20250415101500-0400",
    )
    assert one(translate(moved), "Appointment")["participant"][1]["period"] == {"start": "2025-04-15T10:15:00-04:00"}
    dropped = one(translate(raw.replace(b"AIP|1|A|", b"AIP|1|D|").replace(b"AIS|1|A|", b"AIS|1|D|")), "Appointment")
    assert "serviceType" not in dropped
    assert [p["actor"].get("type") for p in dropped["participant"]] == [None, "Location"]
    group_deleted = one(translate(raw.replace(b"RGS|1|A", b"RGS|1|D")), "Appointment")
    assert "serviceType" not in group_deleted and len(group_deleted["participant"]) == 1  # the patient


def test_participations_deleted_by_their_action_code_are_left_out() -> None:
    """ROL-2 / PRT-2 = DE (table 0287): the participation is not written (the resource is sent whole)."""
    raw = (DATA / "adt_a01_v25_rol.hl7").read_bytes()
    assert len(one(translate(raw), "Encounter")["participant"]) == 3
    encounter = one(translate(raw.replace(b"ROL|3|AD|CP", b"ROL|3|DE|CP")), "Encounter")
    assert [p["type"][0]["coding"][0]["code"] for p in encounter["participant"]] == ["ATND", "ATND"]
    patient = one(translate(raw.replace(b"ROL|1|AD|PP", b"ROL|1|DE|PP")), "Patient")
    assert "generalPractitioner" not in patient
    prt = (DATA / "oru_r01_v27_prt.hl7").read_bytes()
    deleted = translate(prt.replace(b"PRT||AD||RO^", b"PRT||DE||RO^").replace(b"PRT||AD||PRI^", b"PRT||DE||PRI^"))
    assert "performer" not in one(deleted, "Observation")
    assert "resultsInterpreter" not in one(deleted, "DiagnosticReport")


def test_explain_trace() -> None:
    translation, trace = translate_bytes((DATA / "adt_a01_v251.hl7").read_bytes(), explain=True)
    assert trace is not None
    patient = ref(one(translation, "Patient"))
    gender = [t for t in trace if t.resource == patient and t.element == "gender"]
    assert gender and gender[0].source == "PID-8" and "segments/PID-Patient.yaml:" in gender[0].rule
    family = [t for t in trace if t.resource == patient and t.element == "name[0].family"]
    assert family[0].source == "PID-5.1" and "datatypes/XPN-HumanName.yaml" in family[0].rule
    subject = [t for t in trace if t.element == "subject" and t.resource.startswith("Encounter/")]
    assert subject[0].source == "ref patient"
    lines = format_explain(trace)
    assert any(line.startswith(f"{patient} gender \u2190 PID-8 (") for line in lines)
    without, none = translate_bytes((DATA / "adt_a01_v251.hl7").read_bytes())
    assert none is None and without.bundle == translation.bundle


def test_coverage_lists_unread_fields_and_segments() -> None:
    t = run("oru_r01_multi_order.hl7")
    assert "OBX-10" in t.unconsumed  # nature of abnormal test: not mapped
    assert "MSH-10" not in t.unconsumed and "PID-5" not in t.unconsumed
    assert all(re.match(r"^[A-Z][A-Z0-9]{2}(-\d+)?$", item) for item in t.unconsumed)


@pytest.mark.parametrize(
    ("msh9", "error", "location"),
    [
        (b"ZDT^Z01", UnsupportedMessage, "MSH-9"),
        (b"ADT^A09", UnsupportedMessage, "MSH-9"),
        (b"QRY^A19", UnsupportedMessage, "MSH-9"),
    ],
)
def test_unsupported_messages(msh9: bytes, error: type[Exception], location: str) -> None:
    raw = (DATA / "adt_a08_v251.hl7").read_bytes().replace(b"ADT^A08^ADT_A01", msh9)
    with pytest.raises(error) as info:
        translator().translate_raw(raw)
    assert getattr(info.value, "location", None) == location


def test_unsupported_version() -> None:
    raw = (DATA / "adt_a08_v251.hl7").read_bytes().replace(b"|2.5.1", b"|3.0")
    with pytest.raises(MappingError) as info:
        translator().translate_raw(raw)
    assert info.value.code == "unsupported_version" and info.value.location == "MSH-12"


def test_a_resource_that_cannot_be_built_fails_the_whole_message() -> None:
    # RXA-3 (administration time) is required by Immunization.occurrence[x]: the map says so, and
    # the message fails naming the field (ERR-2 of the AE), not with a partial bundle
    raw = (DATA / "vxu_v04_v251.hl7").read_bytes().replace(b"|20250320133000-0400|", b"||")
    with pytest.raises(MappingError) as info:
        translator().translate_raw(raw)
    assert (info.value.location, info.value.code) == ("RXA RXA-3", "required")  # ERR-2: RXA^1^3
    assert "Kiddo" not in str(info.value)


def test_an_invalid_resource_fails_the_whole_message(tmp_path: Path) -> None:
    # A site map that writes what R4 does not allow (a birthDate that is no date): validation,
    # the safety net behind the maps, fails the whole message naming resource and element
    site = tmp_path / "hl7v2" / "segments"
    site.mkdir(parents=True)
    shipped = (Path(mappings.directory()) / "hl7v2" / "segments" / "PID-Patient.yaml").read_text()
    rule = "{source: PID-7, target: birthDate, transform: date}"
    assert rule in shipped
    (site / "PID-Patient.yaml").write_text(shipped.replace(rule, "{source: PID-7, target: birthDate}"))
    raw = (DATA / "vxu_v04_v251.hl7").read_bytes()
    with pytest.raises(ValidationFailed) as info:
        Hl7v2Translator(mappings.directory(), tmp_path).translate_raw(raw)
    assert info.value.resource_type == "Patient" and "birthDate" in str(info.value)
    assert "Kiddo" not in str(info.value)
    assert info.value.location == "PID-7"  # the field whose rule wrote it: ERR-2 of the AE names it
    [err] = [seg for seg in ack_for_error(raw, info.value, header=None, accept_level=False).split(b"\r")
             if seg.startswith(b"ERR|")]
    assert err.split(b"|")[2] == b"PID^1^7^1" and b"birthDate" in err


def test_shape_and_full_validation_agree() -> None:
    full = Hl7v2Translator(validation="full")
    # A fixed receipt time: Provenance.recorded falls back to it for messages without an offset.
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    for name, raw in all_messages():
        expected = full.translate_raw(raw, received_at=at)[0].bundle
        assert expected == translator().translate_raw(raw, received_at=at)[0].bundle, name


def test_duplicate_observation_codes_get_distinct_stable_ids() -> None:
    raw = (DATA / "oru_r01_v251_cbc.hl7").read_bytes().replace(b"OBX|2|NM|789-8^Erythrocytes", b"OBX|2|NM|6690-2^Leuk")
    first = [o["id"] for o in resources(translator().translate_raw(raw)[0], "Observation")]
    assert len(set(first)) == 5
    assert first == [o["id"] for o in resources(translator().translate_raw(raw)[0], "Observation")]


def test_compiled_and_traced_translations_agree_in_any_order() -> None:
    """Every run but ``--explain`` goes through compiled plans with memoised datatype maps; the
    explain interpreter is the reference. Same bundles, warnings and coverage, whichever
    messages came before (the memo is per translator and outlives messages)."""
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    messages = all_messages()

    def outcome(translator: Hl7v2Translator, raw: bytes, explain: bool = False) -> Any:
        try:
            translation, _ = translator.translate_raw(raw, received_at=at, explain=explain)
        except MappingError as exc:
            return ("error", type(exc).__name__, str(exc))
        return (translation.bundle, translation.warnings, translation.unconsumed)

    forward = Hl7v2Translator()
    expected = {name: outcome(forward, raw, explain=True) for name, raw in messages}
    for name, raw in messages:
        assert outcome(forward, raw) == expected[name], name
    backward = Hl7v2Translator()
    for name, raw in reversed(messages):
        assert outcome(backward, raw) == expected[name], name
        assert outcome(backward, raw) == expected[name], f"{name}, again"
