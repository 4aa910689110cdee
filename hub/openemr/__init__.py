"""OpenEMR as the source of truth: OAuth2/SMART clients, OpenEMR-first writes, cache and patient sync.

Built against OpenEMR 8.2 as its code behaves (``shared/reference/openemr.md``). The parts:

=============================  ==========================================================
:mod:`~hub.openemr.registration`  dynamic client registration of the two clients
:mod:`~hub.openemr.keys`          the hub's RS384 key pairs (kid, JWKS, rotation)
:mod:`~hub.openemr.tokens`        client_credentials with private_key_jwt; code + PKCE;
                                  refresh rotation stored atomically; re-login state
:mod:`~hub.openemr.client`        FHIR/REST calls with OpenEMR's quirks
:mod:`~hub.openemr.reader`        cache-aside reads
:mod:`~hub.openemr.writes`        OpenEMR-first writes through the outbox (target ``openemr``)
:mod:`~hub.openemr.sync`          Patient mirror into HAPI: full, incremental, bulk $export
:mod:`~hub.openemr.matching`      MRN match policy for ADT patients
:mod:`~hub.openemr.health`        readiness line and metrics
:mod:`~hub.openemr.cli`           ``meoring openemr register|login|sync|status``
=============================  ==========================================================
"""

from hub.openemr import schema as _schema  # noqa: F401 - registers openemr_tokens on the store metadata
from hub.openemr.errors import (
    AccessDenied,
    ClientDisabled,
    IntegrationBlocked,
    MissingScope,
    NotRegistered,
    OpenEmrRefused,
    OpenEmrUnavailable,
    RegistrationRefused,
    ReloginRequired,
    TokenRefused,
)
from hub.openemr.health import OpenEmrStateCollector, jwks_document, openemr_readiness
from hub.openemr.integration import OpenEmr, OpenEmrWorkerDeliverer, openemr_deliverers
from hub.openemr.matching import PatientMatch, match_or_create
from hub.openemr.writes import OpenEmrDeliverer, OpenEmrWriter

__all__ = [
    "AccessDenied",
    "ClientDisabled",
    "IntegrationBlocked",
    "MissingScope",
    "NotRegistered",
    "OpenEmr",
    "OpenEmrDeliverer",
    "OpenEmrRefused",
    "OpenEmrStateCollector",
    "OpenEmrUnavailable",
    "OpenEmrWorkerDeliverer",
    "OpenEmrWriter",
    "PatientMatch",
    "RegistrationRefused",
    "ReloginRequired",
    "TokenRefused",
    "jwks_document",
    "match_or_create",
    "openemr_deliverers",
    "openemr_readiness",
]
