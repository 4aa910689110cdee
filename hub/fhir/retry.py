"""When the FHIR client tries a request again, and how long it waits first.

Retried: connection errors, timeouts, ``429 Too Many Requests`` and ``5xx``. Never retried:
any other ``4xx`` — the same request would fail the same way (RFC 9110 §15.5).

The wait is exponential backoff with *full jitter* (a uniform draw between 0 and the
exponential cap, as described in the AWS Architecture Blog "Exponential Backoff And
Jitter", 2015): many hub workers retrying against one recovering server spread out
instead of arriving together. A ``Retry-After`` header (RFC 9110 §10.2.3, delay-seconds or
an HTTP-date) replaces the computed wait, capped by :attr:`RetryPolicy.max_retry_after`.

Attempts and total time are both bounded; the clock, the sleep and the random draw are
injectable so that tests run instantly and deterministically.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "parse_retry_after"]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Bounds and timing of retries; immutable, so one policy can be shared by many clients.

    ``max_attempts`` counts the first try: ``max_attempts=1`` disables retries.
    ``max_elapsed`` (seconds) bounds the whole call, waits included: no retry is started
    whose wait would end past it. ``retry_non_idempotent`` allows retrying a request that
    is not idempotent (a plain ``POST`` create, a transaction with ``POST`` entries) after
    a failure that may have happened *after* the server applied it (read timeout, dropped
    connection, 500/502/504); off by default because that can create duplicates. Failures
    that prove the request was not applied (connection refused, 429, 503) are retried
    regardless.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_elapsed: float = 120.0
    max_retry_after: float = 120.0
    retry_non_idempotent: bool = False
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    wall_clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        for name in ("initial_backoff", "max_backoff", "max_elapsed", "max_retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetryPolicy.{name} must not be negative")

    @classmethod
    def no_retry(cls) -> RetryPolicy:
        """A policy that tries once."""
        return cls(max_attempts=1)

    def backoff(self, attempt: int) -> float:
        """Wait before attempt ``attempt + 1`` after attempt ``attempt`` (1-based) failed."""
        cap = min(self.max_backoff, self.initial_backoff * 2.0 ** min(attempt - 1, 62))
        return self.rand() * cap

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait to use: the server's ``Retry-After`` (capped) if given, else :meth:`backoff`."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return self.backoff(attempt)


def parse_retry_after(value: str | None, *, now: float, date_header: str | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value, or ``None`` if absent/unparsable.

    ``value`` is delay-seconds or an HTTP-date. A date is measured against the response's
    own ``Date`` header when there is one (so the two clocks agree), otherwise against
    ``now`` (a POSIX timestamp). A date in the past means "no wait".
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    when = _http_date(value)
    if when is None:
        return None
    reference = _http_date(date_header) if date_header else None
    return max(when - (now if reference is None else reference), 0.0)


def _http_date(value: str) -> float | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000" or no zone: HTTP-dates are always UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
