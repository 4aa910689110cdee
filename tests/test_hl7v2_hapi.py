"""The HL7 v2 corpus against the real HAPI FHIR server: every bundle accepted, resources valid.

* every corpus message's transaction Bundle is POSTed: HTTP 200 and every entry 200/201;
* ``$validate`` (``POST /fhir/{Type}/$validate``, R4 core profiles and terminology) on a sample
  of the produced resources - up to three of each resource type, from different messages: no
  ``error``/``fatal`` issue;
* delivery is idempotent: the same bundle twice gives the same ids and no duplicates;
* an A08 after its A01 leaves one Patient, with the A08's data; a corrected result (OBX-11 = C)
  updates the preliminary Observation in place;
* registration owns demographics and visits: an ORU whose PID and PV1 are minimal leaves the
  Patient and Encounter an ADT wrote as they were (same version); an ORU for a new patient
  creates the Patient under its deterministic id, once.

Bundles go through :func:`hub.pipeline.delivery.prepare_transaction` first, as the hub's deliverer
sends them (the Patient and Encounter of non-ADT messages are create-if-absent entries).

Unmapped codes (the hub's decision): a code the ConceptMaps do not map is passed through with its
v2 table as the system and reported as a translation warning; the message is still delivered,
and HAPI stores it (terminology is not checked on write). ``$validate`` then reports the code as
unknown in that v2 code system - the warning the hub raised at translation, now from the server.
The remedy is the site layer: a site ConceptMap that maps the local code makes the same message
validate clean (last test).

Uses the session's HAPI (``hapi_url``; MEORING_TEST_HAPI_URL reuses a running one). About 70
transactions and 60 validations.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.hl7v2 import Hl7v2Translator
from hub.fhir.client import FhirClient
from hub.pipeline.delivery import prepare_transaction
from tests.test_hl7v2_corpus import CORPUS, DATA, RECEIVED, translator

HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
V2_0078 = "http://terminology.hl7.org/CodeSystem/v2-0078"


@pytest.fixture(scope="module")
def fhir(hapi_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hapi_url.rstrip("/") + "/", headers=HEADERS, timeout=180) as client:
        yield client


def bundle_of(name: str, tr: Hl7v2Translator | None = None) -> dict[str, Any]:
    return (tr or translator()).translate_raw((DATA / name).read_bytes(), received_at=RECEIVED)[0].bundle


def prepare(fhir: httpx.Client, bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle as the hub's deliverer sends it: create-if-absent entries resolved against HAPI."""
    with FhirClient(str(fhir.base_url).rstrip("/")) as client:
        return prepare_transaction(client, bundle)


def deliver(fhir: httpx.Client, bundle: dict[str, Any]) -> list[str]:
    """Prepare and POST a transaction; returns the entry statuses (asserting HTTP 200)."""
    response = fhir.post("", content=json.dumps(prepare(fhir, bundle)))
    assert response.status_code == 200, response.text[:2000]
    reply = response.json()
    assert reply["type"] == "transaction-response"
    return [entry["response"]["status"] for entry in reply["entry"]]


