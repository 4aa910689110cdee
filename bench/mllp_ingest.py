"""MLLP ingest over loopback: sustained messages/s and ACK latency p50/p99, durable ACK
(AA only after the inbox commit, SQLite WAL synchronous=FULL, grouped commits), with 1 and
8 concurrent senders.

Baseline, same run: the same listener answering AA without storing anything — the cost of
framing, parsing and ACK alone, so the ratio shows what durability costs.
The listener runs in its own process; senders are threads in this one.
``--ack-after translated`` measures the receiver that also translates each message before its
ACK (``mllp.ack_after: translated``); ``--translate-threads N`` runs those translations on N
threads instead of the event loop.
Usage: python bench/mllp_ingest.py [--seconds S] [--senders 1,8] [--ack-after stored|translated]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.hl7v2.mllp import MllpListener, encode_frame

ORU = (
    "MSH|^~\\&|LAB|NORTHWIND|HUB|HOSP|20261125120000||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
    "PID|1||MRN{n}^^^NORTHWIND^MR||Bench^Pat||19800101|F\r"
    "OBR|1|PL{cid}|FL{cid}|24331-1^Lipid panel^LN|||20261125110000\r"
    + "".join(f"OBX|{i}|NM|2093-3^Cholesterol^LN||{180 + i}|mg/dL|<200||||F\r" for i in range(1, 11))
)


class AckOnly:
    """Baseline handler: parse the header and answer AA, store nothing."""

    async def handle(self, payload: bytes, peer: str) -> bytes | None:
        from adapters.hl7v2.ack import AckCode, build_ack
        from adapters.hl7v2.parser import parse

        return build_ack(parse(payload).header, AckCode.AA)

    async def reject_oversized(self, head: bytes, limit: int, peer: str) -> bytes | None:
        return None


def serve(mode: str, db: str, ready: mp.Queue, ack_after: str, threads: int) -> None:  # type: ignore[type-arg]
    async def main() -> None:
        if mode == "durable":
            from adapters.hl7v2.service import Hl7v2Receiver
            from adapters.hl7v2.translator import Hl7v2Translator
            from hub.store import Store

            store = Store.open(db)
            writer = store.group_writer().start()
            handler = Hl7v2Receiver(writer, Hl7v2Translator(), ack_after=ack_after,  # type: ignore[arg-type]
                                    translate_threads=threads)
        else:
            handler = AckOnly()  # type: ignore[assignment]
        listener = MllpListener("127.0.0.1", 0, handler=handler)  # type: ignore[arg-type]
        await listener.start()
        ready.put(listener.bound_port)
        await listener.serve_forever()

    asyncio.run(main())


def drive(port: int, senders: int, seconds: float) -> tuple[float, float, float]:
    latencies: list[list[float]] = [[] for _ in range(senders)]
    stop = time.monotonic() + seconds

    def sender(n: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        i = 0
        while time.monotonic() < stop:
            frame = encode_frame(ORU.format(cid=f"{n}-{i}-{time.time_ns()}", n=n).encode())
            start = time.perf_counter()
            sock.sendall(frame)
            while b"\x1c\r" not in buffer:
                buffer += sock.recv(65536)
            _, _, buffer = buffer.partition(b"\x1c\r")
            latencies[n].append(time.perf_counter() - start)
            i += 1
        sock.close()

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(senders)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    flat = sorted(x for per in latencies for x in per)
    rate = len(flat) / elapsed
    p50 = statistics.median(flat) * 1000
    p99 = flat[int(len(flat) * 0.99) - 1] * 1000
    return rate, p50, p99


def measure(mode: str, senders: int, seconds: float, ack_after: str = "stored",
            threads: int = 0) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    db = f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-mllp-')) / 'inbox.db'}"
    process = ctx.Process(target=serve, args=(mode, db, ready, ack_after, threads), daemon=True)
    process.start()
    try:
        port = ready.get(timeout=60)
        drive(port, senders, 1.0)  # warm-up
        return drive(port, senders, seconds)
    finally:
        process.terminate()
        process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--senders", default="1,8")
    parser.add_argument("--ack-after", choices=("stored", "translated"), default="stored")
    parser.add_argument("--translate-threads", type=int, default=None,
                        help="translation threads in translated mode (default: the receiver's own default)")
    args = parser.parse_args()
    from adapters.hl7v2.service import TRANSLATE_THREADS

    threads = TRANSLATE_THREADS if args.translate_threads is None else args.translate_threads
    label = "durable" if args.ack_after == "stored" else "translated"
    results = {}
    for senders in (int(s) for s in args.senders.split(",")):
        for mode in ("durable", "ack-only"):
            rate, p50, p99 = measure(mode, senders, args.seconds, args.ack_after, threads)
            results[(mode, senders)] = rate
            name = label if mode == "durable" else mode
            print(f"{name:<10} senders={senders}: {rate:8.0f} msg/s  ack p50={p50:6.2f} ms  p99={p99:6.2f} ms")
    top = max(int(s) for s in args.senders.split(","))
    durable, baseline = results[("durable", top)], results[("ack-only", top)]
    print(f"RESULT mllp_{label}_ingest_{top}_senders={durable:.0f} msg/s "
          f"baseline mllp_ack_only_{top}_senders={baseline:.0f} msg/s ratio={durable / baseline:.2f}")


if __name__ == "__main__":
    main()
