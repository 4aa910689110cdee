"""Tests of hub.fhir's client, retry policy, OperationOutcome text and batch checking.

Three kinds:

* pure functions (retry arithmetic, outcome text, batch-response checking): no I/O;
* failure injection over a real loopback wire against :mod:`fhir_peer` (HAPI cannot
  produce 429/5xx/hangs on cue); waits are injected, so these stay fast;
* ``integration``: against a real HAPI FHIR server (``hapi_url``), for everything a real
  server can do: CRUD, conditional operations, paging, transactions, batches, $validate
  and real OperationOutcomes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import hub.fhir
from hub.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RejectedByServer,
    TransientDeliveryError,
    ValidationFailed,
)
from hub.fhir import (
    AsyncFhirClient,
    BatchEntriesRejected,
    BatchEntriesUnavailable,
    FhirClient,
    FhirResponse,
    RetryPolicy,
    describe_outcome,
    entry_failures,
    parse_retry_after,
    raise_for_entry_failures,
)
from tests.fhir_peer import DROP, HANG, FhirPeer, ReceivedRequest, Reply, outcome, refused_url

PHI_NAME = "Zebediah-Quokkafeather"
PHI_MRN = "MRN-98765-XQ"


# --------------------------------------------------------------------------- helpers


class FakeTime:
    """An injected clock whose time moves only when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def clock(self) -> float:
        return self.now


def policy(fake: FakeTime, **overrides: Any) -> RetryPolicy:
    options: dict[str, Any] = {
        "max_attempts": 4,
        "initial_backoff": 0.5,
        "max_backoff": 8.0,
        "max_elapsed": 60.0,
        "max_retry_after": 30.0,
        "sleep": fake.sleep,
        "async_sleep": fake.async_sleep,
        "clock": fake.clock,
        "rand": lambda: 1.0,  # the top of the jitter range: deterministic waits
    }
    options.update(overrides)
    return RetryPolicy(**options)


def patient(identifier: str | None = None, *, pid: str | None = None, family: str = "Test") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": family}], "gender": "unknown"}
    if pid is not None:
        resource["id"] = pid
    if identifier is not None:
        resource["identifier"] = [{"system": "urn:meoring:test", "value": identifier}]
    return resource


