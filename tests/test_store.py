"""The durable store, on SQLite and on a real MariaDB (same tests, both backends)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from hub.store import IncomingMessage, Rejected, Rejection, Status, Store, Translated
from hub.store.records import utcnow
from hub.store.schema import inbox_messages


def msg(i: int | str, *, source: str = "LAB|LIS", payload: bytes | None = None) -> IncomingMessage:
    return IncomingMessage(channel="hl7v2", source=source, payload=payload or f"MSH|^~\\&|{i}".encode(),
                           message_id=str(i))


LEASE = timedelta(seconds=30)


def test_payload_is_stored_byte_for_byte(store: Store) -> None:
    raw = b"\xef\xbb\xbfMSH|^~\\&|A\rPID|||1\r\n\x00\xff" + bytes(range(256)) * 2000  # ~0.5 MB, odd bytes
    receipt = store.inbox.receive(IncomingMessage("hl7v2", "A|B", raw, message_id="x1"))
    stored = store.inbox.get(receipt.inbox_id)
    assert stored is not None
    assert stored.payload == raw
    assert stored.status == Status.RECEIVED
    assert stored.received_at <= utcnow()


def test_duplicate_message_id_from_same_sender_is_recognised(store: Store) -> None:
    first = store.inbox.receive(msg(1))
    again = store.inbox.receive(msg(1, payload=b"different bytes, same MSH-10"))
    other_sender = store.inbox.receive(msg(1, source="OTHER|APP"))
    assert not first.duplicate
    assert again.duplicate and again.inbox_id == first.inbox_id
    assert not other_sender.duplicate and other_sender.inbox_id != first.inbox_id


def test_duplicates_inside_one_group_and_without_ids(store: Store) -> None:
    no_id = IncomingMessage("fhir", "file", b"{}")
    receipts = store.inbox.receive_many([msg(1), msg(2), msg(1), no_id, no_id])
    assert [r.duplicate for r in receipts] == [False, False, True, False, False]
    assert receipts[2].inbox_id == receipts[0].inbox_id
    assert receipts[3].inbox_id != receipts[4].inbox_id  # no id: both kept
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(inbox_messages)).scalar_one() == 4


def test_group_commit_answers_every_caller_after_one_shared_commit(store: Store) -> None:
    results = {}
    with store.group_writer(max_batch=64, max_wait=0.01) as writer:
        def send(i: int) -> None:
            results[i] = writer.receive(msg(i))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        commits = writer.commits
    assert len(results) == 40
    assert len({r.inbox_id for r in results.values()}) == 40
    assert commits < 40  # grouped: fewer commits than messages
    assert store.stats().inbox_by_status[Status.RECEIVED] == 40


def test_group_commit_failure_reaches_every_waiter(tmp_path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'x.db'}")
    writer = store.group_writer()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE idempotency_keys")
    future = writer.submit(msg(1))
    with pytest.raises(OperationalError, match="idempotency_keys"):
        future.result(10)
    writer.close()
    store.close()


def test_claims_are_exclusive_until_the_lease_expires(store: Store) -> None:
    store.inbox.receive_many([msg(i) for i in range(5)])
    first = store.inbox.claim_received(limit=3, lease=LEASE)
    second = store.inbox.claim_received(limit=10, lease=LEASE)
    assert len(first) == 3 and len(second) == 2
    assert not {m.inbox_id for m in first} & {m.inbox_id for m in second}
    assert store.inbox.claim_received(limit=10, lease=LEASE) == []


def test_expired_claim_is_taken_over(store_url: str) -> None:
    now = [utcnow()]
    store = Store(Store.open(store_url).engine, clock=lambda: now[0])
    store.inbox.receive(msg(1))
    dead_worker = store.inbox.claim_received(limit=1, lease=timedelta(seconds=5))
    assert store.inbox.claim_received(limit=1, lease=timedelta(seconds=5)) == []
    now[0] += timedelta(seconds=6)
    taken = store.inbox.claim_received(limit=1, lease=timedelta(seconds=5))
    assert [m.inbox_id for m in taken] == [dead_worker[0].inbox_id]
    # The dead worker's late result is ignored: its claim is gone.
    applied = store.outbox.record_translations(
        [Translated(dead_worker[0].inbox_id, dead_worker[0].claim_token, "fhir", "transaction", "{}", 1)]
    )
    assert applied == 0
    store.close()


def test_life_of_a_message_translated_delivered(store: Store) -> None:
    receipt = store.inbox.receive(msg(1))
    [claimed] = store.inbox.claim_received(limit=1, lease=LEASE)
    store.outbox.record_translations(
        [Translated(claimed.inbox_id, claimed.claim_token, "fhir", "transaction", '{"a":1}', 3, ["PID-30"])]
    )
    assert store.inbox.get(receipt.inbox_id).status == Status.TRANSLATED  # type: ignore[union-attr]
    [entry] = store.outbox.claim_due(limit=5, lease=LEASE)
    assert entry.body == '{"a":1}' and entry.resource_count == 3 and entry.attempts == 1
    assert entry.received_at is not None
    store.outbox.mark_delivered(entry)
    stats = store.stats()
    assert stats.inbox_by_status == {Status.DELIVERED: 1}
    assert stats.oldest_pending_inbox_id is None


def test_retry_then_dead_letter_with_reason_then_replay(store_url: str) -> None:
    now = [utcnow()]
    store = Store(Store.open(store_url).engine, clock=lambda: now[0])
    store.inbox.receive(msg(1))
    [claimed] = store.inbox.claim_received(limit=1, lease=LEASE)
    store.outbox.record_translations([Translated(claimed.inbox_id, claimed.claim_token, "fhir", "transaction",
                                                 "{}", 1)])
    [entry] = store.outbox.claim_due(limit=1, lease=LEASE)
    store.outbox.mark_failed(entry, error_type="TransientDeliveryError", reason="HTTP 503",
                             retry_at=now[0] + timedelta(seconds=10))
    assert store.stats().inbox_by_status == {Status.RETRYING: 1}
    assert store.outbox.claim_due(limit=1, lease=LEASE) == []  # not due yet
    now[0] += timedelta(seconds=11)
    [entry] = store.outbox.claim_due(limit=1, lease=LEASE)
    assert entry.attempts == 2
    store.outbox.mark_failed(entry, error_type="RejectedByServer", reason="HTTP 422: Patient.gender invalid",
                             retry_at=None)
    [letter] = store.replay.dead_letters()
    assert letter.stage == "deliver" and "Patient.gender" in letter.reason
    assert store.stats().inbox_by_status == {Status.DEAD: 1}
    assert store.replay.replay_dead() == 1
    assert store.replay.dead_letters() == []
    [entry] = store.outbox.claim_due(limit=1, lease=LEASE)
    assert entry.attempts == 1  # fresh attempt count after replay
    store.close()


def test_translate_rejection_dead_letters_and_replays_to_received(store: Store) -> None:
    store.inbox.receive(msg(1))
    [claimed] = store.inbox.claim_received(limit=1, lease=LEASE)
    store.outbox.record_translations([Rejected(claimed.inbox_id, claimed.claim_token, "MappingError",
                                               "MappingError at PID-3: required field is empty")])
    [letter] = store.replay.dead_letters()
    assert letter.stage == "translate" and "PID-3" in letter.reason
    assert store.replay.replay_dead([letter.dead_letter_id]) == 1
    assert store.inbox.get(claimed.inbox_id).status == Status.RECEIVED  # type: ignore[union-attr]


def test_a_rejected_message_is_stored_dead_with_its_letter_in_the_same_group(store: Store) -> None:
    # ``mllp.ack_after: translated``: stored for audit and replay, never handed to the worker.
    why = Rejection("ValidationFailed", "ValidationFailed at OBX-5: not a number")
    rejected = IncomingMessage("hl7v2", "LAB|LIS", b"MSH|^~\\&|bad", message_id="bad-1", rejection=why)
    with store.group_writer() as writer:
        receipts = store.inbox.receive_many([msg(1), rejected, msg(2)])
        again = writer.receive(IncomingMessage("hl7v2", "LAB|LIS", b"other bytes", message_id="bad-1",
                                               rejection=why))
    assert [r.status for r in receipts] == [Status.RECEIVED, Status.DEAD, Status.RECEIVED]
    assert again.duplicate and again.inbox_id == receipts[1].inbox_id and again.status == Status.DEAD
    dead = store.inbox.get(receipts[1].inbox_id)
    assert dead is not None and dead.status == Status.DEAD and dead.payload == b"MSH|^~\\&|bad"
    assert dead.last_error == why.reason
    [letter] = store.replay.dead_letters()  # one letter: the duplicate added none
    assert (letter.inbox_id, letter.stage, letter.error_type, letter.reason) == (
        receipts[1].inbox_id, "translate", "ValidationFailed", why.reason)
    assert {m.inbox_id for m in store.inbox.claim_received(limit=10, lease=LEASE)} == {
        receipts[0].inbox_id, receipts[2].inbox_id}
    assert store.stats().open_dead_letters == 1
    assert store.replay.replay_dead() == 1
    [requeued] = store.inbox.claim_received(limit=10, lease=LEASE)
    assert requeued.inbox_id == receipts[1].inbox_id and requeued.last_error is None


def test_replay_time_range_requeues_and_supersedes(store_url: str) -> None:
    base = datetime(2026, 1, 1, 12, 0)
    store = Store.open(store_url)
    store.inbox.receive_many([
        IncomingMessage("hl7v2", "S", b"a", message_id="a", received_at=base),
        IncomingMessage("hl7v2", "S", b"b", message_id="b", received_at=base + timedelta(hours=1)),
        IncomingMessage("hl7v2", "S", b"c", message_id="c", received_at=base + timedelta(hours=3)),
    ])
    claimed = store.inbox.claim_received(limit=10, lease=LEASE)
    store.outbox.record_translations([Translated(m.inbox_id, m.claim_token, "fhir", "transaction", "{}", 1)
                                      for m in claimed])
    for entry in store.outbox.claim_due(limit=10, lease=LEASE):
        store.outbox.mark_delivered(entry)
    count = store.replay.replay_range(base, base + timedelta(hours=2))
    assert count == 2
    stats = store.stats()
    assert stats.inbox_by_status == {Status.RECEIVED: 2, Status.DELIVERED: 1}
    assert stats.outbox_by_status == {Status.SUPERSEDED: 2, Status.DELIVERED: 1}
    store.close()


def test_feed_cursor_and_read_cache(store_url: str) -> None:
    now = [utcnow()]
    store = Store(Store.open(store_url).engine, clock=lambda: now[0])
    assert store.cursors.get("orthanc:changes") is None
    store.cursors.set("orthanc:changes", "41")
    store.cursors.set("orthanc:changes", "42")
    assert store.cursors.get("orthanc:changes") == "42"
    store.cache.put("openemr:Patient/1", {"id": "1"}, ttl=timedelta(seconds=60))
    assert store.cache.get("openemr:Patient/1") == {"id": "1"}
    now[0] += timedelta(seconds=61)
    assert store.cache.get("openemr:Patient/1") is None  # expired
    store.cache.put("openemr:Patient/2", {"id": "2"}, ttl=timedelta(seconds=60))
    assert store.cache.invalidate(prefix="openemr:Patient/") == 2
    assert store.cache.get("openemr:Patient/2") is None
    store.close()


def test_schema_is_current_after_open_and_migrations_are_idempotent(store_url: str) -> None:
    first = Store.open(store_url)
    assert first.schema_is_current()
    first.close()
    again = Store.open(store_url)  # upgrading an up-to-date schema changes nothing
    assert again.schema_is_current()
    again.close()


def test_sqlite_driver_path_stores_exactly_what_sqlalchemy_core_stores(tmp_path) -> None:
    """The SQLite receive runs on the driver's cursor (speed); its rows must be the rows the
    Core path writes, byte for byte (timestamps as SQLAlchemy's DateTime text, statuses, keys)."""
    from hub.store.inbox import _CoreRows, _receive
    from hub.store.records import Rejection

    now = datetime(2026, 3, 4, 5, 6, 7, 890123)
    batch = [
        IncomingMessage("hl7v2", "LAB|LIS", b"one", message_id="1", received_at=now - timedelta(seconds=1)),
        IncomingMessage("hl7v2", "LAB|LIS", b"two", message_id="2", content_type="x-application/hl7-v2+er7"),
        IncomingMessage("hl7v2", "LAB|LIS", b"again", message_id="1"),  # duplicate inside the group
        IncomingMessage("fhir", "X", b"{}"),  # no id: never a duplicate
        IncomingMessage("hl7v2", "LAB|LIS", b"bad", message_id="3", rejection=Rejection("MappingError", "OBX-5: no")),
    ]
    fast = Store(Store.open(f"sqlite:///{tmp_path / 'fast.db'}").engine, clock=lambda: now)
    core = Store(Store.open(f"sqlite:///{tmp_path / 'core.db'}").engine, clock=lambda: now)
    fast_receipts = fast.inbox.receive_many(batch)
    with core.engine.begin() as conn:
        core_receipts = _receive(_CoreRows(conn), batch, now)
    assert fast_receipts == core_receipts
    assert [r.duplicate for r in fast_receipts] == [False, False, True, False, False]
    assert fast.inbox.receive_many(batch[:1])[0] == core_receipts[0].__class__(
        inbox_id=fast_receipts[0].inbox_id, duplicate=True, status=Status.RECEIVED
    )

    def dump(store: Store) -> list[list[tuple[object, ...]]]:
        with store.engine.connect() as conn:
            return [
                [tuple(row) for row in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1")]
                for table in ("inbox_messages", "idempotency_keys", "dead_letters")
            ]

    assert dump(fast) == dump(core)
    stored = fast.inbox.get(fast_receipts[0].inbox_id)
    assert stored is not None and stored.received_at == now - timedelta(seconds=1)
    assert fast.stats().inbox_by_status == {Status.RECEIVED: 3, Status.DEAD: 1}
    fast.close()
    core.close()
