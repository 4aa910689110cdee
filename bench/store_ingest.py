"""Durable inbox writes per second: SQLite (WAL, synchronous=FULL) and MariaDB, with and
without grouped commits, from concurrent senders (as MLLP connections are).

Baseline: the same senders, each message committed on its own (one fsync each).
Usage: python bench/store_ingest.py [--messages N] [--senders N] [--no-mariadb]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.stack (the MariaDB starter)

from hub.store import IncomingMessage, Store

# A typical ORU^R01 is 1-3 kB.
PAYLOAD = (
    b"MSH|^~\\&|LAB|HOSP|HUB|HOSP|20261125120000||ORU^R01|{i}|P|2.5.1\r"
    + b"OBX|1|NM|2345-7^Glucose^LN||105|mg/dL|70-99|H|||F\r" * 20
)


def run(senders: int, total: int, receive: Callable[[IncomingMessage], object]) -> float:
    per_sender = total // senders

    def sender(n: int) -> None:
        for i in range(per_sender):
            receive(IncomingMessage("hl7v2", f"S{n}", PAYLOAD, message_id=f"{n}-{i}"))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(senders)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per_sender * senders / (time.perf_counter() - start)


def measure(url_factory: Callable[[], str], senders: int, total: int, wait: float) -> tuple[float, float]:
    store = Store.open(url_factory())
    single = run(senders, total, store.inbox.receive)
    store.close()
    store = Store.open(url_factory())
    with store.group_writer(max_batch=256, max_wait=wait) as writer:
        grouped = run(senders, total, writer.receive)
    store.close()
    return single, grouped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--no-mariadb", action="store_true")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="group commit linger (default 0)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    counter = iter(range(1_000_000))

    def sqlite_url() -> str:
        return f"sqlite:///{tmp / f'bench{next(counter)}.db'}"

    sq_single, sq_grouped = measure(sqlite_url, args.senders, args.messages, args.max_wait_ms / 1000)
    print(f"sqlite  single-commit: {sq_single:9.0f} msg/s")
    print(f"sqlite  grouped:       {sq_grouped:9.0f} msg/s  ({sq_grouped / sq_single:.1f}x)")
    if not args.no_mariadb:
        from tests.stack import MariaDbServer

        server = MariaDbServer(tmp / "mariadb").start()
        try:
            my_single, my_grouped = measure(
                server.create_database, args.senders, args.messages, args.max_wait_ms / 1000
            )
        finally:
            server.stop()
        print(f"mariadb single-commit: {my_single:9.0f} msg/s")
        print(f"mariadb grouped:       {my_grouped:9.0f} msg/s  ({my_grouped / my_single:.1f}x)")
    print(
        f"RESULT sqlite_grouped_inbox_writes={sq_grouped:.0f} msg/s "
        f"baseline sqlite_single_commit={sq_single:.0f} msg/s ratio={sq_grouped / sq_single:.2f}"
    )


if __name__ == "__main__":
    main()
