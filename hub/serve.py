"""Long-running processes: the HTTP app (with an in-process worker) and the MLLP listener."""

from __future__ import annotations

import logging
import threading

import uvicorn
from prometheus_client import CollectorRegistry

from hub.app import create_app
from hub.config import HubSettings
from hub.metrics import PipelineMetrics
from hub.runtime import build_worker, fhir_client, open_store

log = logging.getLogger("hub.serve")


def serve(settings: HubSettings, *, worker: bool = True, mllp: bool = True) -> int:
    """Run the HTTP app; with ``worker`` the pipeline runs in a thread of this process."""
    store = open_store(settings)
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    app = create_app(settings, store, registry=registry, metrics=metrics)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    client = fhir_client(settings)
    if worker:
        pipeline = build_worker(settings, store, client, metrics)
        threads.append(threading.Thread(target=pipeline.run, args=(stop,), name="pipeline", daemon=True))
    if mllp and settings.mllp.enabled:
        from adapters.hl7v2.service import run_mllp_in_thread

        threads.append(run_mllp_in_thread(settings, store, stop, metrics.received.labels("hl7v2").inc,
                                          metrics.translations.labels("hl7v2", "rejected").inc))
    for thread in threads:
        thread.start()
    try:
        uvicorn.run(app, host=settings.http.host, port=settings.http.port, log_config=None)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        client.close()
        store.close()
    return 0


def serve_mllp(settings: HubSettings) -> int:
    """Run only the MLLP listener (the ``hub-mllp`` process in docker-compose)."""
    from adapters.hl7v2.service import run_mllp

    store = open_store(settings)
    try:
        return run_mllp(settings, store)
    finally:
        store.close()
