"""``mllp.ack_after: translated``: the MLLP receiver (real sockets) and ``meoring ingest`` translate
each HL7 v2 message before acknowledging it; one that cannot become FHIR is stored as a dead letter
with the reason and answered AE with an ERR segment. ``stored`` (the default) is unchanged."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import mappings
from adapters.hl7v2.mllp import MllpListener
from adapters.hl7v2.service import Hl7v2Receiver, build_receiver
from adapters.hl7v2.translator import Hl7v2Translator, default_translator
from hub.cli.main import main
from hub.config import load_settings
from hub.errors import ConfigError
from hub.pipeline.worker import PipelineWorker
from hub.store import Status, Store
from tests.mllp_peer import MllpPeer, segment

DATA = Path(__file__).parent / "data" / "hl7v2"
LEASE = timedelta(seconds=30)


def oru(control_id: str, *, second_obx_time: str = "", ack_types: str = "") -> bytes:
    """An ORU whose second OBX has OBX-14 (observation time) only when ``second_obx_time`` is given."""
    return (
        f"MSH|^~\\&|LAB|NORTHWIND|HUB|HOSP|20261125120000||ORU^R01^ORU_R01|{control_id}|P|2.5.1|||{ack_types}\r"
        "PID|1||MRN7^^^NORTHWIND^MR||Zephyrine^Quill||19800101|F\r"
        "OBR|1|PL1|FL1|24331-1^Lipid panel^LN|||20261125110000\r"
        "OBX|1|NM|2093-3^Cholesterol^LN||180|mg/dL|<200||||F|||20261125110000\r"
        f"OBX|2|NM|2571-8^Triglyceride^LN||150|mg/dL|<150||||F|||{second_obx_time}\r"
    ).encode()


def vxu_without_time(control_id: str = "VXU-0001", ack_types: str = "ER|AL") -> bytes:
    """The shipped mappings cannot build its Immunization: RXA-3 (administration time, which
    Immunization.occurrence[x] needs) is empty, and RXA-Immunization.yaml says it is required."""
    raw = (DATA / "vxu_v04_v251.hl7").read_bytes().replace(b"|20250320133000-0400|", b"||")
    return raw.replace(b"|VXU-0001|", f"|{control_id}|".encode()).replace(b"|||ER|AL", f"|||{ack_types}".encode())


@pytest.fixture(scope="module")
def strict_translator(tmp_path_factory: pytest.TempPathFactory) -> Hl7v2Translator:
    """A site layer that makes OBX-14 required: a rule failure that names its HL7 field."""
    site = tmp_path_factory.mktemp("site")
    (site / "hl7v2" / "segments").mkdir(parents=True)
    shipped = (Path(mappings.directory()) / "hl7v2" / "segments" / "OBX-Observation.yaml").read_text()
    rule = "{source: OBX-14, target: effectiveDateTime, transform: datetime}"
    assert rule in shipped
    strict = shipped.replace(rule, rule[:-1] + ", required: true}")
    (site / "hl7v2" / "segments" / "OBX-Observation.yaml").write_text(strict)
    return Hl7v2Translator(mappings.directory(), site)


class Running:
    """A listener on a free port with its own event loop thread and a SQLite store."""

    def __init__(self, store: Store, translator: Hl7v2Translator, *, ack_after: str = "translated",
                 threads: int = 0) -> None:
        self.store = store
        self.rejected_calls = 0
        self.loop = asyncio.new_event_loop()
        self.writer = store.group_writer()
        self.receiver = Hl7v2Receiver(self.writer, translator, ack_after=ack_after,  # type: ignore[arg-type]
                                      translate_threads=threads, on_rejected=self._rejected)
        self.listener = MllpListener("127.0.0.1", 0, handler=self.receiver, idle_timeout_s=10)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.listener.start(), self.loop).result(10)
        self.port = self.listener.bound_port

    def _rejected(self) -> None:
        self.rejected_calls += 1

    def ask(self, raw: bytes) -> bytes:
        peer = MllpPeer(self.port)
        try:
            peer.send(raw)
            return peer.read_ack()
        finally:
            peer.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()  # an unclosed loop leaks sockets: a ResourceWarning, an error here
        self.receiver.close()
        self.writer.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'ack-after.db'}")
    yield opened
    opened.close()


@pytest.fixture
def strict(store: Store, strict_translator: Hl7v2Translator, request: pytest.FixtureRequest) -> Iterator[Running]:
    server = Running(store, strict_translator, threads=getattr(request, "param", 0))
    yield server
    server.stop()


@pytest.fixture
def shipped(store: Store, request: pytest.FixtureRequest) -> Iterator[Running]:
    mode = getattr(request, "param", "translated")
    server = Running(store, default_translator(), ack_after=mode)
    yield server
    server.stop()


@pytest.mark.parametrize("strict", [0, 1], indirect=True, ids=["on-loop", "thread-pool"])
def test_untranslatable_message_is_a_dead_letter_then_ae_with_err(strict: Running) -> None:
    raw = oru("R100")
    ack = strict.ask(raw)
    assert segment(ack, "MSA")[1:3] == ["AE", "R100"]
    err = segment(ack, "ERR")
    assert err[2] == "OBX^2^14^1"  # the second OBX, field 14
    assert err[3].startswith("101^Required field missing^HL70357")
    assert "OBX-14" in err[8] and "Zephyrine" not in ack.decode()
    # Kept durably before the AE: as a dead letter with the (PHI-free) reason.
    assert strict.store.stats().inbox_by_status == {Status.DEAD: 1}
    [letter] = strict.store.replay.dead_letters()
    assert letter.stage == "translate" and letter.error_type == "MappingError"
    assert "OBX-14" in letter.reason and "Zephyrine" not in letter.reason
    stored = strict.store.inbox.get(letter.inbox_id or 0)
    assert stored is not None and stored.payload == raw and stored.message_id == "R100"
    assert strict.receiver.untranslatable == 1 and strict.rejected_calls == 1
    assert strict.store.inbox.claim_received(limit=5, lease=LEASE) == []  # the worker never sees it


def test_replay_requeues_the_dead_letter_and_the_worker_translates_it(strict: Running) -> None:
    assert segment(strict.ask(oru("R110")), "MSA")[1] == "AE"
    assert main_with_store(strict.store, ["replay"]) == 0
    assert strict.store.stats().inbox_by_status == {Status.RECEIVED: 1}
    # The mapping "fixed" (shipped maps, OBX-14 optional): the replayed message now translates.
    worker = PipelineWorker(strict.store, translators={"hl7v2": default_translator()}, deliverers={})
    try:
        result = worker.translate_round()
    finally:
        worker.close()
    assert (result.translated, result.rejected) == (1, 0)
    assert strict.store.stats().inbox_by_status == {Status.TRANSLATED: 1}


def test_a_good_message_gets_aa_and_is_stored_for_the_worker(strict: Running) -> None:
    raw = oru("R120", second_obx_time="20261125110000")
    assert segment(strict.ask(raw), "MSA")[1:3] == ["AA", "R120"]
    [stored] = strict.store.inbox.claim_received(limit=5, lease=LEASE)
    assert stored.payload == raw and stored.status == Status.RECEIVED
    assert strict.store.replay.dead_letters() == []
    assert strict.receiver.untranslatable == 0 and strict.rejected_calls == 0


def test_duplicates_are_answered_the_same_and_not_stored_twice(strict: Running) -> None:
    peer = MllpPeer(strict.port)
    try:
        for _ in range(3):
            peer.send(oru("R130"))
            ack = peer.read_ack()
            assert segment(ack, "MSA")[1:3] == ["AE", "R130"]
            assert segment(ack, "ERR")[2] == "OBX^2^14^1"
        for _ in range(2):
            peer.send(oru("R131", second_obx_time="20261125110000"))
            assert segment(peer.read_ack(), "MSA")[1:3] == ["AA", "R131"]
    finally:
        peer.close()
    assert strict.store.stats().inbox_by_status == {Status.DEAD: 1, Status.RECEIVED: 1}
    assert len(strict.store.replay.dead_letters()) == 1
    assert strict.receiver.duplicates == 3
    assert strict.rejected_calls == 1  # counted once, when it was stored


def test_shipped_mapping_failure_names_the_field_in_err2(shipped: Running) -> None:
    # Original mode (no MSH-15/16): an Immunization without occurrence cannot be built.
    ack = shipped.ask(vxu_without_time(ack_types=""))
    assert segment(ack, "MSA")[1:3] == ["AE", "VXU-0001"]
    err = segment(ack, "ERR")
    assert err[2] == "RXA^1^3^1" and err[3].startswith("101^") and "RXA-3" in err[8]
    [letter] = shipped.store.replay.dead_letters()
    assert letter.error_type == "MappingError" and "RXA-3" in letter.reason
    assert "Kiddo" not in letter.reason


@pytest.mark.parametrize(
    ("ack_types", "expected"),
    [
        ("ER|AL", "AE"),  # the sample's own: application errors wanted
        ("AL|ER", "AE"),
        ("AL|", "AE"),  # MSH-16 empty in enhanced mode reads as AL
        ("AL|NE", "CA"),  # no application ACKs wanted: the commit (as a dead letter) succeeded
        ("AL|SU", "CA"),
        ("ER|NE", None),  # the commit succeeded and MSH-15 wants errors only
        ("NE|NE", None),
    ],
)
def test_enhanced_mode_msh16_decides_whether_the_error_is_heard(shipped: Running, ack_types: str,
                                                                  expected: str | None) -> None:
    peer = MllpPeer(shipped.port)
    try:
        peer.send(vxu_without_time(ack_types=ack_types))
        if expected is None:
            assert peer.nothing_within(0.5)
        else:
            ack = peer.read_ack()
            assert segment(ack, "MSA")[1:3] == [expected, "VXU-0001"]
            if expected == "AE":
                assert segment(ack, "ERR")[3].startswith("101^")
            else:
                assert "ERR|" not in ack.decode()
    finally:
        peer.close()
    # Whatever the answer, the message is kept as a dead letter (the sender cannot lose it).
    assert shipped.store.stats().inbox_by_status == {Status.DEAD: 1}


def test_enhanced_mode_good_message_gets_ca(shipped: Running) -> None:
    raw = (DATA / "vxu_v04_v251.hl7").read_bytes().replace(b"|||ER|AL", b"|||AL|AL")
    assert segment(shipped.ask(raw), "MSA")[1:3] == ["CA", "VXU-0001"]
    assert shipped.store.stats().inbox_by_status == {Status.RECEIVED: 1}


@pytest.mark.parametrize("shipped", ["stored"], indirect=True)
def test_stored_mode_answers_aa_and_the_worker_dead_letters_later(shipped: Running) -> None:
    ack = shipped.ask(vxu_without_time(ack_types=""))
    assert segment(ack, "MSA")[1:3] == ["AA", "VXU-0001"]
    assert shipped.store.stats().inbox_by_status == {Status.RECEIVED: 1}
    assert shipped.store.replay.dead_letters() == []
    worker = PipelineWorker(shipped.store, translators={"hl7v2": default_translator()}, deliverers={})
    try:
        assert worker.translate_round().rejected == 1
    finally:
        worker.close()
    [letter] = shipped.store.replay.dead_letters()
    assert letter.error_type == "MappingError" and "RXA-3" in letter.reason


def test_a_failed_store_still_gets_ae_207_send_it_again(shipped: Running) -> None:
    shipped.writer.close()  # every write now fails
    ack = shipped.ask(vxu_without_time(ack_types=""))
    assert segment(ack, "MSA")[1:3] == ["AE", "VXU-0001"]
    err = segment(ack, "ERR")
    assert err[3].startswith("207^") and "send it again" in err[8]
    assert shipped.store.stats().inbox_by_status == {}


def test_setting_reaches_the_receiver_and_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       store: Store) -> None:
    monkeypatch.delenv("MEORING_CONFIG", raising=False)
    monkeypatch.delenv("MEORING_MLLP__ACK_AFTER", raising=False)
    assert load_settings().mllp.ack_after == "stored"
    monkeypatch.setenv("MEORING_MLLP__ACK_AFTER", "translated")
    settings = load_settings()
    with store.group_writer() as writer:
        receiver = build_receiver(settings, writer)
        receiver.close()
    assert receiver.ack_after == "translated"
    monkeypatch.setenv("MEORING_MLLP__ACK_AFTER", "parsed")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.key == "mllp.ack_after"
    with pytest.raises(ValueError, match="needs a translator"):
        Hl7v2Receiver(store.group_writer(), None, ack_after="translated")


# -- meoring ingest -----------------------------------------------------------------------------
def main_with_store(store: Store, argv: list[str]) -> int:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEORING_STORE__URL", str(store.engine.url))
        patch.delenv("MEORING_CONFIG", raising=False)
        return main(argv)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEORING_STORE__URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.delenv("MEORING_CONFIG", raising=False)
    (tmp_path / "bad.hl7").write_bytes(vxu_without_time("VXU-BAD", ack_types=""))
    (tmp_path / "good.hl7").write_bytes((DATA / "vxu_v04_v251.hl7").read_bytes())
    return tmp_path


def test_ingest_translated_reports_each_untranslatable_message_and_exits_1(
        cli: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MEORING_MLLP__ACK_AFTER", "translated")
    assert main(["ingest", str(cli / "good.hl7"), str(cli / "bad.hl7")]) == 1
    out, err = capsys.readouterr()
    assert "stored 2 message(s), 0 duplicate(s)" in out
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith(f"meoring: {cli / 'bad.hl7'}: message 1 (id VXU-BAD) cannot be translated")
    assert "dead letter" in lines[0] and "RXA-3 is empty" in lines[0] and "Kiddo" not in err
    assert "1 message(s) cannot be translated" in lines[1]
    store = Store.open(f"sqlite:///{cli / 'cli.db'}")
    try:
        assert store.stats().inbox_by_status == {Status.RECEIVED: 1, Status.DEAD: 1}
        [letter] = store.replay.dead_letters()
        assert letter.error_type == "MappingError" and "RXA-3" in letter.reason
    finally:
        store.close()
    # Again: both are duplicates; the bad one is still reported, nothing is stored twice.
    assert main(["ingest", str(cli / "good.hl7"), str(cli / "bad.hl7")]) == 1
    out, err = capsys.readouterr()
    assert "stored 0 message(s), 2 duplicate(s)" in out and "not stored again" in err


def test_ingest_stored_mode_is_unchanged(cli: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MEORING_MLLP__ACK_AFTER", raising=False)
    assert main(["ingest", str(cli / "good.hl7"), str(cli / "bad.hl7")]) == 0
    out, err = capsys.readouterr()
    assert "stored 2 message(s)" in out and err == ""
    store = Store.open(f"sqlite:///{cli / 'cli.db'}")
    try:
        assert store.stats().inbox_by_status == {Status.RECEIVED: 2}
    finally:
        store.close()
