# ruff: noqa: F811 - pytest fixtures are imported by name and then requested as parameters
"""OpenEMR reads (with the quirks), the read cache, documents, bulk export, the MRN policy, status.

No HAPI here: what would go to HAPI is captured by a recording deliverer (an outbox
consumer, not an HTTP mock). ``test_openemr_hapi.py`` checks the HAPI side for real.
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest

from hub.config import HubSettings, PipelineSettings
from hub.errors import MappingError
from hub.openemr import OpenEmr, OpenEmrRefused, openemr_readiness
from hub.openemr.cli import add_openemr_commands
from hub.openemr.reader import CachedReader
from hub.pipeline.worker import PipelineWorker
from hub.store import Store
from hub.store.records import OutboxEntry, utcnow
from tests.openemr_emulator import OpenEmrEmulator
from tests.openemr_emulator.fixtures import emulator, hub_store, openemr, ready, settings  # noqa: F401


class RecordingFhir:
    """Stands in for the FHIR deliverer: records each Bundle queued for HAPI."""

    target = "fhir"

    def __init__(self) -> None:
        self.bundles: list[dict[str, Any]] = []

    def deliver(self, entry: OutboxEntry) -> None:
        self.bundles.append(json.loads(entry.body))

    def resources(self, resource_type: str) -> list[dict[str, Any]]:
        return [e["resource"] for b in self.bundles for e in b["entry"]
                if e["resource"]["resourceType"] == resource_type]


class Clock:
    """The worker's clock; it starts a minute ahead so that entries queued just now are due."""

    def __init__(self) -> None:
        self.now = utcnow() + timedelta(minutes=1)

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def worker_for(openemr: OpenEmr, store: Store, fhir: RecordingFhir, clock: Clock) -> PipelineWorker:
    return PipelineWorker(store, translators={}, deliverers={"openemr": openemr.deliverer, "fhir": fhir},
                          settings=PipelineSettings(backoff_base_s=1, backoff_max_s=5), clock=clock)


def patient(family: str, mrn: str, **extra: Any) -> dict[str, Any]:
    resource = {"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "gender": "female",
                "birthDate": "1970-03-04", "identifier": [{"system": "urn:meoring:mrn", "value": mrn}]}
    resource.update(extra)
    return resource


def outbox_rows(store: Store) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from hub.store.schema import outbox

    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(outbox).order_by(outbox.c.id)).mappings()]


# --------------------------------------------------------------------------- reads


