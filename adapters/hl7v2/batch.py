"""Batch files: FHS/BHS ... BTS/FTS envelopes (HL7 v2.5.1 Ch. 2.10.3) split into messages.

Works on bytes so that each message keeps its own encoding for :func:`.parser.parse` (MSH-18).
Envelope segments are dropped; every MSH starts a message; lines before the first MSH that are not
envelope segments are ignored. Segment terminators inside a message become CR.
"""

from __future__ import annotations

import re

__all__ = ["split_batch"]

_BREAK = re.compile(rb"\r\n|\r|\n")
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


def split_batch(raw: bytes) -> list[bytes]:
    """The messages of a batch file (or ``[raw]`` normalised, for a single message)."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    messages: list[list[bytes]] = []
    for line in _BREAK.split(raw):
        line = line.strip(b"\x0b\x1c\x00")
        if not line.strip():
            continue
        head = line[:3]
        if head in _ENVELOPE:
            continue
        if head == b"MSH":
            messages.append([line])
        elif messages:
            messages[-1].append(line)
    return [b"\r".join(lines) + b"\r" for lines in messages]
