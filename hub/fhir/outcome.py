"""Readable text from a FHIR ``OperationOutcome`` (R4: https://hl7.org/fhir/R4/operationoutcome.html).

A server explains a refusal in ``OperationOutcome.issue``: ``severity``, ``code`` (from the
IssueType value set), ``diagnostics`` (free text), ``details.text`` and ``expression`` (the
FHIRPath of the offending element; ``location`` is its deprecated predecessor). The text
built here is what ends up in exception messages and logs, so values the hub itself put
into the request (search parameters of a conditional operation, which are identifiers and
therefore PHI) are redacted when the server echoes them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["describe_outcome", "is_operation_outcome", "outcome_issues"]

_MAX_ISSUES = 5
_MAX_TEXT = 300
_REDACTED = "<redacted>"
# Shorter sent values are not redacted: replacing every "1" or "M" would garble the text
# and such values identify nobody.
_MIN_REDACT_LEN = 3


def is_operation_outcome(body: object) -> bool:
    """Whether ``body`` is a JSON OperationOutcome."""
    return isinstance(body, Mapping) and body.get("resourceType") == "OperationOutcome"


def outcome_issues(outcome: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The well-formed issues of ``outcome`` (entries that are not objects are skipped)."""
    issues = outcome.get("issue")
    if not isinstance(issues, list):
        return []
    return [issue for issue in issues if isinstance(issue, Mapping)]


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted({s for s in secrets if len(s) >= _MIN_REDACT_LEN}, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return text


def _describe_issue(issue: Mapping[str, Any], secrets: tuple[str, ...]) -> str:
    severity = str(issue.get("severity") or "error")
    code = str(issue.get("code") or "unknown")
    where = issue.get("expression") or issue.get("location")
    text = issue.get("diagnostics")
    if not text:
        details = issue.get("details")
        if isinstance(details, Mapping):
            text = details.get("text")
            if not text:
                codings = details.get("coding")
                if isinstance(codings, list) and codings and isinstance(codings[0], Mapping):
                    text = codings[0].get("display") or codings[0].get("code")
    out = f"{severity} {code}"
    if isinstance(where, list) and where:
        out += " at " + ", ".join(str(w) for w in where[:3])
    if text:
        message = " ".join(str(text).split())
        if len(message) > _MAX_TEXT:
            message = message[: _MAX_TEXT - 1] + "…"
        out += f": {message}"
    return _redact(out, secrets)


def describe_outcome(outcome: Mapping[str, Any], *, redact: Iterable[str] = ()) -> str:
    """One line summarising the issues of ``outcome``, most severe first.

    Example: ``error processing at Patient.birthDate: Invalid date; warning informational: …``.
    Each value in ``redact`` is replaced wherever the server's text repeats it.
    """
    secrets = tuple(redact)
    issues = outcome_issues(outcome)
    if not issues:
        return "OperationOutcome without issues"
    rank = {"fatal": 0, "error": 1, "warning": 2, "information": 3}
    ordered = sorted(issues, key=lambda i: rank.get(str(i.get("severity")), 1))
    parts = [_describe_issue(issue, secrets) for issue in ordered[:_MAX_ISSUES]]
    if len(ordered) > _MAX_ISSUES:
        parts.append(f"(and {len(ordered) - _MAX_ISSUES} more issues)")
    return "; ".join(parts)