def unique(prefix: str = "t") -> str:
    """A FHIR id / identifier value unique to this test; contains a letter (HAPI client ids must)."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


PATIENT_A = {"resourceType": "Patient", "id": "a1", "meta": {"versionId": "1"}}


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


# --------------------------------------------------------------------------- retry policy


def test_backoff_is_exponential_full_jitter_capped() -> None:
    top = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, rand=lambda: 1.0)
    assert [top.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    bottom = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, rand=lambda: 0.0)
    assert bottom.backoff(3) == 0.0
    mid = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, rand=lambda: 0.25)
    assert mid.backoff(3) == 0.5
    assert RetryPolicy(max_backoff=4.0).backoff(10_000) <= 4.0  # no overflow on huge attempt numbers


def test_retry_after_replaces_backoff_and_is_capped() -> None:
    p = RetryPolicy(max_retry_after=10.0, rand=lambda: 1.0)
    assert p.delay(1, 3.0) == 3.0
    assert p.delay(1, 3600.0) == 10.0
    assert p.delay(1, None) == p.backoff(1)


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="max_backoff"):
        RetryPolicy(max_backoff=-1)
    assert RetryPolicy.no_retry().max_attempts == 1


def test_parse_retry_after_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after(" 7 ", now=now) == 7.0
    assert parse_retry_after(None, now=now) is None
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("-5", now=now) is None
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == 30.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now=now) == 0.0  # in the past
    # Measured against the response's Date header when present: skewed local clocks don't matter.
    assert (
        parse_retry_after(
            "Wed, 21 Oct 2015 07:28:45 GMT", now=now, date_header="Wed, 21 Oct 2015 07:28:00 GMT"
        )
        == 45.0
    )


# --------------------------------------------------------------------------- OperationOutcome text


def test_describe_outcome_orders_by_severity_and_names_the_element() -> None:
    oo = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "warning", "code": "informational", "diagnostics": "just so you know"},
            {
                "severity": "error",
                "code": "value",
                "expression": ["Patient.birthDate"],
                "details": {"text": "Invalid date"},
            },
            "not an issue",
        ],
    }
    assert describe_outcome(oo) == (
        "error value at Patient.birthDate: Invalid date; warning informational: just so you know"
    )
    assert describe_outcome({"resourceType": "OperationOutcome"}) == "OperationOutcome without issues"


def test_describe_outcome_redacts_what_the_client_sent_and_truncates() -> None:
    oo = outcome(f'Multiple resources match "Patient?identifier=urn:x|{PHI_MRN}"' + " x" * 400)
    text = describe_outcome(oo, redact=[PHI_MRN, "1"])
    assert PHI_MRN not in text
    assert "<redacted>" in text
    assert len(text) < 400
    assert "1" not in describe_outcome(outcome("a"), redact=["1"])  # trivial; short values stay
    assert "id 1 bad" in describe_outcome(outcome("id 1 bad"), redact=["1"])


# --------------------------------------------------------------------------- batch responses


def _batch_response(*statuses: str, outcome_at: int | None = None) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for index, status in enumerate(statuses):
        response: dict[str, Any] = {"status": status}
        if index == outcome_at:
            response["outcome"] = outcome(f"problem with {PHI_MRN}", code="not-found")
        entries.append({"response": response})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": entries}


def test_entry_failures_by_index() -> None:
    bundle = _batch_response("201 Created", "404 Not Found", "200 OK", "garbage", outcome_at=1)
    failures = entry_failures(bundle, redact=[PHI_MRN])
    assert [(f.index, f.status) for f in failures] == [(1, 404), (3, None)]
    assert failures[0].message == "HTTP 404: error not-found: problem with <redacted>"
    assert failures[0].outcome is not None
    assert not failures[0].retryable
    assert entry_failures(_batch_response("200", "304 Not Modified")) == []
    with pytest.raises(ValueError):
        entry_failures({"resourceType": "Patient"})


def test_raise_for_entry_failures_says_what_to_do_next() -> None:
    raise_for_entry_failures(_batch_response("201 Created", "200 OK"))  # nothing raised
    with pytest.raises(BatchEntriesRejected, match=r"1 of 2 entries failed: entry\[1\] HTTP 404") as rejected:
        raise_for_entry_failures(_batch_response("201 Created", "404 Not Found", outcome_at=1))
    assert isinstance(rejected.value, RejectedByServer)
    assert rejected.value.operation_outcome is not None
    assert [f.index for f in rejected.value.failures] == [1]
    with pytest.raises(BatchEntriesUnavailable) as transient:
        raise_for_entry_failures(_batch_response("503 Service Unavailable", "200 OK", "429"))
    assert isinstance(transient.value, TransientDeliveryError)
    assert [f.index for f in transient.value.failures] == [0, 2]


# --------------------------------------------------------------------------- result type, arguments


def test_fhir_response_reads_location_and_etag() -> None:
    r = FhirResponse(201, None, "http://h/fhir/Patient/abc/_history/3", 'W/"3"')
    assert (r.created, r.resource_type, r.id, r.version_id) == (True, "Patient", "abc", "3")
    r = FhirResponse(200, {"resourceType": "Observation", "id": "o1", "meta": {"versionId": "7"}})
    assert (r.created, r.resource_type, r.id, r.version_id, r.outcome) == (
        False,
        "Observation",
        "o1",
        "7",
        None,
    )
    oo = outcome("deleted", severity="information")
    assert FhirResponse(200, oo).outcome == oo
    assert FhirResponse(200, oo).id is None


def test_constructor_and_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="base_url"):
        FhirClient("ftp://example.org/fhir")
    with pytest.raises(ValueError, match="base_url"):
        FhirClient("http://example.org/fhir?x=1")
    with FhirClient("http://127.0.0.1:9/fhir/") as client:
        assert client.base_url == "http://127.0.0.1:9/fhir"
        with pytest.raises(ValueError, match="FHIR id"):
            client.read("Patient", "../Observation/x")
        with pytest.raises(ValueError, match="resource type"):
            client.read("patient", "a1")
        with pytest.raises(ValueError, match=r"resource\.id"):
            client.update(patient())
        with pytest.raises(ValueError, match=r"Bundle\.type"):
            client.transaction({"resourceType": "Bundle", "type": "batch"})
        with pytest.raises(ValueError, match="prefer"):
            client.create(patient(), prefer="everything")  # type: ignore[arg-type]


def test_public_surface_is_pinned() -> None:
    assert sorted(hub.fhir.__all__) == [
        "AsyncFhirClient",
        "BatchEntriesRejected",
        "BatchEntriesUnavailable",
        "DEFAULT_TIMEOUT",
        "EntryFailure",
        "FhirClient",
        "FhirResponse",
        "Prefer",
        "RetryPolicy",
        "SearchParams",
        "describe_outcome",
        "entry_failures",
        "is_operation_outcome",
        "parse_retry_after",
        "raise_for_entry_failures",
        "validate_resource",
    ]
    assert hub.fhir.__doc__ and "FHIR R4" in hub.fhir.__doc__
    assert hub.fhir.DEFAULT_TIMEOUT.connect == 5.0
    assert hub.fhir.DEFAULT_TIMEOUT.read == 30.0


# --------------------------------------------------------------------------- failure injection (real wire)


def test_429_honours_retry_after_seconds(fake: FakeTime) -> None:
    with FhirPeer(
        Reply(429, outcome("slow down", code="throttled"), {"Retry-After": "7"}), Reply(200, PATIENT_A)
    ) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            assert client.read("Patient", "a1") == PATIENT_A
        assert peer.count == 2
    assert fake.sleeps == [7.0]


def test_429_honours_retry_after_http_date_against_the_response_date(fake: FakeTime) -> None:
    headers = {"Retry-After": "Wed, 21 Oct 2015 07:28:12 GMT", "Date": "Wed, 21 Oct 2015 07:28:00 GMT"}
    with FhirPeer(Reply(429, None, headers), Reply(200, PATIENT_A)) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            client.read("Patient", "a1")
    assert fake.sleeps == [12.0]


def test_retry_after_is_capped(fake: FakeTime) -> None:
    with FhirPeer(Reply(429, None, {"Retry-After": "3600"}), Reply(200, PATIENT_A)) as peer:
        with FhirClient(peer.base_url, retry=policy(fake, max_retry_after=5.0)) as client:
            client.read("Patient", "a1")
    assert fake.sleeps == [5.0]


def test_a_wait_beyond_the_time_budget_gives_up_at_once(fake: FakeTime) -> None:
    with FhirPeer(Reply(429, None, {"Retry-After": "25"}), Reply(200, PATIENT_A)) as peer:
        with FhirClient(peer.base_url, retry=policy(fake, max_elapsed=20.0)) as client:
            with pytest.raises(TransientDeliveryError, match="20 s budget") as caught:
                client.read("Patient", "a1")
        assert peer.count == 1
    assert caught.value.status == 429
    assert fake.sleeps == []


def test_503_then_success_backs_off_exponentially(fake: FakeTime) -> None:
    with FhirPeer(Reply(503), Reply(503), Reply(200, PATIENT_A)) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            assert client.read("Patient", "a1")["id"] == "a1"
        assert peer.count == 3
    assert fake.sleeps == [0.5, 1.0]


def test_5xx_forever_ends_in_transient_error_after_max_attempts(fake: FakeTime) -> None:
    with FhirPeer(Reply(502, b"<html>bad gateway</html>", content_type="text/html")) as peer:
        with FhirClient(peer.base_url, retry=policy(fake, max_attempts=3)) as client:
            with pytest.raises(TransientDeliveryError, match="gave up after 3 attempts") as caught:
                list(client.search("Patient", {"identifier": f"urn:x|{PHI_MRN}"}))
        assert peer.count == 3
    assert caught.value.status == 502
    assert caught.value.url == f"{peer.base_url}/Patient"  # no query string: it holds identifiers
    assert PHI_MRN not in str(caught.value)
    assert len(fake.sleeps) == 2


def test_a_server_that_never_answers_times_out_and_is_retried(fake: FakeTime) -> None:
    timeout = httpx.Timeout(connect=1.0, read=0.2, write=1.0, pool=1.0)
    with FhirPeer(HANG) as peer:
        with FhirClient(peer.base_url, timeout=timeout, retry=policy(fake, max_attempts=2)) as client:
            with pytest.raises(
                TransientDeliveryError, match=r"ReadTimeout.*gave up after 2 attempts"
            ) as caught:
                client.read("Patient", "a1")
        assert peer.count == 2
    assert caught.value.status is None


def test_connection_refused_is_retried_then_transient(fake: FakeTime) -> None:
    with refused_url() as url, FhirClient(url, retry=policy(fake, max_attempts=3)) as client:
        with pytest.raises(TransientDeliveryError, match=r"ConnectError.*gave up after 3 attempts") as caught:
            client.read("Patient", "a1")
    assert caught.value.url == f"{url}/Patient/a1"
    assert fake.sleeps == [0.5, 1.0]


def test_400_is_never_retried_and_the_outcome_becomes_the_message(fake: FakeTime) -> None:
    oo = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "expression": ["Patient.gender"],
                "diagnostics": "bad code",
            }
        ],
    }
    with FhirPeer(Reply(400, oo)) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            with pytest.raises(RejectedByServer) as caught:
                client.create(patient(family=PHI_NAME))
        assert peer.count == 1
    assert fake.sleeps == []
    error = caught.value
    assert error.status == 400
    assert error.operation_outcome == oo
    assert error.url == f"{peer.base_url}/Patient"
    assert str(error) == (
        f"create POST {peer.base_url}/Patient: HTTP 400 Bad Request: "
        "error invalid at Patient.gender: bad code"
    )
    assert PHI_NAME not in str(error)


def test_4xx_without_outcome_is_permanent_and_does_not_quote_the_body(fake: FakeTime) -> None:
    page = f"<html><body>No such thing as {PHI_MRN}</body></html>".encode()
    with FhirPeer(Reply(404, page, content_type="text/html")) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            with pytest.raises(PermanentDeliveryError) as caught:
                client.read("Patient", "a1")
        assert peer.count == 1
    assert not isinstance(caught.value, RejectedByServer)
    assert caught.value.status == 404
    assert "no OperationOutcome (text/html" in str(caught.value)
    assert PHI_MRN not in str(caught.value)


def test_a_non_fhir_success_body_is_an_error(fake: FakeTime) -> None:
    with FhirPeer(Reply(200, b"<html>login</html>", content_type="text/html")) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            with pytest.raises(PermanentDeliveryError, match="not a FHIR JSON resource"):
                client.read("Patient", "a1")
    with FhirPeer(Reply(200, {"resourceType": "Observation", "id": "a1"})) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            with pytest.raises(PermanentDeliveryError, match="expected a Patient"):
                client.read("Patient", "a1")


def test_plain_create_is_not_retried_when_it_may_have_been_applied(fake: FakeTime) -> None:
    created = Reply(201, patient(pid="p1"), {"Location": "/fhir/Patient/p1/_history/1"})
    for action in (Reply(500), Reply(504), DROP):
        with FhirPeer(action, created) as peer:
            with FhirClient(peer.base_url, retry=policy(fake)) as client:
                with pytest.raises(TransientDeliveryError):
                    client.create(patient())
            assert peer.count == 1, action
    # ... but a refusal that proves nothing was applied is retried,
    with FhirPeer(Reply(503), created) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            assert client.create(patient()).id == "p1"
        assert peer.count == 2
    # ... and so is a conditional create (idempotent), or anything when the policy allows it.
    with FhirPeer(Reply(500), created) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            assert client.create(patient("x1"), if_none_exist="identifier=urn:meoring:test|x1").created
        assert peer.count == 2
    with FhirPeer(DROP, created) as peer:
        with FhirClient(peer.base_url, retry=policy(fake, retry_non_idempotent=True)) as client:
            assert client.create(patient()).created
        assert peer.count == 2


def test_transaction_with_unconditional_posts_is_not_retried_on_500(fake: FakeTime) -> None:
    post = {"resource": patient(), "request": {"method": "POST", "url": "Patient"}}
    put = {"resource": patient(pid="p1"), "request": {"method": "PUT", "url": "Patient/p1"}}
    ok = Reply(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": []})
    with FhirPeer(Reply(500), Reply(500), ok) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            with pytest.raises(TransientDeliveryError, match="not idempotent"):
                client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [put, post]})
            assert peer.count == 1
            client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [put]})
            assert peer.count == 3


def test_total_time_budget_bounds_the_retries(fake: FakeTime) -> None:
    with FhirPeer(Reply(503)) as peer:
        p = policy(fake, max_attempts=50, initial_backoff=1.0, max_backoff=4.0, max_elapsed=10.0)
        with FhirClient(peer.base_url, retry=p) as client:
            with pytest.raises(TransientDeliveryError, match="budget"):
                client.read("Patient", "a1")
        assert peer.count == 4  # waits 1 + 2 + 4 = 7; the next 4 would pass 10
    assert sum(fake.sleeps) == 7.0


def test_invalid_resource_is_refused_before_anything_is_sent(fake: FakeTime) -> None:
    bad = patient(family=PHI_NAME) | {"birthDate": "1990-13-45"}
    with FhirPeer(Reply(201)) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            with pytest.raises(ValidationFailed, match=r"Patient\.birthDate") as caught:
                client.create(bad)
            with pytest.raises(ValidationFailed, match=r"Bundle\.entry\[1\]"):
                client.batch(
                    {
                        "resourceType": "Bundle",
                        "type": "batch",
                        "entry": [
                            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
                            {"resource": bad, "request": {"method": "POST", "url": "Patient"}},
                        ],
                    }
                )
        assert peer.count == 0
        assert "1990" not in str(caught.value) and PHI_NAME not in str(caught.value)
        with FhirClient(peer.base_url, retry=policy(fake), validate=False) as client:
            client.create(bad, prefer="minimal")
        assert peer.count == 1


def test_request_headers(fake: FakeTime) -> None:
    with FhirPeer(Reply(201, None, {"Location": "/fhir/Patient/p9/_history/1", "ETag": 'W/"1"'})) as peer:
        with FhirClient(peer.base_url, retry=policy(fake), headers={"X-Tenant": "t1"}) as client:
            result = client.create(patient("v|1&x"), if_none_exist={"identifier": "urn:meoring:test|v|1&x"})
            client.update(patient(pid="p9"), if_match=3, prefer="minimal")
            client.update(patient(pid="p9"), if_match='W/"4"', prefer=None)
            client.conditional_update(patient("m1"), {"identifier": ["urn:a|1", "urn:b|2"]})
    assert (result.status, result.id, result.version_id, result.resource) == (201, "p9", "1", None)
    create, update, update2, cond = peer.requests
    assert create.method == "POST" and create.path == "/fhir/Patient"
    assert create.headers["Accept"] == "application/fhir+json"
    assert create.headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert create.headers["Prefer"] == "return=representation"
    assert create.headers["If-None-Exist"] == "identifier=urn:meoring:test|v|1%26x"
    assert create.headers["X-Tenant"] == "t1"
    assert create.headers["User-Agent"].startswith("meoring-hub/")
    assert create.json()["identifier"][0]["value"] == "v|1&x"
    assert (update.method, update.path) == ("PUT", "/fhir/Patient/p9")
    assert update.headers["If-Match"] == 'W/"3"' and update.headers["Prefer"] == "return=minimal"
    assert update2.headers["If-Match"] == 'W/"4"' and "Prefer" not in update2.headers
    assert (cond.method, cond.path) == ("PUT", "/fhir/Patient")
    assert cond.query == "identifier=urn%3Aa%7C1&identifier=urn%3Ab%7C2"


def test_search_parameters_are_encoded_and_only_data_values_redacted(fake: FakeTime) -> None:
    echo = outcome(f"cannot sort by birthdate when searching family={PHI_NAME} or urn:x%7C{PHI_MRN}")
    with FhirPeer(Reply(400, echo)) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            with pytest.raises(RejectedByServer) as caught:
                list(
                    client.search(
                        "Patient",
                        {
                            "family": PHI_NAME,
                            "identifier": f"urn:x|{PHI_MRN}",
                            "_sort": "birthdate",
                            "active": True,
                            "date": ["ge2020", "lt2021"],
                        },
                    )
                )
        query = peer.requests[0].query
    assert query == (
        f"family={PHI_NAME}&identifier=urn%3Ax%7C{PHI_MRN}&_sort=birthdate&active=true&date=ge2020&date=lt2021"
    )
    message = str(caught.value)
    assert "sort by birthdate" in message
    assert PHI_NAME not in message and PHI_MRN not in message


def test_412_says_which_precondition_failed_and_redacts_echoed_identifiers(
    fake: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    echo = outcome(
        f'Failed to UPDATE resource with match URL "Patient?identifier=urn:x|{PHI_MRN}" because '
        "this search matched 2 resources"
    )
    caplog.set_level(logging.DEBUG, logger="hub.fhir")
    with FhirPeer(Reply(412, echo)) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            with pytest.raises(RejectedByServer, match="matched more than one resource") as conditional:
                client.conditional_update(
                    patient(PHI_MRN, family=PHI_NAME), {"identifier": f"urn:x|{PHI_MRN}"}
                )
            with pytest.raises(
                RejectedByServer, match="If-Match does not name the current version"
            ) as if_match:
                client.update(patient(pid="p1"), if_match="2")
            with pytest.raises(
                RejectedByServer, match=r"HTTP 412 Precondition Failed \(precondition failed\)"
            ):
                client.delete("Patient", "p1")
    assert conditional.value.status == 412
    assert conditional.value.url == f"{peer.base_url}/Patient"
    assert PHI_MRN not in str(conditional.value) and "<redacted>" in str(conditional.value)
    assert "matched more than one" not in str(if_match.value)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert PHI_MRN not in logged and PHI_NAME not in logged


def test_each_attempt_is_logged_without_query_or_body(
    fake: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hub.fhir")
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    with FhirPeer(Reply(503), Reply(200, bundle)) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            assert list(client.search("Patient", {"identifier": f"urn:x|{PHI_MRN}"})) == []
    records = [r for r in caplog.records if r.name == "hub.fhir"]
    assert [(r.fhir_method, r.fhir_path, r.fhir_status, r.fhir_attempt) for r in records] == [  # type: ignore[attr-defined]
        ("GET", "/fhir/Patient", 503, 1),
        ("GET", "/fhir/Patient", 200, 2),
    ]
    assert records[0].levelno == logging.WARNING and "retrying in 0.50 s" in records[0].getMessage()
    assert all(isinstance(r.fhir_elapsed_ms, float) for r in records)  # type: ignore[attr-defined]
    assert PHI_MRN not in caplog.text


def _paging_peer() -> FhirPeer:
    """Three searchset pages linked by absolute next URLs on the peer itself."""

    def page(request: ReceivedRequest) -> Reply:
        number = int(dict(p.split("=") for p in request.query.split("&") if "=" in p).get("page", "1"))
        links = [{"relation": "self", "url": f"{peer.base_url}/Patient"}]
        if number < 3:
            links.append({"relation": "next", "url": f"{peer.base_url}?_getpages=x&page={number + 1}"})
        entries: list[dict[str, Any]] = [
            {"resource": {"resourceType": "Patient", "id": f"p{number}{i}"}, "search": {"mode": "match"}}
            for i in range(2)
        ]
        entries.append({"resource": outcome("note", severity="warning"), "search": {"mode": "outcome"}})
        return Reply(200, {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries})

    peer = FhirPeer(page)
    return peer


def test_search_follows_next_links_lazily(fake: FakeTime) -> None:
    with _paging_peer() as peer, FhirClient(peer.base_url, retry=policy(fake)) as client:
        results = client.search("Patient", {"name": "x"}, page_size=2)
        assert next(results)["id"] == "p10"
        assert peer.count == 1  # lazily: one page fetched so far
        assert [r["id"] for r in results] == ["p11", "p20", "p21", "p30", "p31"]
        assert peer.count == 3
        assert peer.requests[0].query == "name=x&_count=2"
        assert len(list(client.search_pages("Patient"))) == 3


def test_search_refuses_a_next_link_off_the_server_or_in_a_loop(fake: FakeTime) -> None:
    def bundle(next_url: str) -> Reply:
        return Reply(
            200,
            {"resourceType": "Bundle", "type": "searchset", "link": [{"relation": "next", "url": next_url}]},
        )

    with FhirPeer(bundle("http://elsewhere.example/fhir?_getpages=x")) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            with pytest.raises(PermanentDeliveryError, match="next link leaves"):
                list(client.search_pages("Patient"))
        assert peer.count == 1
    with FhirPeer(
        lambda r: bundle(f"http://127.0.0.1:{r.headers['Host'].split(':')[1]}/fhir?page=same")
    ) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            with pytest.raises(PermanentDeliveryError, match="repeats an earlier page"):
                list(client.search_pages("Patient"))
        assert peer.count == 2


def test_validate_remote_returns_the_outcome_even_with_an_error_status(fake: FakeTime) -> None:
    oo = outcome("Patient.gender: unknown code", code="code-invalid")
    with FhirPeer(Reply(412, oo), Reply(404, b"")) as peer:
        with FhirClient(peer.base_url, retry=policy(fake)) as client:
            bad = {"resourceType": "Patient", "gender": 42}
            assert client.validate_remote(bad) == oo  # not validated locally: the server judges
            with pytest.raises(PermanentDeliveryError):
                client.validate_remote(bad)
        assert peer.requests[0].path == "/fhir/Patient/$validate"


def test_async_client_has_the_same_behaviour(fake: FakeTime) -> None:
    async def scenario(base_url: str) -> tuple[dict[str, Any], list[str], FhirResponse]:
        async with AsyncFhirClient(base_url, retry=policy(fake)) as client:
            read = await client.read("Patient", "a1")
            ids = [r["id"] async for r in client.search("Patient")]
            with pytest.raises(RejectedByServer, match="HTTP 400"):
                await client.create(patient())
            with pytest.raises(ValidationFailed):
                await client.create(patient() | {"birthDate": "nope"})
            created = await client.create(patient())
            return read, ids, created

    searchset = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Patient", "id": "s1"}}],
    }
    with FhirPeer(
        Reply(503),
        Reply(200, PATIENT_A),
        Reply(200, searchset),
        Reply(400, outcome("no")),
        Reply(201, None, {"Location": "Patient/n1/_history/1"}),
    ) as peer:
        read, ids, created = asyncio.run(scenario(peer.base_url))
        assert peer.count == 5
    assert read == PATIENT_A and ids == ["s1"] and created.id == "n1"
    assert fake.sleeps == [0.5]


# --------------------------------------------------------------------------- integration: real HAPI FHIR


@pytest.fixture
def fhir(hapi_url: str) -> Iterator[FhirClient]:
    """A client of the session's HAPI server (``hapi_url`` comes from tests/conftest.py)."""
    with FhirClient(hapi_url, retry=RetryPolicy(max_attempts=3, initial_backoff=0.2)) as client:
        yield client


