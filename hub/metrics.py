"""Prometheus metrics: message states (read from the store at scrape time) and pipeline events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hub.store import Store
from hub.store.records import utcnow

# Delivery latency spans sub-second (healthy) to hours (an outage): buckets cover both.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)


class PipelineMetrics:
    """Counters and histograms the worker updates; one instance per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "meoring_messages_received", "Messages stored in the inbox", ["channel"], registry=registry
        )
        self.translations = Counter(
            "meoring_translations", "Translate-stage outcomes", ["channel", "outcome"], registry=registry
        )
        self.deliveries = Counter(
            "meoring_delivery_attempts", "Delivery attempts by outcome", ["target", "outcome"], registry=registry
        )
        self.retries = Counter("meoring_retries", "Deliveries scheduled for retry", ["target"], registry=registry)
        self.delivery_latency = Histogram(
            "meoring_delivery_latency_seconds",
            "Time from receipt of a message to its successful delivery",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class StoreStateCollector(Collector):
    """Reads message counts from the store on each scrape, so every process agrees."""

    def __init__(self, store: Store, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._store.stats()
        messages = GaugeMetricFamily("meoring_messages", "Inbox messages by state", labels=["state"])
        for state in ("received", "translated", "retrying", "delivered", "dead"):
            messages.add_metric([state], stats.inbox_by_status.get(state, 0))
        yield messages
        entries = GaugeMetricFamily("meoring_outbox_entries", "Outbox entries by state", labels=["state"])
        for state in ("pending", "retrying", "delivered", "dead", "superseded"):
            entries.add_metric([state], stats.outbox_by_status.get(state, 0))
        yield entries
        yield GaugeMetricFamily(
            "meoring_dead_letters_open", "Dead letters not yet replayed", value=stats.open_dead_letters
        )
        age = 0.0
        if stats.oldest_pending_received_at is not None:
            age = max(0.0, (self._clock() - stats.oldest_pending_received_at).total_seconds())
        yield GaugeMetricFamily(
            "meoring_oldest_pending_age_seconds", "Age of the oldest message not yet delivered", value=age
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
