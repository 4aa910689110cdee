"""``meoring quickstart``: the hub's main job on embedded defaults, end to end.

Stores the bundled sample feeds in the SQLite inbox, runs the pipeline until they are
translated and delivered to the FHIR server, then tells the user where to look.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from hub.checks import fhir_check, redact
from hub.config import HubSettings
from hub.errors import HubError
from hub.fhir.client import FhirClient
from hub.runtime import build_worker, default_mappings_dir, fhir_client, open_store, read_messages

SAMPLE_CHANNELS = {".hl7": "hl7v2", ".json": "fhir", ".ndjson": "fhir"}


def bundled_samples() -> list[Path]:
    root = default_mappings_dir() / "samples"
    return sorted(p for p in root.rglob("*") if p.suffix in SAMPLE_CHANNELS and p.is_file())


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_quickstart(settings: HubSettings, *, samples: list[Path] | None = None, timeout_s: float = 300) -> int:
    base = settings.fhir.base_url
    problem = fhir_check(base)()
    if problem:
        raise HubError(f"{problem} — start one with `bash hapi-config/run-hapi.sh` or set MEORING_FHIR__BASE_URL")
    files = samples or bundled_samples()
    if not files:
        raise HubError("no sample files found")
    store = open_store(settings)
    client = fhir_client(settings)
    try:
        _say(f"store: {redact(settings.store.url)}")
        stored = duplicates = 0
        with store.group_writer() as writer:
            for path in files:
                channel = SAMPLE_CHANNELS[path.suffix]
                for message in read_messages(channel, path):
                    receipt = writer.receive(message)
                    stored += not receipt.duplicate
                    duplicates += receipt.duplicate
        _say(f"inbox: {stored} new message(s) from {len(files)} sample file(s)"
             + (f", {duplicates} already there (acknowledged, not reprocessed)" if duplicates else ""))
        worker = build_worker(settings, store, client)
        deadline = time.monotonic() + timeout_s
        try:
            totals = worker.run(until_idle=True, deadline=deadline)
        finally:
            worker.close()
        _say(f"pipeline: translated {totals.translated}, delivered {totals.delivered}, "
             f"rejected {totals.rejected}, retrying {totals.retried}, dead {totals.dead + totals.rejected}")
        stats = store.stats()
        types: Counter[str] = Counter()
        for resource_type in ("Patient", "Encounter", "Observation", "DiagnosticReport", "ServiceRequest",
                              "AllergyIntolerance", "Condition", "Immunization", "Appointment",
                              "DocumentReference", "Provenance"):
            types[resource_type] = _count(client, resource_type)
        _say(f"FHIR server {base} now holds: "
             + ", ".join(f"{n} {t}" for t, n in types.items() if n))
        _say("")
        _say("Look at the results:")
        _say(f"  {base}/Patient?_sort=-_lastUpdated&_count=20")
        _say(f"  {base}/Observation?_sort=-_lastUpdated&_count=20")
        _say(f"  {base}/Provenance?_sort=-_lastUpdated&_count=20   (one per message, back to the inbox)")
        _say("Check the hub: `meoring status`, dead letters: `meoring replay --list`.")
        return 0 if stats.open_dead_letters == 0 else 1
    finally:
        client.close()
        store.close()


def _count(client: FhirClient, resource_type: str) -> int:
    first_page = next(client.search_pages(resource_type, {"_summary": "count"}))
    total = first_page.get("total", 0)
    return total if isinstance(total, int) else 0