def _identifier_count(client: FhirClient, value: str) -> int:
    return sum(1 for _ in client.search("Patient", {"identifier": f"urn:meoring:test|{value}"}))


@pytest.mark.integration
def test_hapi_capabilities(fhir: FhirClient) -> None:
    statement = fhir.capabilities()
    assert statement["fhirVersion"] == "4.0.1"


@pytest.mark.integration
def test_hapi_create_read_update_vread_delete(fhir: FhirClient) -> None:
    created = fhir.create(patient(unique()))
    assert created.status == 201 and created.created
    assert created.id and created.version_id == "1"
    assert created.resource is not None and created.resource["id"] == created.id
    read = fhir.read("Patient", created.id)
    assert read["name"] == [{"family": "Test"}]
    updated = fhir.update(read | {"gender": "female"}, if_match=created.version_id)
    assert (updated.status, updated.id, updated.version_id) == (200, created.id, "2")
    assert fhir.vread("Patient", created.id, "1")["gender"] == "unknown"
    assert fhir.read("Patient", created.id)["gender"] == "female"
    deleted = fhir.delete("Patient", created.id)
    assert deleted.status in (200, 204)
    with pytest.raises(RejectedByServer) as gone:
        fhir.read("Patient", created.id)
    assert gone.value.status == 410 and "deleted" in str(gone.value)


