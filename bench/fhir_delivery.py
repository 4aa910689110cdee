"""Resources per second delivered to a real HAPI FHIR: one request per resource (baseline)
vs. transaction Bundles of ``--bundle-size`` resources, same resources, same run.

Uses $MEORING_BENCH_HAPI_URL if set, else starts HAPI with hapi-config/run-hapi.sh.
Usage: python bench/fhir_delivery.py [--resources N] [--bundle-size N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.stack (the HAPI starter)

from hub.fhir.client import FhirClient


def observation(run: str, i: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"bench-{run}-{i}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
        "valueQuantity": {
            "value": 90 + i % 30,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
        "effectiveDateTime": "2026-11-25T12:00:00Z",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--bundle-size", type=int, default=50)
    args = parser.parse_args()
    server = None
    url = os.environ.get("MEORING_BENCH_HAPI_URL")
    if not url:
        from tests.stack import HapiServer

        server = HapiServer(Path(tempfile.mkdtemp(prefix="bench-hapi-"))).start()
        url = server.base_url
    try:
        with FhirClient(url) as client:
            # Warm up the JVM and connection pool on a separate id range.
            warm = uuid.uuid4().hex[:8]
            for i in range(50):
                client.update(observation(warm, i))
            run = uuid.uuid4().hex[:8]
            start = time.perf_counter()
            for i in range(args.resources):
                client.update(observation(run, i))
            single = args.resources / (time.perf_counter() - start)
            print(f"one request per resource: {single:8.1f} resources/s")
            run = uuid.uuid4().hex[:8]
            start = time.perf_counter()
            for first in range(0, args.resources, args.bundle_size):
                entries = [
                    {
                        "resource": observation(run, i),
                        "request": {"method": "PUT", "url": f"Observation/bench-{run}-{i}"},
                    }
                    for i in range(first, min(first + args.bundle_size, args.resources))
                ]
                client.transaction(
                    {"resourceType": "Bundle", "type": "transaction", "entry": entries}, prefer="minimal"
                )
            bundled = args.resources / (time.perf_counter() - start)
            print(f"transaction bundles of {args.bundle_size}: {bundled:8.1f} resources/s")
    finally:
        if server is not None:
            server.stop()
    print(
        f"RESULT fhir_transaction_delivery={bundled:.1f} resources/s "
        f"baseline fhir_one_request_each={single:.1f} resources/s ratio={bundled / single:.2f}"
    )


if __name__ == "__main__":
    main()