def test_patient_search_pages_by_offset_and_other_searches_come_back_whole(
    ready: OpenEmr, emulator: OpenEmrEmulator
) -> None:
    uuids = emulator.seed_patients(450)
    for _ in range(250):
        emulator.add_resource({"resourceType": "Observation", "status": "final",
                               "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}},
                              patient_uuid=uuids[0])
    pages = list(ready.client.search_pages("Patient"))
    assert [len(p) for p in pages] == [200, 200, 50]  # no next links: the hub pages with _count/_offset
    assert len({p["id"] for page in pages for p in page}) == 450
    raw = httpx.get(f"{emulator.fhir_base}/Patient", params={"_count": 5},
                    headers={"Authorization": f"Bearer {ready.system.token()}"}).json()  # type: ignore[union-attr]
    assert raw["type"] == "collection" and raw["total"] == 5 and [link["relation"] for link in raw["link"]] == ["self"]
    before = emulator.requests("GET", "/fhir/Observation")
    observations = ready.client.search("Observation", {"patient": uuids[0], "_count": 10})
    assert len(observations) == 250  # _count is ignored outside Patient (§3.2)
    assert emulator.requests("GET", "/fhir/Observation") == before + 1
    by_post = ready.client.search("Observation", {"patient": uuids[0], "code": "http://loinc.org|2345-7"}, post=True)
    assert len(by_post) == 250 and emulator.requests("POST", "/fhir/Observation/_search") == 1


def test_every_issue_4_resource_reads_through_the_backend_token(ready: OpenEmr, emulator: OpenEmrEmulator) -> None:
    (patient_uuid,) = emulator.seed_patients(1)
    kinds = ["Encounter", "Observation", "Condition", "AllergyIntolerance", "MedicationRequest", "ServiceRequest",
             "DiagnosticReport", "DocumentReference", "Practitioner"]
    ids = {k: emulator.add_resource({"resourceType": k}, patient_uuid=patient_uuid) for k in kinds}
    for kind, ident in ids.items():
        assert ready.reader.read(kind, ident)["id"] == ident  # type: ignore[index]
        assert [r["id"] for r in ready.reader.search(kind, {"patient": patient_uuid}) if r["id"] == ident] == [ident]
    assert ready.reader.read("Patient", patient_uuid)["id"] == patient_uuid  # type: ignore[index]
    assert ready.reader.read("Observation", "no-such-id") is None


def test_reads_are_cached_until_the_ttl_and_our_own_writes_invalidate(
    ready: OpenEmr, emulator: OpenEmrEmulator, hub_store: Store
) -> None:
    (patient_uuid,) = emulator.seed_patients(1)
    clock = Clock()
    store = Store(hub_store.engine, clock=clock)
    reader = CachedReader(ready.client, store.cache, ttl=timedelta(seconds=300))
    first = reader.read("Patient", patient_uuid)
    assert reader.read("Patient", patient_uuid) == first
    assert reader.search("Patient", {"family": "Family1"}) == reader.search("Patient", {"family": "Family1"})
    assert emulator.requests("GET", f"/fhir/Patient/{patient_uuid}") == 1 and reader.hits == 2
    emulator.touch_patient(patient_uuid, family="Changed-elsewhere")
    assert reader.read("Patient", patient_uuid)["name"][0]["family"] == "Family1"  # type: ignore[index]
    clock.advance(301)
    assert reader.read("Patient", patient_uuid)["name"][0]["family"] == "Changed-elsewhere"  # type: ignore[index]
    # Our own write: OpenEMR first, then the cache holds what OpenEMR answered, and searches are dropped.
    ready.reader = reader
    ready.deliverer._reader = reader
    ready.deliverer.apply("patient.update", {"uuid": patient_uuid, "resource": patient("Ours", "MRN000001")})
    reads = emulator.requests("GET", f"/fhir/Patient/{patient_uuid}")
    assert reader.read("Patient", patient_uuid)["name"][0]["family"] == "Ours"  # type: ignore[index]
    assert emulator.requests("GET", f"/fhir/Patient/{patient_uuid}") == reads  # served from the cache
    assert reader.search("Patient", {"family": "Family1"}) == []  # the cached search was invalidated


# --------------------------------------------------------------------------- writes (OpenEMR side)


def test_patient_create_goes_to_openemr_first_and_its_uuid_to_hapi(
    ready: OpenEmr, emulator: OpenEmrEmulator, hub_store: Store
) -> None:
    clock = Clock()
    store = Store(hub_store.engine, clock=clock)
    fhir = RecordingFhir()
    worker = worker_for(ready, store, fhir, clock)
    ready.writer.create_patient(patient("First", "M-1"))
    worker.run_once()  # OpenEMR write (and the HAPI entry it queues)
    worker.run_once()  # the HAPI entry
    (row,) = emulator.patients(pubpid="M-1")
    (mirrored,) = fhir.resources("Patient")
    assert mirrored["id"] == row["uuid"]
    assert {"system": "urn:meoring:openemr:uuid", "value": row["uuid"]} in mirrored["identifier"]
    assert any(i.get("system") == "urn:meoring:mrn" and i["value"] == "M-1" for i in mirrored["identifier"])


def test_a_refused_patient_is_dead_lettered_and_nothing_is_queued_for_hapi(
    ready: OpenEmr, emulator: OpenEmrEmulator, hub_store: Store
) -> None:
    clock = Clock()
    store = Store(hub_store.engine, clock=clock)
    fhir = RecordingFhir()
    worker = worker_for(ready, store, fhir, clock)
    bad = patient("X", "M-2")
    del bad["birthDate"]
    ready.writer.create_patient(bad)
    worker.run_once()
    (entry,) = outbox_rows(store)
    assert entry["status"] == "dead" and "DOB" in entry["last_error"] and "1970" not in entry["last_error"]
    assert fhir.bundles == [] and emulator.patients(pubpid="M-2") == []


def test_500_then_a_timeout_after_the_write_was_applied_is_retried_without_a_duplicate(
    ready: OpenEmr, emulator: OpenEmrEmulator, hub_store: Store
) -> None:
    clock = Clock()
    store = Store(hub_store.engine, clock=clock)
    fhir = RecordingFhir()
    worker = worker_for(ready, store, fhir, clock)
    emulator.fail("POST", r"/fhir/Patient$")  # 500 before applying
    emulator.hang("POST", r"/fhir/Patient$", after=True)  # applied, then no answer (the hub times out)
    ready.writer.create_patient(patient("Flaky", "M-3"))
    worker.run_once()
    assert outbox_rows(store)[0]["status"] == "retrying"
    clock.advance(10)
    worker.run_once()
    assert outbox_rows(store)[0]["status"] == "retrying" and len(emulator.patients(pubpid="M-3")) == 1
    clock.advance(10)
    worker.run_once()
    worker.run_once()
    assert [r["status"] for r in outbox_rows(store)] == ["delivered", "delivered"]
    assert len(emulator.patients(pubpid="M-3")) == 1  # not duplicated: the retry found it by MRN
    assert emulator.requests("POST", r"/fhir/Patient$") == 2
    assert len(fhir.resources("Patient")) == 1


def test_document_upload_learns_the_id_by_listing_and_a_retry_does_not_upload_twice(
    ready: OpenEmr, emulator: OpenEmrEmulator, hub_store: Store
) -> None:
    clock = Clock()
    store = Store(hub_store.engine, clock=clock)
    fhir = RecordingFhir()
    worker = worker_for(ready, store, fhir, clock)
    (patient_uuid,) = emulator.seed_patients(1)
    pid = emulator.patients()[0]["pid"]
    emulator.hang("POST", r"/api/patient/\d+/document$", after=True)
    report = b"%PDF-1.4 report for the hub"
    ready.writer.upload_document(patient_uuid, category_path="/Categories/Lab_Report", filename="cbc.pdf",
                                 content=report, mimetype="application/pdf")
    worker.run_once()
    clock.advance(10)
    worker.run_once()
    worker.run_once()
    (document,) = emulator.documents(pid)
    assert emulator.requests("POST", r"/document$") == 1, "the retry found the stored bytes and did not re-upload"
    (reference,) = fhir.resources("DocumentReference")
    assert {"system": "urn:meoring:openemr:document", "value": f"{pid}/{document['id']}"} in reference["identifier"]
    assert reference["subject"] == {"reference": f"Patient/{patient_uuid}"}
    assert ready.client.get_document(pid, document["id"]) == report
    assert ready.client.get_document(pid, 999) is None  # 400 with an empty body (§4.4)


def test_document_refusals_are_404_with_an_empty_body_and_end_as_dead_letters(
    ready: OpenEmr, emulator: OpenEmrEmulator, hub_store: Store
) -> None:
    (patient_uuid,) = emulator.seed_patients(1)
    pid = emulator.patients()[0]["pid"]
    assert ready.client.list_documents(pid, "/Categories/Imaging") == []  # empty category: 404, empty body
    raw = httpx.get(f"{emulator.api_base}/patient/{pid}/document", params={"path": "/Categories/Imaging"},
                    headers={"Authorization": f"Bearer {ready.user.token()}"})  # type: ignore[union-attr]
    assert raw.status_code == 404 and raw.content == b""
    with pytest.raises(OpenEmrRefused, match="404 with an empty body"):
        ready.client.upload_document(pid, "/Categories/No_Such", "a.txt", b"x", "text/plain")
    with pytest.raises(ValueError, match="no spaces"):
        ready.writer.upload_document(patient_uuid, category_path="/Categories/Lab Report", filename="a.txt",
                                     content=b"x", mimetype="text/plain")


def test_writes_queued_before_registration_wait_and_go_through_after_it(
    settings: HubSettings, hub_store: Store, emulator: OpenEmrEmulator
) -> None:
    from hub.openemr import OpenEmrWriter, openemr_deliverers
    from tests.openemr_emulator.fixtures import login

    clock = Clock()
    store = Store(hub_store.engine, clock=clock)
    fhir = RecordingFhir()
    worker = PipelineWorker(store, translators={}, deliverers={**openemr_deliverers(settings, store), "fhir": fhir},
                            settings=PipelineSettings(max_attempts=2, backoff_base_s=1), clock=clock)
    OpenEmrWriter(store, settings.openemr).create_patient(patient("Early", "E-1"))
    for _ in range(3):
        worker.run_once()
        clock.advance(60)
    (entry,) = outbox_rows(store)
    assert (entry["status"], entry["attempts"]) == ("retrying", 0) and "meoring openemr register" in entry["last_error"]
    with OpenEmr(settings, hub_store) as elsewhere:  # `meoring openemr register` and `login`, another process
        elsewhere.register()
        emulator.enable_all_clients()
        login(elsewhere, emulator)
    worker.run_once()
    worker.run_once()
    assert len(emulator.patients(pubpid="E-1")) == 1 and len(fhir.resources("Patient")) == 1


# --------------------------------------------------------------------------- bulk export


def test_bulk_export_polls_until_done_and_reads_ndjson_from_binary(ready: OpenEmr, emulator: OpenEmrEmulator) -> None:
    emulator.seed_patients(30)
    emulator.export_pending_polls = 2  # answer 202 twice before the result
    bare = httpx.get(f"{emulator.fhir_base}/$export", params={"_type": "Patient"},
                     headers={"Authorization": f"Bearer {ready.system.token()}"})  # type: ignore[union-attr]
    assert bare.status_code == 400  # Accept and Prefer are required exactly (§3.4)
    result = ready.client.export(types=("Patient",), poll_interval=0)
    assert emulator.requests("GET", r"/fhir/\$bulkdata-status") == 3
    ((kind, url),) = result.outputs
    lines = ready.client.fetch_binary(url).splitlines()
    assert kind == "Patient" and len(lines) == 30 and json.loads(lines[0])["resourceType"] == "Patient"


# --------------------------------------------------------------------------- MRN match policy


def test_mrn_match_policy_matches_rejects_or_creates_in_openemr_first(
    ready: OpenEmr, emulator: OpenEmrEmulator
) -> None:
    emulator.seed_patients(3)
    known = ready.match_or_create(patient("Family1", "MRN000001"), mrn="MRN000001", policy="reject")
    assert known.status == "matched" and known.patient_uuid == emulator.patients(pubpid="MRN000001")[0]["uuid"]
    with pytest.raises(MappingError) as rejected:
        ready.match_or_create(patient("New", "NEW-1"), mrn="NEW-1", policy="reject")
    assert rejected.value.code == "unknown_key" and rejected.value.location == "PID-3"
    created = ready.match_or_create(patient("New", "NEW-1"), mrn="NEW-1", policy="create")
    assert created.status == "created" and emulator.patients(pubpid="NEW-1")[0]["uuid"] == created.patient_uuid
    again = ready.match_or_create(patient("New", "NEW-1"), mrn="NEW-1", policy="create")
    assert again.status == "matched" and again.patient_uuid == created.patient_uuid
    bad = patient("X", "NEW-2")
    del bad["gender"]
    with pytest.raises(MappingError) as refused:
        ready.match_or_create(bad, mrn="NEW-2", policy="create")
    assert refused.value.code == "rejected"
    emulator.fail("POST", r"/fhir/Patient$")
    queued = ready.match_or_create(patient("Later", "NEW-3"), mrn="NEW-3", policy="create")
    assert queued.status == "queued" and queued.outbox_id is not None


# --------------------------------------------------------------------------- status, readiness, CLI


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meoring")
    add_openemr_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_readiness_names_each_step_a_person_must_take(
    openemr: OpenEmr, emulator: OpenEmrEmulator, settings: HubSettings, hub_store: Store
) -> None:
    assert "run `meoring openemr register`" in (openemr_readiness(settings, hub_store) or "")
    openemr.register()
    emulator.enable_all_clients()
    assert "no user login yet" in (openemr_readiness(settings, hub_store) or "")
    from tests.openemr_emulator.fixtures import login

    login(openemr, emulator)
    assert openemr_readiness(settings, hub_store) is None
    unconfigured = settings.model_copy(update={"openemr": settings.openemr.model_copy(update={"base_url": None})})
    assert openemr_readiness(unconfigured, hub_store) is None


def test_status_command_shows_the_state_without_secrets(
    ready: OpenEmr, settings: HubSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(["openemr", "status", "--check"])
    assert args.func(args, settings) == 0
    out = capsys.readouterr().out
    row = ready.token_store.get("user")
    assert row is not None and row.refresh_token not in out and row.access_token not in out  # type: ignore[operator]
    assert "user client:" in out and "state: active" in out and "backend token: obtained" in out
    jwks = parse(["openemr", "status", "--jwks"])
    jwks.func(jwks, settings)
    keys = json.loads(capsys.readouterr().out)["keys"]
    assert keys and "d" not in keys[0]  # public parts only


def test_commands_fail_with_one_readable_line_before_registration(settings: HubSettings) -> None:
    from hub.errors import HubError

    args = parse(["openemr", "login", "--timeout", "1"])
    with pytest.raises(HubError, match=r"no OpenEMR user-delegated client is registered \(run `meoring openemr"):
        args.func(args, settings)
