"""HL7 v2 adapter: tolerant ER7 parser, ACKs, batch splitting and the translator to FHIR R4.

Public surface (pinned by ``tests/test_hl7v2_api.py``)::

    parse(raw) -> Message                      parser: Message, Segment, Header, Presence
    peek_header(raw) -> Header | None          MSH facts of a message that may not parse
    split_batch(raw) -> list[bytes]            FHS/BHS batch files → messages
    build_ack(...) / ack_for_error(...)        original and enhanced mode ACKs (ack.py)
    should_send_ack(...)                       MSH-15/16 rules as a pure function
    Hl7v2Translator(mappings_dir, site_dir)    the pipeline Translator (channel "hl7v2")
    translate_bytes(raw, explain=...)          dry run for ``meoring translate``
    validate_mappings(directory)               problems of a mapping directory, file:line
"""

from __future__ import annotations

from .ack import AckCode, ack_for_error, build_ack, error_code, should_send_ack
from .batch import split_batch
from .escape import EncodingChars, escape, unescape
from .parser import Header, Message, Presence, Segment, parse, peek_header
from .structure import Group, resolve_structure
from .translator import CHANNEL, Hl7v2Translator, default_translator, format_explain, translate_bytes
from .validation import validate_mappings

__all__ = [
    "CHANNEL",
    "AckCode",
    "EncodingChars",
    "Group",
    "Header",
    "Hl7v2Translator",
    "Message",
    "Presence",
    "Segment",
    "ack_for_error",
    "build_ack",
    "default_translator",
    "error_code",
    "escape",
    "format_explain",
    "parse",
    "peek_header",
    "resolve_structure",
    "should_send_ack",
    "split_batch",
    "translate_bytes",
    "unescape",
    "validate_mappings",
]
