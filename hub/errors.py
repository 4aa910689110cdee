"""The hub's exception tree, shaped around what the caller does next.

::

    HubError
    ├── ConfigError              fix the configuration (names the key, never the value)
    ├── MappingError             the message cannot become FHIR: reject it, dead-letter it
    │   └── UnsupportedMessage   no translator / mapping for this message type
    ├── ValidationFailed         a built FHIR resource is not valid R4: same as MappingError
    └── DeliveryError            delivery to a FHIR server failed
        ├── TransientDeliveryError   retry later (connection error, timeout, 429, 5xx)
        │   └── DeliveryHeld         a person must act first; waits without using up attempts
        └── PermanentDeliveryError   retrying will not help (4xx other than 429)
            └── RejectedByServer     the server answered with an OperationOutcome

Messages name fields, paths and rules, never patient data (no PHI in errors or logs).
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class ConfigError(HubError):
    """The configuration is invalid; ``key`` is the dotted path of the offending setting."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class MappingError(HubError):
    """A message cannot be translated.

    ``location`` is the HL7-style location of the offending element when known
    (e.g. ``PID-3``), ``code`` a protocol-neutral reason code used by adapters to
    build their negative replies.
    """

    def __init__(self, message: str, *, location: str | None = None, code: str = "invalid") -> None:
        super().__init__(message)
        self.location = location
        self.code = code


class UnsupportedMessage(MappingError):
    """No translator or mapping exists for this kind of message."""

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message, location=location, code="unsupported")


class ValidationFailed(MappingError):
    """A FHIR resource built by the hub failed R4 structure validation."""

    def __init__(self, message: str, *, resource_type: str | None = None, path: str | None = None) -> None:
        super().__init__(message, location=path, code="structure")
        self.resource_type = resource_type
        self.path = path


class DeliveryError(HubError):
    """Delivery to a FHIR server failed."""

    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class TransientDeliveryError(DeliveryError):
    """Connection error, timeout, 429 or 5xx: the same request may succeed later."""

    retryable = True


class DeliveryHeld(TransientDeliveryError):
    """The target cannot take writes until a person acts (re-login, enable a client).

    The delivery waits and is retried, but the wait does not count as an attempt: a held
    write must never run out of attempts and die while nobody could have delivered it.
    """


class PermanentDeliveryError(DeliveryError):
    """A 4xx (other than 429): repeating the same request will fail the same way."""


class RejectedByServer(PermanentDeliveryError):
    """The server refused the request and explained why in an OperationOutcome."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        url: str | None = None,
        operation_outcome: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, status=status, url=url)
        self.operation_outcome = operation_outcome
