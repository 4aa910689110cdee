"""The worker's state machine: translate → deliver → delivered | retrying | dead.

These tests drive the worker with a scripted deliverer (no network) to pin the state
transitions; tests/test_pipeline_hapi.py runs the same loop against the real HAPI.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from adapters.hl7v2 import Hl7v2Translator
from hub.config import PipelineSettings
from hub.errors import RejectedByServer, TransientDeliveryError
from hub.fhir.client import FhirClient
from hub.fhir.retry import RetryPolicy
from hub.metrics import PipelineMetrics
from hub.pipeline.backoff import backoff_delay
from hub.pipeline.delivery import FhirBundleDeliverer
from hub.pipeline.fhir_passthrough import FhirBundlePassthrough
from hub.pipeline.worker import PipelineWorker
from hub.store import IncomingMessage, Status, Store
from hub.store.records import OutboxEntry, utcnow
from tests.fhir_peer import FhirPeer, Reply, outcome, refused_url
from tests.test_hl7v2_translate import SAMPLES


class ScriptedDeliverer:
    """Fails as told for the first N calls, then succeeds; records what it was given."""

    target = "fhir"

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.failures = list(failures or [])
        self.delivered: list[dict] = []

    def deliver(self, entry: OutboxEntry) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.delivered.append(json.loads(entry.body))


def patient(pid: str) -> bytes:
    return json.dumps({"resourceType": "Patient", "id": pid, "name": [{"family": "Test"}]}).encode()


def fhir_msg(pid: str) -> IncomingMessage:
    return IncomingMessage("fhir", "unit", patient(pid), message_id=pid)


def make_worker(store: Store, deliverer: ScriptedDeliverer, clock=utcnow, **settings) -> PipelineWorker:
    base = {"backoff_base_s": 1, "backoff_max_s": 4, "max_attempts": 3}
    base.update(settings)
    return PipelineWorker(store, translators={"fhir": FhirBundlePassthrough()}, deliverers={"fhir": deliverer},
                          settings=PipelineSettings(**base), clock=clock,
                          metrics=PipelineMetrics(CollectorRegistry()))


def test_messages_flow_to_delivered(store: Store) -> None:
    store.inbox.receive_many([fhir_msg(f"p{i}") for i in range(7)])
    deliverer = ScriptedDeliverer()
    totals = make_worker(store, deliverer).run(until_idle=True)
    assert totals.translated == 7 and totals.delivered == 7
    assert store.stats().inbox_by_status == {Status.DELIVERED: 7}
    ids = sorted(b["entry"][0]["request"]["url"] for b in deliverer.delivered)
    assert ids == sorted(f"Patient/p{i}" for i in range(7))


def test_untranslatable_message_is_dead_lettered_with_its_reason(store: Store) -> None:
    store.inbox.receive(IncomingMessage("fhir", "unit", b'{"resourceType": "Patient"}', message_id="noid"))
    store.inbox.receive(IncomingMessage("fhir", "unit", b"not json", message_id="junk"))
    store.inbox.receive(IncomingMessage("dicom", "unit", b"\x00", message_id="nochan"))
    totals = make_worker(store, ScriptedDeliverer()).run(until_idle=True)
    assert totals.rejected == 3
    reasons = sorted(letter.reason for letter in store.replay.dead_letters())
    assert any("Patient.id" in r for r in reasons)
    assert any("not UTF-8 JSON" in r for r in reasons)
    assert any("no translator for channel 'dicom'" in r for r in reasons)


def test_transient_failures_retry_with_backoff_then_succeed(store_url: str) -> None:
    now = [utcnow()]
    store = Store(Store.open(store_url).engine, clock=lambda: now[0])
    store.inbox.receive(fhir_msg("r1"))
    deliverer = ScriptedDeliverer([TransientDeliveryError("HTTP 503", status=503)])
    worker = make_worker(store, deliverer, clock=lambda: now[0])
    first = worker.run_once()
    assert first.retried == 1
    assert store.stats().inbox_by_status == {Status.RETRYING: 1}
    assert worker.run_once().work == 0  # not due yet
    now[0] += timedelta(seconds=2)  # backoff for attempt 1 is within [0.5, 1] s
    assert worker.run_once().delivered == 1
    assert store.stats().inbox_by_status == {Status.DELIVERED: 1}
    store.close()


def test_retries_run_out_into_a_dead_letter(store_url: str) -> None:
    now = [utcnow()]
    store = Store(Store.open(store_url).engine, clock=lambda: now[0])
    store.inbox.receive(fhir_msg("r2"))
    deliverer = ScriptedDeliverer([TransientDeliveryError("connect refused")] * 5)
    worker = make_worker(store, deliverer, clock=lambda: now[0])
    for _ in range(6):
        worker.run_once()
        now[0] += timedelta(seconds=10)
    [letter] = store.replay.dead_letters()
    assert letter.stage == "deliver" and "connect refused" in letter.reason
    assert store.stats().inbox_by_status == {Status.DEAD: 1}
    assert len(deliverer.failures) == 2  # exactly max_attempts=3 tries were made
    store.close()


def test_permanent_rejection_is_not_retried(store: Store) -> None:
    store.inbox.receive(fhir_msg("r3"))
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
    deliverer = ScriptedDeliverer([RejectedByServer("HTTP 422: Patient.gender", status=422,
                                                    operation_outcome=outcome)])
    totals = make_worker(store, deliverer).run(until_idle=True)
    assert totals.dead == 1 and totals.delivered == 0
    assert "Patient.gender" in store.replay.dead_letters()[0].reason


def test_a_crashing_deliverer_is_retried_not_lost(store: Store) -> None:
    store.inbox.receive(fhir_msg("r4"))
    deliverer = ScriptedDeliverer([RuntimeError("driver bug")])
    worker = make_worker(store, deliverer, backoff_base_s=0.001, backoff_max_s=0.001)
    assert worker.run_once().retried == 1
    assert "unexpected error" in store.inbox.get(1).last_error  # type: ignore[union-attr]


def test_backoff_grows_and_is_capped() -> None:
    delays = [backoff_delay(a, base_s=2, max_s=60).total_seconds() for a in range(1, 10)]
    assert 1 <= delays[0] <= 2
    assert 8 <= delays[3] <= 16
    assert all(d <= 60 for d in delays) and delays[-1] >= 30


def test_a_held_delivery_waits_without_using_up_attempts(store_url: str) -> None:
    from hub.errors import DeliveryHeld

    now = [utcnow()]
    store = Store(Store.open(store_url).engine, clock=lambda: now[0])
    store.inbox.receive(fhir_msg("h1"))
    # Held ten times in a row with max_attempts=3: still waiting, never dead.
    deliverer = ScriptedDeliverer([DeliveryHeld("re-login required")] * 10)
    worker = make_worker(store, deliverer, clock=lambda: now[0])
    for _ in range(10):
        worker.run_once()
        now[0] += timedelta(seconds=61)
    assert store.replay.dead_letters() == []
    assert store.stats().inbox_by_status == {Status.RETRYING: 1}
    assert worker.run_once().delivered == 1  # the person acted: it goes through
    store.close()


def test_a_409_conflict_from_a_race_is_retried_not_dead_lettered(store: Store) -> None:
    store.inbox.receive(fhir_msg("c1"))
    conflict = RejectedByServer("HTTP 409 Conflict: conditional constraint failure", status=409)
    deliverer = ScriptedDeliverer([conflict])
    worker = make_worker(store, deliverer, backoff_base_s=0.001, backoff_max_s=0.001)
    assert worker.run_once().retried == 1
    assert store.replay.dead_letters() == []
    import time

    time.sleep(0.01)
    assert worker.run_once().delivered == 1


# -- the FHIR deliverer's pre-flight search -------------------------------------------------------
def _oru_entry() -> OutboxEntry:
    bundle = Hl7v2Translator().translate_raw((SAMPLES / "oru_r01.hl7").read_bytes())[0].bundle
    return OutboxEntry(1, 1, "fhir", "transaction", json.dumps(bundle), len(bundle["entry"]), 0, utcnow())


def test_failed_preflight_search_is_retryable_and_sends_no_transaction() -> None:
    """An ORU's Patient and Encounter are create-if-absent entries: the deliverer first asks the
    server which exist. A 503 there (HAPI cannot be made to answer one: the scripted peer does) or
    a refused connection is a TransientDeliveryError, as a failed transaction would be, and the
    transaction is not sent."""
    entry = _oru_entry()
    retry = RetryPolicy(max_attempts=2, sleep=lambda _: None)
    with FhirPeer(Reply(503, outcome("busy"))) as peer, FhirClient(peer.base_url, retry=retry) as client:
        with pytest.raises(TransientDeliveryError) as info:
            FhirBundleDeliverer(client).deliver(entry)
        requests = list(peer.requests)
    assert info.value.retryable and info.value.status == 503
    assert [(r.method, r.path) for r in requests] == [("GET", "/fhir/Patient")] * 2  # no POST of the bundle
    assert "_elements=id" in requests[0].query and "_id=m" in requests[0].query
    # never answered from a server's cached result set (HAPI keeps them a minute by default)
    assert {k.lower(): v for k, v in requests[0].headers.items()}["cache-control"] == "no-cache"
    with refused_url() as url, FhirClient(url, retry=RetryPolicy.no_retry()) as client:
        with pytest.raises(TransientDeliveryError):
            FhirBundleDeliverer(client).deliver(entry)


def test_translation_on_receipt_returns_the_mapping_error_and_survives_a_hub_bug() -> None:
    from hub.errors import MappingError
    from hub.pipeline.translator import translation_error

    def bad_message() -> None:
        raise MappingError("OBX-5 is not a number", location="OBX-5")

    def hub_bug() -> None:
        raise RuntimeError("boom")

    error = translation_error(bad_message)
    assert isinstance(error, MappingError) and error.location == "OBX-5"
    assert translation_error(hub_bug) is None  # stored as received; the worker decides later
    assert translation_error(lambda: {"resourceType": "Bundle"}) is None