def problems(fhir: httpx.Client, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The error/fatal issues of ``$validate`` for one resource."""
    response = fhir.post(f"{resource['resourceType']}/$validate", content=json.dumps(resource))
    assert response.status_code in (200, 412), response.text[:2000]
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    return [i for i in outcome.get("issue", []) if i["severity"] in ("error", "fatal")]


def count(fhir: httpx.Client, query: str) -> int:
    response = fhir.get(f"{query}&_summary=count")  # httpx params= would replace the query string
    assert response.status_code == 200, response.text[:500]
    return int(response.json()["total"])


def test_every_corpus_bundle_is_accepted(fhir: httpx.Client) -> None:
    translated = accepted = 0
    for name in CORPUS:
        bundle = bundle_of(name)
        statuses = deliver(fhir, bundle)
        assert all(s.startswith(("200", "201")) for s in statuses), (name, statuses)
        # only create-if-absent entries (Patient, Encounter of non-ADT messages) of stored resources are left out
        conditional = sum(e["request"]["method"] == "POST" for e in bundle["entry"])
        assert len(bundle["entry"]) - conditional <= len(statuses) <= len(bundle["entry"]), name
        translated += len(bundle["entry"])
        accepted += len(statuses)
    assert translated > 300 and accepted > 250


def _sample() -> list[tuple[str, dict[str, Any]]]:
    """Up to three resources of each type, each from a different message."""
    seen: dict[str, list[str]] = {}
    out = []
    for name in CORPUS:
        for entry in bundle_of(name)["entry"]:
            resource = entry["resource"]
            names = seen.setdefault(resource["resourceType"], [])
            if len(names) < 3 and name not in names:
                names.append(name)
                out.append((name, resource))
    return out


def test_sampled_resources_validate_without_errors(fhir: httpx.Client) -> None:
    sample = _sample()
    assert len({r["resourceType"] for _, r in sample}) >= 19
    failures = {f"{name} {r['resourceType']}": problems(fhir, r) for name, r in sample}
    assert {k: v for k, v in failures.items() if v} == {}


def test_new_resource_kinds_validate_in_every_message(fhir: httpx.Client) -> None:
    """Every Coverage, Account, RelatedPerson, Procedure, Medication(Request) and Specimen the new maps build."""
    kinds = {
        "Coverage",
        "Account",
        "RelatedPerson",
        "Procedure",
        "Medication",
        "MedicationRequest",
        "Specimen",
        "Organization",
    }
    checked = 0
    for name in CORPUS:
        for entry in bundle_of(name)["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] in kinds:
                assert problems(fhir, resource) == [], (name, resource["resourceType"])
                checked += 1
    assert checked >= 40


def test_same_bundle_twice_same_ids_no_duplicates(fhir: httpx.Client) -> None:
    bundle = bundle_of("oru_r01_v24_chem.hl7")
    refs = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]]
    deliver(fhir, bundle)
    (patient,) = [r for r in refs if r.startswith("Patient/")]
    version = fhir.get(patient).json()["meta"]["versionId"]
    again = prepare(fhir, bundle)
    # the Patient (and Encounter) exist now: their create-if-absent entries are dropped, the rest PUT again
    urls = [e["request"]["url"] for e in again["entry"]]
    assert urls == [r for r in refs if not r.startswith(("Patient/", "Encounter/"))]
    assert all(e["request"]["method"] == "PUT" for e in again["entry"])
    reply = fhir.post("", content=json.dumps(again)).json()
    assert [e["response"]["location"].split("/_history")[0] for e in reply["entry"]] == urls
    assert all(e["response"]["status"].startswith("200") for e in reply["entry"])  # updates, nothing created
    assert fhir.get(patient).json()["meta"]["versionId"] == version
    observations = [u.split("/")[1] for u in urls if u.startswith("Observation/")]
    assert count(fhir, f"Observation?_id={','.join(observations)}") == 10
    assert count(fhir, "Patient?identifier=urn:id:HILLCREST|HC81020") == 1  # also in ADT, ORM, OUL messages


# -- registration owns demographics and visits ------------------------------------------------------
SAMPLES = Path(__file__).parents[1] / "mappings" / "samples" / "hl7v2"


def new_patient() -> tuple[str, str, str]:
    """A medical record number, visit number and order number no earlier run used."""
    token = uuid.uuid4().hex[:10].upper()
    return f"NW{token}", f"VN{token}", f"ORD{token}"


def adt_a01(mrn: str, visit: str) -> bytes:
    """The sample ADT^A01: full demographics (address, phones, next of kin) and visit (location, doctors)."""
    raw = (SAMPLES / "adt_a01.hl7").read_bytes().decode()
    return raw.replace("NW1000234", mrn).replace("VN20250314001", visit).replace("ADT0001", f"A{mrn}").encode()


def minimal_oru(mrn: str, visit: str, order: str) -> bytes:
    """The sample ORU^R01 (10 results) whose PID has only the MRN and a name, and whose PV1 only
    the patient class and visit number."""
    pv1 = "|".join(["PV1", "1", "I", *[""] * 16, f"{visit}^^^NORTHWIND^VN"])
    segments = []
    for segment in (SAMPLES / "oru_r01.hl7").read_bytes().decode().strip().split("\r"):
        if segment.startswith("PID|"):
            segment = f"PID|1||{mrn}^^^NORTHWIND^MR||Fictive^Jonas"
        elif segment.startswith("PV1|"):
            segment = pv1
        segments.append(segment.replace("ORD7781", order).replace("LAB99120", f"F{order}"))
    return "\r".join(segments).replace("LAB000451", f"R{mrn}").encode()


def translated(raw: bytes) -> dict[str, Any]:
    return translator().translate_raw(raw, received_at=RECEIVED)[0].bundle


def entry_of(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    (entry,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == kind]
    return entry


def test_minimal_oru_after_adt_leaves_patient_and_encounter_as_adt_wrote_them(fhir: httpx.Client) -> None:
    mrn, visit, order = new_patient()
    adt, oru = translated(adt_a01(mrn, visit)), translated(minimal_oru(mrn, visit, order))
    patient, encounter = entry_of(oru, "Patient"), entry_of(oru, "Encounter")
    assert patient["request"]["method"] == "POST" and encounter["request"]["method"] == "POST"
    assert "address" not in patient["resource"] and "telecom" not in patient["resource"]
    patient_url = f"Patient/{patient['resource']['id']}"
    encounter_url = f"Encounter/{encounter['resource']['id']}"
    assert entry_of(adt, "Patient")["request"] == {"method": "PUT", "url": patient_url}  # same ids as the ADT's
    assert entry_of(adt, "Encounter")["request"] == {"method": "PUT", "url": encounter_url}

    assert all(s.startswith("201") for s in deliver(fhir, adt))
    before = fhir.get(patient_url).json(), fhir.get(encounter_url).json()
    assert before[0]["address"][0]["line"] == ["Lindenweg 12", "Apt 3"]
    assert before[0]["telecom"][0]["value"].endswith("5550123")

    sent = prepare(fhir, oru)
    assert [e for e in sent["entry"] if e["resource"]["resourceType"] in ("Patient", "Encounter")] == []
    assert all(s.startswith(("200", "201")) for s in deliver(fhir, oru))
    after = fhir.get(patient_url).json(), fhir.get(encounter_url).json()
    assert after == before  # not written: same version, same address, phones, contacts, location
    assert after[0]["address"][0]["line"] == ["Lindenweg 12", "Apt 3"] and after[0]["contact"]
    assert after[1]["meta"]["versionId"] == before[1]["meta"]["versionId"]
    order_url = f"ServiceRequest/{entry_of(oru, 'ServiceRequest')['resource']['id']}"
    query = f"Observation?subject={patient_url}&encounter={encounter_url}"
    assert count(fhir, f"{query}&based-on={order_url}") == 10  # the ORU's results (the ADT has 2 more)
    assert count(fhir, f"Patient?identifier=urn:id:NORTHWIND|{mrn}") == 1


def test_oru_for_a_new_patient_creates_it_under_its_id_once(fhir: httpx.Client) -> None:
    mrn, visit, order = new_patient()
    oru = translated(minimal_oru(mrn, visit, order))
    patient_id = entry_of(oru, "Patient")["resource"]["id"]
    encounter_id = entry_of(oru, "Encounter")["resource"]["id"]
    sent = prepare(fhir, oru)
    assert entry_of(sent, "Patient")["request"] == {"method": "PUT", "url": f"Patient/{patient_id}"}
    assert entry_of(sent, "Encounter")["request"] == {"method": "PUT", "url": f"Encounter/{encounter_id}"}
    assert all(s.startswith("201") for s in deliver(fhir, oru))
    stored = fhir.get(f"Patient/{patient_id}").json()
    assert stored["name"][0]["family"] == "Fictive" and stored["meta"]["versionId"] == "1"
    assert fhir.get(f"Encounter/{encounter_id}").json()["subject"] == {"reference": f"Patient/{patient_id}"}
    assert count(fhir, f"Observation?subject=Patient/{patient_id}") == 10

    statuses = deliver(fhir, oru)  # the same bundle again: the Patient and Encounter are not written
    assert len(statuses) == len(oru["entry"]) - 2 and all(s.startswith("200") for s in statuses)
    assert fhir.get(f"Patient/{patient_id}").json()["meta"]["versionId"] == "1"
    assert fhir.get(f"Encounter/{encounter_id}").json()["meta"]["versionId"] == "1"
    assert count(fhir, f"Patient?identifier=urn:id:NORTHWIND|{mrn}") == 1
    assert count(fhir, f"Observation?subject=Patient/{patient_id}") == 10


def test_a01_then_a08_one_patient_with_a08_data(fhir: httpx.Client) -> None:
    a01, a08 = bundle_of("adt_a01_v23_ins_gt1.hl7"), bundle_of("adt_a08_v23_update.hl7")
    deliver(fhir, a01)
    deliver(fhir, a08)
    (patient_url,) = [e["request"]["url"] for e in a08["entry"] if e["request"]["url"].startswith("Patient/")]
    assert patient_url in [e["request"]["url"] for e in a01["entry"]]
    stored = fhir.get(patient_url).json()
    assert stored["address"][0]["line"] == ["48 Quarry Road"]
    assert stored["telecom"][0]["value"] == "(802)555-0199"
    assert count(fhir, "Patient?identifier=urn:id:GREENFIELD|GF100234") == 1
    (encounter_url,) = [e["request"]["url"] for e in a08["entry"] if e["request"]["url"].startswith("Encounter/")]
    assert fhir.get(encounter_url).json()["location"][0]["location"]["display"] == "GREENFIELD 3W 314 A"
    assert count(fhir, "Encounter?identifier=GF-V-55012") == 1
    assert count(fhir, f"Coverage?beneficiary={patient_url}") == 1


def test_corrected_result_updates_the_same_observation(fhir: httpx.Client) -> None:
    prelim, corrected = bundle_of("oru_r01_v231_prelim.hl7"), bundle_of("oru_r01_v231_corrected.hl7")
    deliver(fhir, prelim)
    inr = next(
        e["resource"]
        for e in prelim["entry"]
        if e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["coding"][0]["code"] == "6301-6"
    )
    before = fhir.get(f"Observation/{inr['id']}").json()
    assert before["status"] == "preliminary" and before["valueQuantity"]["value"] == 2.8
    deliver(fhir, corrected)
    after = fhir.get(f"Observation/{inr['id']}").json()
    assert after["status"] == "corrected" and after["valueQuantity"]["value"] == 3.4
    assert int(after["meta"]["versionId"]) > int(before["meta"]["versionId"])
    report = next(e["resource"] for e in corrected["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert fhir.get(f"DiagnosticReport/{report['id']}").json()["status"] == "corrected"
    assert count(fhir, f"Observation?_id={inr['id']}") == 1


def test_unmapped_code_is_delivered_reported_and_fixed_by_a_site_map(fhir: httpx.Client, tmp_path: Path) -> None:
    name = "oru_r01_v25_unmapped_interp.hl7"
    translation = translator().translate_raw((DATA / name).read_bytes(), received_at=RECEIVED)[0]
    assert any("'PANIC' not in ConceptMap table-hl70078" in w for w in translation.warnings)  # reported
    statuses = deliver(fhir, translation.bundle)  # delivered: HAPI stores the pass-through code
    assert all(s.startswith(("200", "201")) for s in statuses)
    hemoglobin = next(
        e["resource"]
        for e in translation.bundle["entry"]
        if e["resource"]["resourceType"] == "Observation" and "PANIC" in json.dumps(e["resource"])
    )
    assert fhir.get(f"Observation/{hemoglobin['id']}").json()["interpretation"][0]["coding"][0] == {
        "system": V2_0078,
        "code": "PANIC",
    }
    issues = problems(fhir, hemoglobin)  # the server's validator flags the same code
    assert issues and all("PANIC" in (i.get("diagnostics") or "") for i in issues)
    assert all(any("interpretation" in e for e in i.get("expression", [])) for i in issues)

    site = tmp_path / "site" / "conceptmaps"
    site.mkdir(parents=True)
    (site / "local-0078.json").write_text(
        json.dumps(
            {
                "resourceType": "ConceptMap",
                "id": "table-hl70078-to-observation-interpretation",
                "url": "https://example.org/site/ConceptMap/local-0078",
                "status": "active",
                "group": [
                    {
                        "source": V2_0078,
                        "target": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "element": [{"code": "PANIC", "target": [{"code": "AA", "equivalence": "equivalent"}]}],
                    }
                ],
            }
        )
    )
    import mappings

    fixed = Hl7v2Translator(mappings.directory(), tmp_path / "site")
    fixed_bundle = bundle_of(name, fixed)
    fixed_obs = next(e["resource"] for e in fixed_bundle["entry"] if e["resource"]["id"] == hemoglobin["id"])
    assert fixed_obs["interpretation"][0]["coding"][0]["code"] == "AA"
    assert problems(fhir, fixed_obs) == []
    deliver(fhir, fixed_bundle)
    assert fhir.get(f"Observation/{hemoglobin['id']}").json()["interpretation"][0]["coding"][0]["code"] == "AA"
