"""What can go wrong talking to OpenEMR, shaped around what the caller does next.

::

    HubError
    ├── NotRegistered                  run `meoring openemr register` (or give the clients in settings)
    ├── RegistrationRefused            OpenEMR refused a dynamic client registration
    ├── TokenRefused                   OpenEMR's token endpoint said no (error code kept, no secrets)
    └── DeliveryError
        ├── TransientDeliveryError
        │   ├── OpenEmrUnavailable     5xx, timeout, connection refused: try again later
        │   └── IntegrationBlocked     (DeliveryHeld) a person must act; writes are held, not dropped
        │       ├── ReloginRequired    the refresh token is gone: `meoring openemr login`
        │       └── ClientDisabled     invalid_client: enable it under API Clients
        └── PermanentDeliveryError
            └── OpenEmrRefused         a 4xx for this request: the same request fails the same way
                ├── MissingScope       401 "Unauthorized" with a fresh token (openemr.md §2.8)
                └── AccessDenied       403: ACL, or api:oemr missing (openemr.md §2.8, §10)

Messages name the client, the endpoint path and OpenEMR's error code; never a token, a
secret, a query string or patient data.
"""

from __future__ import annotations

from hub.errors import DeliveryHeld, HubError, PermanentDeliveryError, TransientDeliveryError

__all__ = [
    "AccessDenied",
    "ClientDisabled",
    "IntegrationBlocked",
    "MissingScope",
    "NotRegistered",
    "OpenEmrRefused",
    "OpenEmrUnavailable",
    "RegistrationRefused",
    "ReloginRequired",
    "TokenRefused",
]


class NotRegistered(HubError):
    """The hub has no OpenEMR client of the kind needed (or no ``openemr.base_url``)."""


class RegistrationRefused(HubError):
    """``POST /oauth2/{site}/registration`` answered an error (its code and description are kept)."""

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class TokenRefused(HubError):
    """The token endpoint refused a grant for a reason other than the two below.

    ``error`` is OpenEMR's OAuth2 error code (``invalid_scope``, ``invalid_request``...).
    """

    def __init__(self, message: str, *, error: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.status = status


class OpenEmrUnavailable(TransientDeliveryError):
    """OpenEMR did not answer usefully (5xx, timeout, connection error): the same call may work later."""


class IntegrationBlocked(DeliveryHeld):
    """The integration is stopped until a person acts; queued writes wait (they are not dead-lettered)."""


class ReloginRequired(IntegrationBlocked):
    """OpenEMR no longer accepts the stored refresh token (``invalid_grant``, revoked, logged out)."""


class ClientDisabled(IntegrationBlocked):
    """OpenEMR answered ``invalid_client``: the client is disabled (new clients are, openemr.md §2.4) or unknown."""

    def __init__(self, message: str, *, client_id: str | None = None) -> None:
        super().__init__(message)
        self.client_id = client_id


class OpenEmrRefused(PermanentDeliveryError):
    """OpenEMR refused this request (4xx). ``fields`` names the fields its validation rejected."""

    def __init__(
        self, message: str, *, status: int | None = None, url: str | None = None, fields: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, status=status, url=url)
        self.fields = fields


class MissingScope(OpenEmrRefused):
    """A fresh token still got 401 "Unauthorized": the client lacks the scope ``scope``."""

    def __init__(self, message: str, *, scope: str, status: int | None = 401, url: str | None = None) -> None:
        super().__init__(message, status=status, url=url)
        self.scope = scope


class AccessDenied(OpenEmrRefused):
    """403: an ACL denial for the user behind the token, or a token without ``api:oemr`` on ``/api``."""
