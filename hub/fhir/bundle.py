"""Checking the per-entry outcome of a ``batch-response`` or ``transaction-response`` Bundle.

A batch is applied entry by entry (FHIR R4 http.html#transaction): the HTTP status of the
whole request is 200 even when some entries failed, and each entry's
``response.status`` ("201 Created", "404 Not Found", …) and ``response.outcome`` say
what happened to it. A transaction is all-or-nothing, so a failed one comes back as a
4xx/5xx of the whole request instead; its response entries can still be checked here.

Entry indexes are those of the request Bundle: the response has one entry per request
entry, in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hub.errors import RejectedByServer, TransientDeliveryError
from hub.fhir.outcome import describe_outcome, is_operation_outcome

__all__ = [
    "BatchEntriesRejected",
    "BatchEntriesUnavailable",
    "EntryFailure",
    "entry_failures",
    "raise_for_entry_failures",
]

_MAX_LISTED = 10


@dataclass(frozen=True)
class EntryFailure:
    """One entry of a batch response whose status is not 2xx/3xx.

    ``status`` is ``None`` when the entry has no parsable ``response.status``.
    ``retryable`` is true for 429 and 5xx: sending that entry again later may succeed.
    """

    index: int
    status: int | None
    message: str
    outcome: dict[str, Any] | None = None

    @property
    def retryable(self) -> bool:
        return self.status is not None and (self.status == 429 or self.status >= 500)


def _status(entry: Mapping[str, Any]) -> int | None:
    response = entry.get("response")
    if not isinstance(response, Mapping):
        return None
    raw = str(response.get("status") or "").strip()
    head = raw.split(" ", 1)[0]
    return int(head) if head.isdigit() and len(head) == 3 else None


def entry_failures(bundle: Mapping[str, Any], *, redact: Iterable[str] = ()) -> list[EntryFailure]:
    """The failed entries of a ``batch-response``/``transaction-response``, by request index.

    Raises :class:`ValueError` if ``bundle`` is not a Bundle.
    """
    if bundle.get("resourceType") != "Bundle":
        raise ValueError("expected a Bundle response")
    secrets = tuple(redact)
    failures: list[EntryFailure] = []
    entries = bundle.get("entry") or []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            failures.append(EntryFailure(index, None, "entry is not an object"))
            continue
        status = _status(entry)
        if status is not None and status < 400:
            continue
        response = entry.get("response")
        outcome = response.get("outcome") if isinstance(response, Mapping) else None
        if not is_operation_outcome(outcome):
            outcome = None
        if status is None:
            message = "no response.status"
        elif outcome is not None:
            message = f"HTTP {status}: {describe_outcome(outcome, redact=secrets)}"
        else:
            message = f"HTTP {status}"
        failures.append(EntryFailure(index, status, message, dict(outcome) if outcome else None))
    return failures


def _summary(failures: Sequence[EntryFailure], total: int) -> str:
    listed = "; ".join(f"entry[{f.index}] {f.message}" for f in failures[:_MAX_LISTED])
    more = f"; (and {len(failures) - _MAX_LISTED} more)" if len(failures) > _MAX_LISTED else ""
    return f"{len(failures)} of {total} entries failed: {listed}{more}"


class BatchEntriesRejected(RejectedByServer):
    """Some entries of a batch were refused (at least one with a non-retryable status).

    ``failures`` lists them by request index; the other entries were applied.
    ``operation_outcome`` is the first failed entry's outcome, if any.
    """

    def __init__(self, message: str, *, failures: Sequence[EntryFailure], url: str | None = None) -> None:
        first = next((f.outcome for f in failures if f.outcome is not None), None)
        super().__init__(message, status=None, url=url, operation_outcome=first)
        self.failures = tuple(failures)


class BatchEntriesUnavailable(TransientDeliveryError):
    """Every failed entry of a batch failed with 429/5xx: sending those entries again may work.

    ``failures`` lists them by request index; the other entries were applied.
    """

    def __init__(self, message: str, *, failures: Sequence[EntryFailure], url: str | None = None) -> None:
        super().__init__(message, status=None, url=url)
        self.failures = tuple(failures)


def raise_for_entry_failures(
    bundle: Mapping[str, Any], *, url: str | None = None, redact: Iterable[str] = ()
) -> None:
    """Raise if any entry of a batch/transaction response failed; return ``None`` otherwise.

    :class:`BatchEntriesUnavailable` (a :class:`~hub.errors.TransientDeliveryError`) when
    every failure is retryable (429/5xx), else :class:`BatchEntriesRejected` (a
    :class:`~hub.errors.RejectedByServer`). Both carry ``failures``.
    """
    failures = entry_failures(bundle, redact=redact)
    if not failures:
        return
    total = len(bundle.get("entry") or [])
    message = _summary(failures, total)
    if all(f.retryable for f in failures):
        raise BatchEntriesUnavailable(message, failures=failures, url=url)
    raise BatchEntriesRejected(message, failures=failures, url=url)
