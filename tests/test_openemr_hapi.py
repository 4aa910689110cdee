# ruff: noqa: F811 - pytest fixtures are imported by name and then requested as parameters
"""OpenEMR → HAPI for real: OpenEMR-first writes, refusals that never reach HAPI, patient sync.

The HAPI side is the real HAPI FHIR of the test stack (fixture ``hapi_url``); OpenEMR is the
emulator. HAPI is slow to write, so these tests are few and each checks several things.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from hub.config import PipelineSettings
from hub.fhir.client import FhirClient
from hub.openemr import OpenEmr
from hub.pipeline.delivery import FhirBundleDeliverer
from hub.pipeline.worker import PipelineWorker
from hub.store import Store
from hub.store.records import utcnow
from tests.openemr_emulator import OpenEmrEmulator
from tests.openemr_emulator.fixtures import emulator, hub_store, openemr, ready, settings  # noqa: F401


class Clock:
    def __init__(self) -> None:
        self.now = utcnow() + timedelta(minutes=1)

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def patient(mrn: str, **extra: Any) -> dict[str, Any]:
    resource = {"resourceType": "Patient", "name": [{"family": "Hapi", "given": ["Test"]}], "gender": "male",
                "birthDate": "1981-05-06", "identifier": [{"system": "urn:meoring:mrn", "value": mrn}]}
    resource.update(extra)
    return resource


def count(fhir: FhirClient, params: dict[str, str]) -> int:
    bundle = next(fhir.search_pages("Patient", {**params, "_summary": "count"}))
    return int(bundle["total"])


def test_hapi_gets_only_what_openemr_accepted_once_with_the_openemr_uuid(
    ready: OpenEmr, emulator: OpenEmrEmulator, hub_store: Store, hapi_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    accepted, refused, flaky = f"A-{run}", f"R-{run}", f"F-{run}"
    clock = Clock()
    store = Store(hub_store.engine, clock=clock)
    with FhirClient(hapi_url) as fhir:
        worker = PipelineWorker(store, translators={},
                                deliverers={"openemr": ready.deliverer, "fhir": FhirBundleDeliverer(fhir)},
                                settings=PipelineSettings(backoff_base_s=1, backoff_max_s=5), clock=clock)
        bad = patient(refused)
        del bad["birthDate"]  # OpenEMR's validation refuses it (DOB required)
        ready.writer.create_patient(patient(accepted))
        refused_id = ready.writer.create_patient(bad)
        ready.writer.create_patient(patient(flaky))
        emulator.fail("POST", r"/fhir/Patient$", status=500)  # the first POST answers 500 (nothing stored)
        emulator.hang("POST", r"/fhir/Patient$", after=True)  # a later one is stored but never answered
        for _ in range(6):
            worker.run(until_idle=True)
            clock.advance(30)
        (accepted_row,) = emulator.patients(pubpid=accepted)
        hapi_copy = fhir.read("Patient", accepted_row["uuid"])
        assert {"system": "urn:meoring:openemr:uuid", "value": accepted_row["uuid"]} in hapi_copy["identifier"]
        assert count(fhir, {"identifier": f"urn:meoring:mrn|{accepted}"}) == 1
        # Refused by OpenEMR: dead-lettered with the reason, and HAPI never heard of it.
        assert emulator.patients(pubpid=refused) == []
        assert count(fhir, {"identifier": f"urn:meoring:mrn|{refused}"}) == 0
        (dead,) = [d for d in store.replay.dead_letters() if d.outbox_id == refused_id]
        assert dead.error_type == "OpenEmrRefused" and "DOB" in dead.reason and "1981" not in dead.reason
        stats = store.stats()
        # 500 and a lost answer: retried until done, one patient in OpenEMR, one in HAPI.
        assert len(emulator.patients(pubpid=flaky)) == 1
        assert count(fhir, {"identifier": f"urn:meoring:mrn|{flaky}"}) == 1
        assert stats.outbox_by_status.get("pending", 0) == 0 and stats.outbox_by_status.get("retrying", 0) == 0


def test_patient_sync_full_then_incremental_then_bulk_export_into_hapi(
    ready: OpenEmr, emulator: OpenEmrEmulator, hapi_url: str
) -> None:
    uuids = emulator.seed_patients(120, prefix=f"S{uuid.uuid4().hex[:6]}-", updated=emulator.now() - 100)
    ready.settings = ready.settings.model_copy(update={"page_size": 50})
    ready.reload()
    with FhirClient(hapi_url) as fhir:
        mirror = ready.mirror(fhir, batch_size=60)
        full = mirror.incremental()  # no cursor yet: a full sync
        assert (full.mode, full.patients) == ("full", 120)
        assert emulator.requests("GET", r"/fhir/Patient$") == 3  # 50 + 50 + 20: paged by _count/_offset
        ids = ",".join(uuids)
        assert count(fhir, {"_id": ids}) == 120
        nothing = mirror.incremental()
        assert nothing.patients == 0  # the same second is not sent twice
        emulator.touch_patient(uuids[3], family="Renamed")
        emulator.touch_patient(uuids[7])
        changed = mirror.incremental()
        assert (changed.mode, changed.patients) == ("incremental", 2)
        assert fhir.read("Patient", uuids[3])["name"][0]["family"] == "Renamed"
        bulk = mirror.bulk()
        assert bulk.patients >= 120 and bulk.cursor is not None  # everything, through $export
        assert emulator.requests("GET", r"/fhir/\$export") == 1
        assert count(fhir, {"_id": ids}) == 120  # idempotent: still one copy each