@pytest.mark.integration
def test_hapi_prefer_return_minimal_and_operation_outcome(fhir: FhirClient) -> None:
    minimal = fhir.create(patient(unique()), prefer="minimal")
    assert minimal.created and minimal.resource is None and minimal.id and minimal.location
    with_outcome = fhir.update(patient(pid=minimal.id), prefer="OperationOutcome")
    assert with_outcome.outcome is not None and with_outcome.id == minimal.id


@pytest.mark.integration
def test_hapi_update_with_client_id_creates_then_updates(fhir: FhirClient) -> None:
    pid = unique("pid")
    first = fhir.update(patient(pid=pid))
    second = fhir.update(patient(pid=pid, family="Other"))
    assert (first.status, first.id, first.version_id) == (201, pid, "1")
    assert (second.status, second.id, second.version_id) == (200, pid, "2")


@pytest.mark.integration
def test_hapi_stale_if_match_is_refused_as_a_version_conflict(fhir: FhirClient) -> None:
    pid = unique("pid")
    fhir.update(patient(pid=pid))
    fhir.update(patient(pid=pid, family="Second"))
    with pytest.raises(RejectedByServer) as caught:
        fhir.update(patient(pid=pid, family="Lost update"), if_match="1")
    assert caught.value.status in (409, 412)  # FHIR says 412; HAPI says 409
    assert "If-Match does not name the current version" in str(caught.value)
    assert caught.value.operation_outcome is not None
    assert "multiple" not in str(caught.value).lower()
    assert "matched more than one" not in str(caught.value)
    assert fhir.read("Patient", pid)["name"] == [{"family": "Second"}]


