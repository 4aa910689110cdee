"""The worker loop: translate received messages, deliver translated ones, record outcomes.

Every outcome is durable before the next step: a message is ``translated`` only once its
Bundle sits in the outbox, ``delivered`` only after the FHIR server answered success.
A killed worker leaves claims that expire after ``lease_s``; whoever comes next picks the
work up again, and idempotent deliveries make the repeat harmless.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from hub.config import PipelineSettings
from hub.errors import DeliveryError, DeliveryHeld, HubError, MappingError, TransientDeliveryError
from hub.metrics import PipelineMetrics
from hub.pipeline.backoff import backoff_delay
from hub.pipeline.delivery import Deliverer
from hub.pipeline.translator import InboundMessage, Translator
from hub.store import Rejected, Rejection, Store, Translated
from hub.store.records import OutboxEntry, StoredMessage, utcnow

log = logging.getLogger("hub.pipeline")


@dataclass(frozen=True, slots=True)
class RoundResult:
    translated: int = 0
    rejected: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0

    @property
    def work(self) -> int:
        return self.translated + self.rejected + self.delivered + self.retried + self.dead


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a dead letter: type, location if any, message (no PHI by contract)."""
    location = getattr(exc, "location", None)
    where = f" at {location}" if location else ""
    text = str(exc) if isinstance(exc, HubError) else "unexpected error (see the worker log)"
    return f"{type(exc).__name__}{where}: {text}"


def rejection_for(exc: BaseException) -> Rejection:
    """The dead letter of a message that did not translate on receipt: the same reason line as here."""
    return Rejection(type(exc).__name__, describe_error(exc))


