"""FHIR R4: the client for FHIR servers and structure validation of what the hub sends."""

from hub.fhir.bundle import (
    BatchEntriesRejected,
    BatchEntriesUnavailable,
    EntryFailure,
    entry_failures,
    raise_for_entry_failures,
)
from hub.fhir.client import DEFAULT_TIMEOUT, AsyncFhirClient, FhirClient, FhirResponse, Prefer, SearchParams
from hub.fhir.outcome import describe_outcome, is_operation_outcome
from hub.fhir.retry import RetryPolicy, parse_retry_after
from hub.fhir.validation import validate_resource

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncFhirClient",
    "BatchEntriesRejected",
    "BatchEntriesUnavailable",
    "EntryFailure",
    "FhirClient",
    "FhirResponse",
    "Prefer",
    "RetryPolicy",
    "SearchParams",
    "describe_outcome",
    "entry_failures",
    "is_operation_outcome",
    "parse_retry_after",
    "raise_for_entry_failures",
    "validate_resource",
]
