"""Patients per second mirrored OpenEMR → HAPI: paged search (baseline) vs bulk ``$export``, same run.

OpenEMR is the contract-faithful emulator (tests/openemr_emulator) on loopback; HAPI is real:
$MEORING_BENCH_HAPI_URL if set, else started with hapi-config/run-hapi.sh. Each method mirrors
its own freshly seeded patients (so both create, neither merely re-writes), through the same
code path into HAPI (transaction Bundles of ``--batch`` PUTs). Rounds alternate the methods.

Usage: python bench/openemr_sync.py [--patients N] [--rounds R] [--batch B]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.* (emulator, HAPI starter)

from hub.config import HubSettings, OpenEmrSettings, StoreSettings
from hub.fhir.client import FhirClient
from hub.openemr import OpenEmr
from hub.store import Store
from tests.openemr_emulator import OpenEmrEmulator


def setup(root: Path, patients: int) -> tuple[OpenEmrEmulator, Store, OpenEmr]:
    emulator = OpenEmrEmulator(root / "openemr").start()
    settings = HubSettings(
        data_dir=root / "hub",
        store=StoreSettings(url=f"sqlite:///{root / 'hub.db'}", sqlite_synchronous="NORMAL"),
        openemr=OpenEmrSettings(base_url=emulator.base_url, page_size=200, export_poll_interval_s=0.1),
    )
    store = Store.open(settings.store.url, sqlite_synchronous="NORMAL")
    openemr = OpenEmr(settings, store)
    openemr.register(kinds=("backend",))
    emulator.enable_all_clients()
    emulator.seed_patients(patients, prefix=f"B{root.name[-6:]}-")
    return emulator, store, openemr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=1000, help="patients per method and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100, help="Patients per HAPI transaction")
    args = parser.parse_args()
    server = None
    url = os.environ.get("MEORING_BENCH_HAPI_URL")
    if not url:
        from tests.stack import HapiServer

        server = HapiServer(Path(tempfile.mkdtemp(prefix="bench-hapi-"))).start()
        url = server.base_url
    totals = {"paged": [0, 0.0], "bulk": [0, 0.0]}
    reads = {"paged": 0.0, "bulk": 0.0}
    try:
        with FhirClient(url) as fhir:
            # Warm up HAPI's JVM and the connection pool on patients of their own.
            warm = Path(tempfile.mkdtemp(prefix="bench-oe-warm-"))
            emulator, store, openemr = setup(warm, 200)
            openemr.mirror(fhir, batch_size=args.batch).full()
            openemr.close(), store.close(), emulator.stop()
            for round_no in range(args.rounds):
                order = ("paged", "bulk") if round_no % 2 == 0 else ("bulk", "paged")
                for method in order:
                    root = Path(tempfile.mkdtemp(prefix=f"bench-oe-{method}-"))
                    emulator, store, openemr = setup(root, args.patients)
                    # OpenEMR side alone (read, no HAPI), for the breakdown.
                    start = time.perf_counter()
                    if method == "paged":
                        read = sum(len(page) for page in openemr.client.search_pages("Patient"))
                    else:
                        result = openemr.client.export(types=("Patient",), poll_interval=0.1)
                        read = sum(len(openemr.client.fetch_binary(u).splitlines()) for _t, u in result.outputs)
                    reads[method] += time.perf_counter() - start
                    assert read == args.patients
                    mirror = openemr.mirror(fhir, batch_size=args.batch)
                    start = time.perf_counter()
                    synced = mirror.full() if method == "paged" else mirror.bulk()
                    elapsed = time.perf_counter() - start
                    assert synced.patients == args.patients, synced
                    totals[method][0] += synced.patients
                    totals[method][1] += elapsed
                    print(f"round {round_no + 1} {method:>5}: {synced.patients} patients in {elapsed:6.2f} s "
                          f"= {synced.patients / elapsed:7.1f} patients/s")
                    openemr.close()
                    store.close()
                    emulator.stop()
    finally:
        if server is not None:
            server.stop()
    paged = totals["paged"][0] / totals["paged"][1]
    bulk = totals["bulk"][0] / totals["bulk"][1]
    n = args.patients * args.rounds
    print(f"OpenEMR reads alone: paged search {n / reads['paged']:.0f} patients/s, "
          f"bulk $export {n / reads['bulk']:.0f} patients/s")
    print(f"RESULT openemr_bulk_export_sync={bulk:.1f} patients/s baseline openemr_paged_search_sync={paged:.1f} "
          f"patients/s ratio={bulk / paged:.2f}")


if __name__ == "__main__":
    main()
