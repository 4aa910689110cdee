"""The seam between the pipeline and the adapters.

An adapter turns one foreign protocol into FHIR by providing a :class:`Translator`.
The pipeline never looks inside a payload; it hands the raw bytes and their metadata
to the translator registered for the message's channel and delivers what comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from hub.errors import MappingError

log = logging.getLogger("hub.pipeline")


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message exactly as received, plus where it came from.

    ``inbox_id`` is the store's id of the inbox record, so that a translator can point
    a Provenance back at it.
    """

    inbox_id: int
    channel: str
    source: str
    payload: bytes
    received_at: datetime
    message_id: str | None = None
    content_type: str | None = None


@dataclass(slots=True)
class Translation:
    """What a translator made of one message.

    ``bundle`` is a FHIR R4 ``transaction`` (or ``batch``) Bundle as JSON-ready dict, with
    deterministic ids or conditional requests so that delivering it twice changes nothing.
    ``unconsumed`` lists source elements the mapping did not use (e.g. ``"OBX-17"``),
    ``warnings`` non-fatal observations (unmapped codes, ...). Neither may contain PHI.
    """

    bundle: dict[str, Any]
    unconsumed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def resource_count(self) -> int:
        return len(self.bundle.get("entry", []))


@runtime_checkable
class Translator(Protocol):
    """Turns one inbound message into a FHIR Bundle.

    Raise :class:`hub.errors.MappingError` (or a subclass) for a message that cannot be
    translated; the pipeline dead-letters it with the reason. Never return a partial result.
    """

    channel: str

    def translate(self, message: InboundMessage) -> Translation: ...


def translation_error(translate: Callable[[], object]) -> MappingError | None:
    """Run a translation made on receipt (``mllp.ack_after: translated``) for its verdict only:
    the :class:`~hub.errors.MappingError` saying why the message cannot become FHIR, or None.

    An unexpected exception is a hub bug, not the sender's error: it is logged by type only (no
    PHI) and answers None, so the message is stored as received and the worker translates it
    again, recording whatever happens there, as in ``stored`` mode.
    """
    try:
        translate()
    except MappingError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - see above
        log.error("translation on receipt failed unexpectedly",
                  extra={"event": "translate_on_receipt_crashed", "error": type(exc).__name__})
    return None
