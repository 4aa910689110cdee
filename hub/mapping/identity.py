"""Deterministic resource ids from business identifiers.

An id is a hash of (namespace, resource type, key parts): the same order number from the same
sender always yields the same ``ServiceRequest`` id, so a re-sent or corrected message updates
(``PUT``) instead of duplicating. The namespace is the sending facility for identifiers that
are only unique per sender, or ``global`` when the key carries its own assigning authority
(PID-3.4, PV1-19.4...), so a lab feed and a registration feed agree on one Patient.

Ids are ``m`` + 30 lower-case hex digits (120 bits of SHA-256): URL-safe, never all digits
(HAPI refuses client-assigned numeric ids), well under FHIR's 64-character limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["make_id"]


def make_id(namespace: str, resource_type: str, parts: Iterable[str]) -> str:
    """The stable FHIR id for these business keys."""
    data = "\x1f".join((namespace, resource_type, *parts)).encode("utf-8")
    return "m" + hashlib.sha256(data).hexdigest()[:30]