@pytest.mark.integration
def test_hapi_conditional_create_creates_once(fhir: FhirClient) -> None:
    value = unique()
    query = f"identifier=urn:meoring:test|{value}"
    first = fhir.create(patient(value), if_none_exist=query)
    second = fhir.create(patient(value), if_none_exist={"identifier": f"urn:meoring:test|{value}"})
    assert (first.status, second.status) == (201, 200)
    assert (first.created, second.created) == (True, False)
    assert second.id == first.id
    assert _identifier_count(fhir, value) == 1


@pytest.mark.integration
def test_hapi_conditional_create_with_two_matches_is_412(fhir: FhirClient) -> None:
    value = unique()
    fhir.create(patient(value))
    fhir.create(patient(value))
    with pytest.raises(RejectedByServer) as caught:
        fhir.create(patient(value), if_none_exist=f"identifier=urn:meoring:test|{value}")
    assert caught.value.status == 412
    assert "matched more than one resource" in str(caught.value)
    assert value not in str(caught.value)
    assert _identifier_count(fhir, value) == 2


@pytest.mark.integration
def test_hapi_conditional_update_creates_then_updates_the_match(fhir: FhirClient) -> None:
    value = unique()
    criteria = {"identifier": f"urn:meoring:test|{value}"}
    first = fhir.conditional_update(patient(value), criteria)
    second = fhir.conditional_update(patient(value, family="Changed"), criteria)
    assert (first.status, second.status) == (201, 200)
    assert second.id == first.id and second.version_id == "2"
    assert fhir.read("Patient", str(first.id))["name"] == [{"family": "Changed"}]
    assert _identifier_count(fhir, value) == 1


