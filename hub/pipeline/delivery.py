"""Deliverers: carry an outbox entry to its target. One per target name."""

from __future__ import annotations

import json
from typing import Any, Protocol

from hub.errors import PermanentDeliveryError
from hub.store.records import OutboxEntry


class Deliverer(Protocol):
    """Delivers one outbox entry or raises a :class:`hub.errors.DeliveryError`.

    ``TransientDeliveryError`` means "try again later"; any other ``HubError`` is final.
    """

    target: str

    def deliver(self, entry: OutboxEntry) -> None: ...


class TransactionClient(Protocol):
    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]: ...

    def batch(self, bundle: dict[str, Any]) -> dict[str, Any]: ...


class FhirBundleDeliverer:
    """Posts the entry's Bundle to the FHIR server as a transaction (all or nothing)."""

    target = "fhir"

    def __init__(self, client: TransactionClient) -> None:
        self._client = client

    def deliver(self, entry: OutboxEntry) -> None:
        try:
            bundle = json.loads(entry.body)
        except ValueError as exc:
            raise PermanentDeliveryError(f"outbox entry {entry.outbox_id} does not hold valid JSON") from exc
        if entry.operation == "transaction":
            self._client.transaction(bundle)
        elif entry.operation == "batch":
            self._client.batch(bundle)
        else:
            raise PermanentDeliveryError(f"unknown FHIR operation {entry.operation!r}")