class PipelineWorker:
    """Moves messages through translate and deliver, one round at a time."""

    def __init__(
        self,
        store: Store,
        *,
        translators: Mapping[str, Translator],
        deliverers: Mapping[str, Deliverer],
        settings: PipelineSettings | None = None,
        metrics: PipelineMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._translators = dict(translators)
        self._deliverers = dict(deliverers)
        self._settings = settings or PipelineSettings()
        self._metrics = metrics
        self._clock = clock
        self._pool = ThreadPoolExecutor(self._settings.workers, thread_name_prefix="deliver") \
            if self._settings.workers > 1 else None

    # -- translate ---------------------------------------------------------------------
    def translate_round(self) -> RoundResult:
        settings = self._settings
        claimed = self._store.inbox.claim_received(
            limit=settings.batch_size, lease=timedelta(seconds=settings.lease_s)
        )
        outcomes: list[Translated | Rejected] = [self._translate(message) for message in claimed]
        self._store.outbox.record_translations(outcomes)
        rejected = sum(isinstance(o, Rejected) for o in outcomes)
        return RoundResult(translated=len(outcomes) - rejected, rejected=rejected)

    def _translate(self, message: StoredMessage) -> Translated | Rejected:
        translator = self._translators.get(message.channel)
        outcome: Translated | Rejected
        if translator is None:
            outcome = Rejected(message.inbox_id, message.claim_token, "UnsupportedMessage",
                               f"UnsupportedMessage: no translator for channel {message.channel!r}")
        else:
            inbound = InboundMessage(
                inbox_id=message.inbox_id,
                channel=message.channel,
                source=message.source,
                payload=message.payload,
                received_at=message.received_at,
                message_id=message.message_id,
                content_type=message.content_type,
            )
            try:
                translation = translator.translate(inbound)
                body = json.dumps(translation.bundle, separators=(",", ":"), ensure_ascii=False)
                operation = "batch" if translation.bundle.get("type") == "batch" else "transaction"
                outcome = Translated(
                    inbox_id=message.inbox_id,
                    claim_token=message.claim_token,
                    target="fhir",
                    operation=operation,
                    body=body,
                    resource_count=translation.resource_count,
                    unconsumed=translation.unconsumed,
                )
            except MappingError as exc:
                outcome = Rejected(message.inbox_id, message.claim_token, type(exc).__name__, describe_error(exc))
            except Exception as exc:
                log.exception("translator failed", extra={"event": "translate_crashed", "inbox_id": message.inbox_id})
                outcome = Rejected(message.inbox_id, message.claim_token, type(exc).__name__, describe_error(exc))
        if self._metrics is not None:
            result = "ok" if isinstance(outcome, Translated) else "rejected"
            self._metrics.translations.labels(message.channel, result).inc()
        if isinstance(outcome, Rejected):
            log.warning("message rejected", extra={"event": "dead_letter", "stage": "translate",
                                                     "inbox_id": message.inbox_id, "reason": outcome.reason})
        return outcome

    # -- deliver -----------------------------------------------------------------------
    def deliver_round(self) -> RoundResult:
        settings = self._settings
        entries = self._store.outbox.claim_due(limit=settings.batch_size, lease=timedelta(seconds=settings.lease_s))
        if not entries:
            return RoundResult()
        if self._pool is not None:
            outcomes = list(self._pool.map(self._deliver, entries))
        else:
            outcomes = [self._deliver(entry) for entry in entries]
        return RoundResult(
            delivered=outcomes.count("delivered"),
            retried=outcomes.count("retry") + outcomes.count("held"),
            dead=outcomes.count("dead"),
        )

    def _deliver(self, entry: OutboxEntry) -> str:
        deliverer = self._deliverers.get(entry.target)
        try:
            if deliverer is None:
                raise DeliveryError(f"no deliverer configured for target {entry.target!r}")
            deliverer.deliver(entry)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded as retry or dead letter
            return self._failed(entry, exc)
        self._store.outbox.mark_delivered(entry)
        if self._metrics is not None:
            self._metrics.deliveries.labels(entry.target, "delivered").inc()
            if entry.received_at is not None:
                latency = (self._clock() - entry.received_at).total_seconds()
                self._metrics.delivery_latency.labels(entry.target).observe(max(0.0, latency))
        log.info("delivered", extra={"event": "delivered", "outbox_id": entry.outbox_id,
                                     "inbox_id": entry.inbox_id, "attempt": entry.attempts})
        return "delivered"

    def _failed(self, entry: OutboxEntry, exc: Exception) -> str:
        reason = describe_error(exc)
        # Unknown errors are retried: they may be passing (a driver hiccup); attempts still run out.
        # So is 409 Conflict: HAPI answers it when two requests raced (e.g. a timed-out
        # conditional create and its retry); the next attempt finds the winner's resource.
        transient = (
            isinstance(exc, TransientDeliveryError)
            or (isinstance(exc, DeliveryError) and exc.status == 409)
            or not isinstance(exc, HubError)
        )
        if not isinstance(exc, HubError):
            log.error("delivery crashed", exc_info=exc,
                      extra={"event": "deliver_crashed", "outbox_id": entry.outbox_id})
        held = isinstance(exc, DeliveryHeld)
        retry_at: datetime | None = None
        if held:
            # Waiting for a person: look again at the first backoff step (cheap: a held
            # deliverer answers from local state), never running out of attempts.
            retry_at = self._clock() + backoff_delay(1, base_s=self._settings.backoff_base_s,
                                                     max_s=self._settings.backoff_max_s)
        elif transient and entry.attempts < self._settings.max_attempts:
            delay = backoff_delay(entry.attempts, base_s=self._settings.backoff_base_s,
                                  max_s=self._settings.backoff_max_s)
            retry_at = self._clock() + delay
        self._store.outbox.mark_failed(entry, error_type=type(exc).__name__, reason=reason, retry_at=retry_at,
                                       count_attempt=not held)
        outcome = "held" if held else ("retry" if retry_at is not None else "dead")
        if self._metrics is not None:
            self._metrics.deliveries.labels(entry.target, outcome).inc()
            if retry_at is not None:
                self._metrics.retries.labels(entry.target).inc()
        log.warning("delivery failed", extra={"event": "delivery_failed", "outcome": outcome,
                                              "outbox_id": entry.outbox_id, "inbox_id": entry.inbox_id,
                                              "attempt": entry.attempts, "reason": reason})
        return outcome

    # -- loop --------------------------------------------------------------------------
    def run_once(self) -> RoundResult:
        t = self.translate_round()
        d = self.deliver_round()
        return RoundResult(t.translated, t.rejected, d.delivered, d.retried, d.dead)

    def run(self, stop: threading.Event | None = None, *, until_idle: bool = False,
            deadline: float | None = None) -> RoundResult:
        """Work until ``stop`` is set (or, with ``until_idle``, until nothing is left to do now).

        Returns the totals. ``deadline`` is a ``time.monotonic()`` value after which it returns.
        """
        stop = stop or threading.Event()
        totals = RoundResult()
        while not stop.is_set():
            if deadline is not None and time.monotonic() > deadline:
                break
            result = self.run_once()
            totals = RoundResult(*(a + b for a, b in zip(_fields(totals), _fields(result), strict=True)))
            if result.work == 0:
                if until_idle:
                    break
                stop.wait(self._settings.poll_interval_s)
        return totals

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _fields(r: RoundResult) -> tuple[int, int, int, int, int]:
    return (r.translated, r.rejected, r.delivered, r.retried, r.dead)