@pytest.mark.integration
def test_hapi_conditional_update_with_two_matches_is_412_without_the_identifier(fhir: FhirClient) -> None:
    value = unique("mrn")
    fhir.create(patient(value))
    fhir.create(patient(value))
    with pytest.raises(RejectedByServer) as caught:
        fhir.conditional_update(patient(value), {"identifier": f"urn:meoring:test|{value}"})
    error = caught.value
    assert error.status == 412
    assert "matched more than one resource" in str(error)
    assert value not in str(error) and value not in str(error.url)
    assert error.operation_outcome is not None and error.operation_outcome["issue"]


@pytest.mark.integration
def test_hapi_search_follows_next_across_pages(fhir: FhirClient) -> None:
    system = f"urn:meoring:paging:{uuid.uuid4().hex}"
    created = {
        str(fhir.create({"resourceType": "Patient", "identifier": [{"system": system, "value": str(i)}]}).id)
        for i in range(5)
    }
    pages = list(fhir.search_pages("Patient", {"identifier": f"{system}|"}, page_size=2))
    assert len(pages) >= 3
    assert all(len(page.get("entry", [])) <= 2 for page in pages)
    found = [r["id"] for r in fhir.search("Patient", {"identifier": f"{system}|"}, page_size=2)]
    assert sorted(found) == sorted(created)


