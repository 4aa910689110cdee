"""The MLLP listener over real sockets: durable ACKs, NAKs with ERR, duplicates, framing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.hl7v2.mllp import MllpDecoder, MllpListener, OversizedFrame, encode_frame
from adapters.hl7v2.service import Hl7v2Receiver
from adapters.hl7v2.translator import Hl7v2Translator
from hub.store import Status, Store
from tests.mllp_peer import MllpPeer, segment

SAMPLES = Path(__file__).resolve().parent.parent / "mappings" / "samples" / "hl7v2"


def adt(control_id: str, *, mrn: str = "NW1", enhanced: str = "", version: str = "2.5.1",
        kind: str = "ADT^A01^ADT_A01") -> bytes:
    msh = f"MSH|^~\\&|ADT|NORTHWIND|HUB|HOSP|20260101120000||{kind}|{control_id}|P|{version}|||{enhanced}"
    return (msh + f"\rEVN|A01|20260101120000\rPID|1||{mrn}^^^NORTHWIND^MR||Test^Pat||19800101|F\r"
            "PV1|1|I|W1^1^1\r").encode()


class Running:
    def __init__(self, store: Store, max_bytes: int = 64 * 1024) -> None:
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.writer = store.group_writer()
        self.receiver = Hl7v2Receiver(self.writer, Hl7v2Translator())
        self.listener = MllpListener("127.0.0.1", 0, handler=self.receiver, max_message_bytes=max_bytes,
                                     idle_timeout_s=2)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.listener.start(), self.loop).result(10)
        self.port = self.listener.bound_port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        # An unclosed loop leaks its self-pipe sockets to the garbage collector, whose
        # ResourceWarning (an error here) can land inside another thread's ast.parse.
        self.loop.close()
        self.writer.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    store = Store.open(f"sqlite:///{tmp_path / 'mllp.db'}")
    server = Running(store)
    yield server
    server.stop()
    store.close()


def test_aa_only_after_the_message_is_in_the_inbox(running: Running) -> None:
    peer = MllpPeer(running.port)
    raw = (SAMPLES / "adt_a01.hl7").read_bytes()
    peer.send(raw)
    ack = peer.read_ack()
    # Enhanced mode sample (MSH-15 AL): commit accept.
    assert segment(ack, "MSA")[1:3] == ["CA", "ADT0001"]
    [stored] = running.store.inbox.claim_received(limit=5, lease=__import__("datetime").timedelta(seconds=5))
    assert stored.payload == raw  # byte for byte
    assert stored.message_id == "ADT0001"
    peer.close()


def test_original_mode_aa_and_duplicate_is_acknowledged_not_stored_twice(running: Running) -> None:
    peer = MllpPeer(running.port)
    for _ in range(3):
        peer.send(adt("C100"))
        msa = segment(peer.read_ack(), "MSA")
        assert msa[1:3] == ["AA", "C100"]
    assert running.store.stats().inbox_by_status == {Status.RECEIVED: 1}
    assert running.receiver.duplicates == 2
    peer.close()


def test_unsupported_message_type_is_rejected_with_err_naming_msh9(running: Running) -> None:
    peer = MllpPeer(running.port)
    peer.send(adt("C200", kind="QRY^Q01^QRY_Q01"))
    ack = peer.read_ack()
    assert segment(ack, "MSA")[1:3] == ["AR", "C200"]
    err = segment(ack, "ERR")
    assert err[2].startswith("MSH^1^9")
    assert err[3].startswith("200^")
    assert running.store.stats().inbox_by_status == {}
    peer.close()


def test_garbage_gets_ar_and_the_connection_stays_usable(running: Running) -> None:
    peer = MllpPeer(running.port)
    peer.send(b"this is not HL7 at all")
    ack = peer.read_ack()
    assert segment(ack, "MSA")[1] == "AR"
    assert segment(ack, "ERR")[8]  # a human-readable ERR-8
    peer.send(adt("C300"))
    assert segment(peer.read_ack(), "MSA")[1:3] == ["AA", "C300"]
    peer.close()


def test_unsupported_version_and_empty_control_id(running: Running) -> None:
    peer = MllpPeer(running.port)
    peer.send(adt("C400", version="3.0"))
    ack = peer.read_ack()
    assert segment(ack, "MSA")[1] == "AR"
    assert segment(ack, "ERR")[3].startswith("203^")
    peer.send(adt(""))
    ack = peer.read_ack()
    assert segment(ack, "MSA")[1] in {"AR", "AE"}
    assert segment(ack, "ERR")[2].startswith("MSH^1^10")
    peer.close()


def test_frames_split_into_tiny_chunks_and_noise_between_frames(running: Running) -> None:
    peer = MllpPeer(running.port)
    peer.send_raw(b"\r\n")  # noise before a frame is skipped
    peer.send(adt("C500"), chunk=7)
    assert segment(peer.read_ack(), "MSA")[1:3] == ["AA", "C500"]
    peer.send_raw(encode_frame(adt("C501")) + encode_frame(adt("C502")))  # two frames in one write
    assert segment(peer.read_ack(), "MSA")[2] == "C501"
    assert segment(peer.read_ack(), "MSA")[2] == "C502"
    peer.close()


def test_oversized_message_is_refused_and_next_one_accepted(running: Running) -> None:
    peer = MllpPeer(running.port)
    big = adt("C600") + b"NTE|1||" + b"x" * 100_000 + b"\r"
    peer.send(big, chunk=8192)
    ack = peer.read_ack()
    assert segment(ack, "MSA")[1:3] == ["AE", "C600"]
    assert "exceeds" in segment(ack, "ERR")[8]
    peer.send(adt("C601"))
    assert segment(peer.read_ack(), "MSA")[1:3] == ["AA", "C601"]
    assert running.store.stats().inbox_by_status == {Status.RECEIVED: 1}
    peer.close()


def test_enhanced_mode_ne_sends_no_ack_but_stores(running: Running) -> None:
    peer = MllpPeer(running.port)
    peer.send(adt("C700", enhanced="NE"))
    assert peer.nothing_within(0.5)
    assert running.store.stats().inbox_by_status == {Status.RECEIVED: 1}
    peer.close()


def test_many_concurrent_connections_each_get_their_own_acks(running: Running) -> None:
    results: dict[int, list[str]] = {}

    def sender(n: int) -> None:
        peer = MllpPeer(running.port)
        got = []
        for i in range(20):
            peer.send(adt(f"S{n}-{i}", mrn=f"M{n}"))
            got.append(segment(peer.read_ack(), "MSA")[2])
        results[n] = got
        peer.close()

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(results[n] == [f"S{n}-{i}" for i in range(20)] for n in range(8))
    assert running.store.stats().inbox_by_status == {Status.RECEIVED: 160}


def test_peer_disconnecting_mid_frame_and_before_its_ack(running: Running) -> None:
    peer = MllpPeer(running.port)
    peer.send_raw(encode_frame(adt("C800"))[:30])  # half a frame, then gone
    peer.close()
    peer = MllpPeer(running.port)
    peer.send(adt("C801"))
    peer.close()  # gone before reading the ACK: the message is still stored
    check = MllpPeer(running.port)
    check.send(adt("C802"))
    assert segment(check.read_ack(), "MSA")[2] == "C802"
    stored = {m.message_id for m in running.store.inbox.claim_received(limit=10,
                                                                        lease=__import__("datetime").timedelta(1))}
    assert stored == {"C801", "C802"}
    check.close()


def test_idle_connection_is_closed(running: Running) -> None:
    peer = MllpPeer(running.port)
    peer.sock.settimeout(5)
    assert peer.sock.recv(1) == b""  # idle timeout is 2 s: the listener closed the connection
    peer.close()


def test_decoder_reports_oversized_and_keeps_framing() -> None:
    decoder = MllpDecoder(max_bytes=2000)
    data = b"xx" + encode_frame(b"MSH|a") + encode_frame(b"Y" * 5000) + encode_frame(b"MSH|b")
    out = []
    for i in range(0, len(data), 13):
        out += decoder.feed(data[i : i + 13])
    assert out[0] == b"MSH|a" and out[2] == b"MSH|b"
    assert isinstance(out[1], OversizedFrame) and out[1].limit == 2000
    assert decoder.skipped_bytes == 2