@pytest.mark.integration
def test_hapi_transaction_of_puts_is_idempotent(fhir: FhirClient) -> None:
    pid, value = unique("pid"), unique("obs")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(pid=pid), "request": {"method": "PUT", "url": f"Patient/{pid}"}},
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "identifier": [{"system": "urn:meoring:test", "value": value}],
                    "code": {"text": "test"},
                    "subject": {"reference": f"Patient/{pid}"},
                },
                "request": {"method": "PUT", "url": f"Observation?identifier=urn:meoring:test|{value}"},
            },
        ],
    }
    first = fhir.transaction(bundle)
    second = fhir.transaction(bundle)
    raise_for_entry_failures(first)
    raise_for_entry_failures(second)

    def ids(response: dict[str, Any]) -> list[str | None]:
        return [FhirResponse(0, location=e["response"]["location"]).id for e in response["entry"]]

    assert first["type"] == "transaction-response"
    assert ids(first) == ids(second)
    assert ids(first)[0] == pid
    assert [e["response"]["status"][:3] for e in first["entry"]] == ["201", "201"]
    assert [e["response"]["status"][:3] for e in second["entry"]] == ["200", "200"]
    assert sum(1 for _ in fhir.search("Observation", {"identifier": f"urn:meoring:test|{value}"})) == 1


@pytest.mark.integration
def test_hapi_failed_transaction_applies_nothing(fhir: FhirClient) -> None:
    value = unique()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(value), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": f"Patient/{unique('missing')}"}},
            {"request": {"method": "DELETE", "url": "Patient?nonsense-parameter=1"}},
        ],
    }
    with pytest.raises(RejectedByServer) as caught:
        fhir.transaction(bundle)
    assert 400 <= (caught.value.status or 0) < 500
    assert _identifier_count(fhir, value) == 0


@pytest.mark.integration
def test_hapi_batch_reports_the_bad_entry_by_index(fhir: FhirClient) -> None:
    pid, value = unique("pid"), unique()
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient(pid=pid), "request": {"method": "PUT", "url": f"Patient/{pid}"}},
            {"request": {"method": "GET", "url": f"Patient/{unique('missing')}"}},
            {"resource": patient(value), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    response = fhir.batch(bundle)
    assert response["type"] == "batch-response"
    failures = entry_failures(response)
    assert [(f.index, f.status) for f in failures] == [(1, 404)]
    with pytest.raises(BatchEntriesRejected, match=r"1 of 3 entries failed: entry\[1\] HTTP 404") as caught:
        raise_for_entry_failures(response)
    assert caught.value.failures[0].outcome is not None
    assert fhir.read("Patient", pid)["id"] == pid  # the good entries were applied
    assert _identifier_count(fhir, value) == 1


@pytest.mark.integration
def test_hapi_validate_reports_a_bad_resource(fhir: FhirClient) -> None:
    good = fhir.validate_remote(patient())
    assert not [i for i in good["issue"] if i["severity"] in ("error", "fatal")]
    # Parses, but breaks R4 cardinality: HAPI answers 200 with error issues.
    invalid = fhir.validate_remote({"resourceType": "Observation", "code": {"text": "x"}})
    assert [i for i in invalid["issue"] if i["severity"] == "error"]
    assert "Observation.status" in describe_outcome(invalid)
    # Does not even parse: HAPI answers 400; still an answer, not an exception.
    unparsable = fhir.validate_remote({"resourceType": "Patient", "gender": "sometimes"})
    assert [i for i in unparsable["issue"] if i["severity"] in ("error", "fatal")]


@pytest.mark.integration
def test_hapi_errors_carry_the_servers_outcome(fhir: FhirClient) -> None:
    with pytest.raises(RejectedByServer) as missing:
        fhir.read("Patient", unique("missing"))
    assert missing.value.status == 404 and "not found" in str(missing.value)
    assert missing.value.operation_outcome is not None
    assert "HAPI-" in str(missing.value)  # the server's own diagnostics made it into the message

    with pytest.raises(RejectedByServer) as bad_param:
        list(fhir.search("Patient", {"no-such-parameter": "x"}))
    assert bad_param.value.status == 400
    assert "no-such-parameter" in str(bad_param.value)

    with pytest.raises(RejectedByServer) as dangling:
        fhir.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "t"},
                "subject": {"reference": f"Patient/{unique('absent')}"},
            }
        )
    assert dangling.value.status in (400, 404, 422)


@pytest.mark.integration
def test_hapi_never_receives_an_invalid_resource(fhir: FhirClient) -> None:
    value = unique()
    with pytest.raises(ValidationFailed, match=r"Patient\.birthDate"):
        fhir.create(patient(value) | {"birthDate": "31/12/1990"})
    assert _identifier_count(fhir, value) == 0


@pytest.mark.integration
def test_hapi_async_client(hapi_url: str) -> None:
    async def scenario() -> None:
        async with AsyncFhirClient(hapi_url) as client:
            value = unique()
            created = await client.create(
                patient(value), if_none_exist=f"identifier=urn:meoring:test|{value}"
            )
            again = await client.create(patient(value), if_none_exist=f"identifier=urn:meoring:test|{value}")
            assert (created.status, again.status, again.id) == (201, 200, created.id)
            found = [
                r["id"] async for r in client.search("Patient", {"identifier": f"urn:meoring:test|{value}"})
            ]
            assert found == [created.id]
            with pytest.raises(DeliveryError):
                await client.read("Patient", unique("missing"))

    asyncio.run(scenario())
