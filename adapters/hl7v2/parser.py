"""A fast, tolerant ER7 ("pipe and hat") parser for HL7 v2.1 - v2.8 messages.

Encoding rules: HL7 v2.5.1 Ch. 2.5 (message construction), 2.6 (encoding rules), 2.7 (escape
sequences), 2.14-2.15 (MSH). The parser does the least work that makes every value reachable:
the bytes are decoded once (MSH-18, :mod:`.charset`), split into segment lines and fields;
repetitions, components and subcomponents are split, and escape sequences replaced, only when
a value is read. A message of twenty segments parses in tens of microseconds.

Tolerated, each recorded in :attr:`Message.deviations` (field names only, never values):

* CR, LF, CRLF and mixed segment terminators; blank lines; no final terminator;
  MLLP framing characters left in a file; a UTF-8/16/32 byte-order mark;
* five encoding characters (``^~\\&#``, v2.7 truncation character), duplicated or missing
  encoding characters (standard ones are filled in);
* a line that is not a segment (an unescaped line break inside a text field) is joined to the
  previous segment with a line break;
* segments the declared version does not define, Z-segments, unknown versions;
* ``""`` (explicit null) is kept apart from an empty field: :meth:`Segment.presence`.

What cannot be parsed raises :class:`hub.errors.MappingError` whose ``location`` names the
element (``MSH``, ``MSH-9``...) and whose ``code`` is one of :data:`ERROR_CODES`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from hub.errors import MappingError

from .charset import decode_message
from .escape import EncodingChars, unescape

__all__ = [
    "ERROR_CODES",
    "EncodingChars",
    "Header",
    "Location",
    "Message",
    "Presence",
    "Segment",
    "parse",
    "parse_location",
]

#: MappingError.code values raised by the HL7 v2 adapter → HL7 table 0357 (message error condition).
ERROR_CODES: dict[str, str] = {
    "segment_sequence": "100",
    "required": "101",
    "data_type": "102",
    "table_value": "103",
    "unsupported_message_type": "200",
    "unsupported_event": "201",
    "unsupported_processing_id": "202",
    "unsupported_version": "203",
    "unknown_key": "204",
    "duplicate_key": "205",
    "rejected": "207",
}

_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
_LITERAL_HEADERS = frozenset({"MSH", "BHS", "FHS"})
_FRAMING = "\x0b\x1c\x00"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class Presence(enum.Enum):
    """Whether an element was sent (HL7 v2.5.1 Ch. 2.5.3: "" means "delete the value")."""

    ABSENT = "absent"
    NULL = "null"
    VALUED = "valued"


class Segment:
    """One segment: its name and raw fields; values are split and unescaped on read.

    ``fields[n]`` is field n in HL7 numbering (``fields[0]`` is the segment name; for MSH,
    ``fields[1]`` is the field separator and ``fields[2]`` the encoding characters).
    ``position`` is the 0-based index in the message, ``occurrence`` the 1-based count of
    this segment name so far (so the third OBX is ``OBX[3]``).
    """

    __slots__ = ("_cache", "charset", "enc", "fields", "name", "occurrence", "position")

    def __init__(
        self,
        name: str,
        fields: list[str],
        enc: EncodingChars,
        charset: str,
        position: int = 0,
        occurrence: int = 1,
    ) -> None:
        self.name = name
        self.fields = fields
        self.enc = enc
        self.charset = charset
        self.position = position
        self.occurrence = occurrence
        self._cache: dict[int, list[str]] = {}

    def __repr__(self) -> str:  # no values: they may be PHI
        return f"<Segment {self.name}[{self.occurrence}] fields={len(self.fields) - 1}>"

    @property
    def label(self) -> str:
        """``OBX[3]`` style name of this segment occurrence (``PID`` for the first)."""
        return self.name if self.occurrence == 1 else f"{self.name}[{self.occurrence}]"

    @property
    def field_count(self) -> int:
        return len(self.fields) - 1

    def raw(self, field: int) -> str:
        """The raw (escaped) text of a field, '' if absent."""
        fields = self.fields
        return fields[field] if 0 < field < len(fields) else ""

    def _literal(self, field: int) -> bool:
        return field <= 2 and self.name in _LITERAL_HEADERS

    def repetitions(self, field: int) -> list[str]:
        """Raw text of each repetition of a field ([] if the field is empty)."""
        raw = self.raw(field)
        if not raw:
            return []
        if self._literal(field):
            return [raw]
        sep = self.enc.repetition
        return raw.split(sep) if sep and sep in raw else [raw]

    def _components(self, field: int, rep: int) -> list[str] | None:
        """Raw components of one repetition (cached: mapping reads a field many times)."""
        key = field * 1000 + rep
        cache = self._cache
        found = cache.get(key)
        if found is not None:
            return found
        fields = self.fields
        if field <= 0 or field >= len(fields):
            return None
        raw = fields[field]
        enc = self.enc
        sep = enc.repetition
        if sep and sep in raw:
            parts = raw.split(sep)
            if rep > len(parts):
                return None
            raw = parts[rep - 1]
        elif rep > 1:
            return None
        found = raw.split(enc.component)
        cache[key] = found
        return found

    def _primitive(self, field: int, rep: int, comp: int, sub: int) -> str:
        """Raw text at a location ('' if absent); comp/sub 0 mean "the whole element"."""
        fields = self.fields
        if field <= 0 or field >= len(fields):
            return ""
        raw = fields[field]
        if not raw:
            return ""
        if field <= 2 and self.name in _LITERAL_HEADERS:
            return raw if rep <= 1 and comp <= 1 and sub <= 1 else ""
        if not comp:
            sep = self.enc.repetition
            if sep and sep in raw:
                parts = raw.split(sep)
                return parts[rep - 1] if rep <= len(parts) else ""
            return raw if rep <= 1 else ""
        comps = self._components(field, rep)
        if comps is None or comp > len(comps):
            return ""
        raw = comps[comp - 1]
        if sub:
            sep = self.enc.subcomponent
            if sep and sep in raw:
                parts = raw.split(sep)
                return parts[sub - 1] if sub <= len(parts) else ""
            if sub > 1:
                return ""
        return raw

    def value(self, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str | None:
        """The unescaped value at ``field[rep].comp.sub`` (1-based), or None when empty or ``""``.

        Without explicit component/subcomponent the first one is read: a location always
        yields a primitive (HL7 v2.5.1 Ch. 2.5.3.x, "first component" rule for senders that
        send components in a primitive field).
        """
        if comp < 1 or sub < 1 or (field <= 2 and self.name in _LITERAL_HEADERS):
            raw = self._primitive(field, rep, comp, sub)
            if not raw or raw == '""':
                return None
            esc = self.enc.escape
            if esc and esc in raw and not self._literal(field):
                return unescape(raw, self.enc, self.charset)
            return raw
        # the common case, inlined (mapping reads thousands of values per second)
        key = field * 1000 + rep
        cache = self._cache
        comps = cache.get(key)
        if comps is None:  # _components, inlined
            fields = self.fields
            if field <= 0 or field >= len(fields):
                return None
            raw = fields[field]
            enc = self.enc
            separator = enc.repetition
            if separator and separator in raw:
                parts = raw.split(separator)
                if rep > len(parts):
                    return None
                raw = parts[rep - 1]
            elif rep > 1:
                return None
            comps = cache[key] = raw.split(enc.component)
        if comp > len(comps):
            return None
        raw = comps[comp - 1]
        if not raw:
            return None
        enc = self.enc
        separator = enc.subcomponent
        if separator and separator in raw:
            parts = raw.split(separator)
            if sub > len(parts):
                return None
            raw = parts[sub - 1]
            if not raw:
                return None
        elif sub > 1:
            return None
        if raw == '""':
            return None
        esc = enc.escape
        if esc and esc in raw:
            return unescape(raw, enc, self.charset)
        return raw

    def text(self, field: int, rep: int = 1) -> str | None:
        """A whole repetition unescaped, separators kept as sent (for ST/TX/FT text fields
        whose sender did not escape ``^``), or None when empty or ``""``."""
        raw = self._primitive(field, rep, 0, 0)
        if not raw or raw == '""':
            return None
        esc = self.enc.escape
        if esc and esc in raw and not self._literal(field):
            return unescape(raw, self.enc, self.charset)
        return raw

    def presence(self, field: int, rep: int = 1, comp: int = 0, sub: int = 0) -> Presence:
        """ABSENT (not sent / empty), NULL (``""``) or VALUED; comp/sub 0 = whole element."""
        raw = self._primitive(field, rep, comp, sub)
        if not raw:
            return Presence.ABSENT
        if raw == '""':
            return Presence.NULL
        if comp == 0:
            enc = self.enc
            if not raw.strip(enc.component + enc.subcomponent):
                return Presence.ABSENT  # only separators, e.g. "^^^"
        return Presence.VALUED

    def get(self, location: str) -> str | None:
        """Value at a location relative to this segment: ``"3[2].1"`` or ``"PID-3[2].1"``."""
        loc = parse_location(location if "-" in location else f"{self.name}-{location}")
        return self.value(loc.field, loc.rep, loc.comp or 1, loc.sub or 1)


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed HL7 location ``SEG[occ]-field[rep].comp.sub`` (0 = not given)."""

    segment: str
    occurrence: int
    field: int
    rep: int
    comp: int
    sub: int

    def __str__(self) -> str:
        text = self.segment if self.occurrence <= 1 else f"{self.segment}[{self.occurrence}]"
        if self.field:
            text += f"-{self.field}"
            if self.rep > 1:
                text += f"[{self.rep}]"
            if self.comp:
                text += f".{self.comp}"
                if self.sub:
                    text += f".{self.sub}"
        return text


_LOCATION = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>\d+)\])?"
    r"(?:-(?P<field>\d+)(?:\[(?P<rep>\d+)\])?(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?)?$"
)


@lru_cache(maxsize=4096)
def parse_location(text: str) -> Location:
    """Parse ``PID-3[2].1.2`` / ``OBX[2]-5`` / ``MSH-9.2``; ValueError if malformed."""
    match = _LOCATION.match(text.strip())
    if match is None:
        raise ValueError(f"not an HL7 location: {text!r}")
    return Location(
        segment=match["seg"],
        occurrence=int(match["occ"] or 1),
        field=int(match["field"] or 0),
        rep=int(match["rep"] or 1),
        comp=int(match["comp"] or 0),
        sub=int(match["sub"] or 0),
    )


@dataclass(frozen=True, slots=True)
class Header:
    """Facts from MSH (HL7 v2.5.1 Ch. 2.14.9), unescaped. Empty strings when not sent.

    Hierarchic designators (MSH-3..6) are given as their components joined by the component
    separator, trailing empty components removed, e.g. ``"LAB"`` or ``"LAB^1.2.3^ISO"``.
    """

    encoding: EncodingChars
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    timestamp: str
    message_type: str
    trigger_event: str
    message_structure: str
    control_id: str
    processing_id: str
    version: str
    accept_ack_type: str
    application_ack_type: str
    charset: str

    @property
    def sender(self) -> str:
        """The namespace of the sender's business identifiers: MSH-4, else MSH-3."""
        return self.sending_facility or self.sending_application

    @property
    def enhanced_mode(self) -> bool:
        """True when MSH-15 or MSH-16 is valued (enhanced acknowledgment, Ch. 2.9.3)."""
        return bool(self.accept_ack_type or self.application_ack_type)


@dataclass(slots=True)
class Message:
    """A parsed message: segments in order, MSH facts, and the tolerated deviations."""

    segments: list[Segment]
    header: Header
    codec: str
    deviations: list[str] = field(default_factory=list)
    _by_name: dict[str, list[Segment]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        by_name = self._by_name
        for seg in self.segments:
            by_name.setdefault(seg.name, []).append(seg)

    @property
    def encoding(self) -> EncodingChars:
        return self.header.encoding

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def all(self, name: str) -> list[Segment]:
        """Every segment with this name, in message order."""
        return self._by_name.get(name, [])

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        found = self._by_name.get(name)
        if not found or occurrence > len(found):
            return None
        return found[occurrence - 1]

    def get(self, location: str) -> str | None:
        """Value at ``PID-3[2].1``-style location (first component/subcomponent by default)."""
        loc = parse_location(location)
        seg = self.segment(loc.segment, loc.occurrence)
        if seg is None or not loc.field:
            return None
        return seg.value(loc.field, loc.rep, loc.comp or 1, loc.sub or 1)

    def presence(self, location: str) -> Presence:
        loc = parse_location(location)
        seg = self.segment(loc.segment, loc.occurrence)
        if seg is None:
            return Presence.ABSENT
        if not loc.field:
            return Presence.VALUED
        return seg.presence(loc.field, loc.rep, loc.comp, loc.sub)


def _encoding_chars(line: str, deviations: list[str]) -> EncodingChars:
    """Encoding characters from the header line (MSH-1, MSH-2), tolerating duplicates and gaps."""
    sep = line[3]
    chars: list[str] = []
    duplicated = False
    for ch in line[4:9]:
        if ch == sep or ch.isalnum() or ch.isspace():
            break
        if ch in chars:
            duplicated = True
            continue
        chars.append(ch)
    if duplicated:
        deviations.append("MSH-2 repeats an encoding character; duplicates ignored")
    if len(chars) < 4:
        deviations.append("MSH-2 has fewer than 4 encoding characters; standard ones assumed")
        for default in ("^", "~", "\\", "&")[len(chars) :]:
            chars.append(default if default not in chars and default != sep else "")
    return EncodingChars(
        field=sep,
        component=chars[0] or "^",
        repetition=chars[1],
        escape=chars[2],
        subcomponent=chars[3],
        truncation=chars[4] if len(chars) > 4 else "",
    )


def _header(msh: Segment, evn: Segment | None) -> Header:
    """MSH facts; never raises (see :func:`_check_header`). Reads each field once."""
    fields = msh.fields
    enc = msh.enc

    def comps(index: int) -> list[str]:
        raw = fields[index] if index < len(fields) else ""
        if not raw:
            return []
        if enc.repetition and enc.repetition in raw:
            raw = raw.split(enc.repetition, 1)[0]
        parts = raw.split(enc.component)
        out = []
        for part in parts:
            if enc.subcomponent and enc.subcomponent in part:
                part = part.split(enc.subcomponent, 1)[0]
            if part == '""':
                part = ""
            elif enc.escape and enc.escape in part:
                part = unescape(part, enc, msh.charset)
            out.append(part.strip())
        return out

    def first(index: int, comp: int = 1) -> str:
        parts = comps(index)
        return parts[comp - 1] if comp <= len(parts) else ""

    def hd(index: int) -> str:
        parts = comps(index)[:3]
        while parts and not parts[-1]:
            parts.pop()
        return enc.component.join(parts)

    msg_type = comps(9)
    trigger = msg_type[1] if len(msg_type) > 1 else ""
    if not trigger and evn is not None:
        trigger = evn.value(1) or ""  # v2.1: the event type lives in EVN-1
    return Header(
        encoding=enc,
        sending_application=hd(3),
        sending_facility=hd(4),
        receiving_application=hd(5),
        receiving_facility=hd(6),
        timestamp=first(7),
        message_type=(msg_type[0] if msg_type else "").upper(),
        trigger_event=trigger.strip().upper(),
        message_structure=(msg_type[2] if len(msg_type) > 2 else "").upper(),
        control_id="".join(c for c in first(10) if c >= " ").strip(),
        processing_id=first(11),
        version=first(12),
        accept_ack_type=first(15).upper(),
        application_ack_type=first(16).upper(),
        charset=first(18),
    )


def _check_header(header: Header) -> None:
    if not header.message_type:
        raise MappingError("MSH-9 (message type) is empty", location="MSH-9", code="required")
    if not header.control_id:
        raise MappingError("MSH-10 (message control id) is empty", location="MSH-10", code="required")


def split_lines(text: str, deviations: list[str] | None = None) -> list[str]:
    """Segment lines of an ER7 text: any of CR, LF, CRLF ends a segment; blank lines dropped;
    a line that is not a segment is joined to the previous one with a line break."""
    lines: list[str] = []
    sep = text[3] if text.startswith(("MSH", "FHS", "BHS")) and len(text) > 3 else "|"
    if "\n" in text:
        raw_lines = _LINE_BREAK.split(text)
        if deviations is not None and "\r" in text:
            kinds = text.count("\r\n")
            if kinds != text.count("\r") or kinds != text.count("\n"):
                deviations.append("mixed CR and LF segment terminators")
    else:
        raw_lines = text.split("\r")
    for line in raw_lines:
        line = line.strip(_FRAMING)
        if not line.strip():
            continue
        if _SEGMENT_NAME.match(line) and (len(line) == 3 or line[3] == sep):
            lines.append(line)
        elif lines:
            lines[-1] += "\n" + line
            if deviations is not None:
                deviations.append(f"line after {lines[-1][:3]} is not a segment; joined to it")
        else:
            lines.append(line)
    return lines


def parse(raw: bytes | str) -> Message:
    """Parse one ER7 message (bytes are decoded per MSH-18; str is taken as decoded).

    Raises :class:`MappingError` if there is no MSH, or MSH-9/MSH-10 is empty.
    """
    deviations: list[str] = []
    if isinstance(raw, bytes | bytearray | memoryview):
        text, codec, deviations = decode_message(bytes(raw))
    else:
        text, codec = raw.lstrip("\ufeff"), "utf-8"
    text = text.lstrip(_FRAMING + " \t\r\n")
    if not text.startswith("MSH") or len(text) < 8:
        raise MappingError("message does not start with an MSH segment", location="MSH", code="segment_sequence")
    header_line = text[: min((p for p in (text.find("\r"), text.find("\n")) if p >= 0), default=len(text))]
    if len(header_line) < 8:
        raise MappingError("MSH segment is too short", location="MSH", code="segment_sequence")
    if header_line[3].isalnum() or header_line[3] in " \t":
        raise MappingError("MSH-1 (field separator) is not a delimiter", location="MSH-1", code="data_type")
    enc = _encoding_chars(header_line, deviations)
    field_sep = enc.field
    lines = split_lines(text, deviations)
    segments: list[Segment] = []
    counts: dict[str, int] = {}
    for position, line in enumerate(lines):
        name = line[:3]
        if not _SEGMENT_NAME.fullmatch(name):
            raise MappingError(
                f"segment {position + 1} has no valid segment name",
                location=f"segment {position + 1}",
                code="segment_sequence",
            )
        fields = line.split(field_sep)
        if name == "MSH":
            fields.insert(1, field_sep)
            if position > 0:
                deviations.append("a second MSH inside the message; batch files must be split first")
        occurrence = counts.get(name, 0) + 1
        counts[name] = occurrence
        segments.append(Segment(name, fields, enc, codec, position, occurrence))
    evn = next((s for s in segments if s.name == "EVN"), None)
    header = _header(segments[0], evn)
    _check_header(header)
    return Message(segments=segments, header=header, codec=codec, deviations=deviations)


def peek_header(raw: bytes | str) -> Header | None:
    """MSH facts of a message that may not parse (to answer it with an ACK), or None.

    Never raises: this is what an MLLP listener calls before it knows anything else.
    """
    try:
        return parse(raw).header
    except Exception:  # noqa: BLE001, S110 - fall through to the bare header read below
        pass
    try:
        text = raw.decode("latin-1") if isinstance(raw, bytes | bytearray) else str(raw)
        start = text.find("MSH")
        if start < 0 or len(text) < start + 8:
            return None
        line = split_lines(text[start:])[0]
        if len(line) < 8 or line[3].isalnum() or line[3].isspace():
            return None
        enc = _encoding_chars(line, [])
        fields = line.split(enc.field)
        fields.insert(1, enc.field)
        return _header(Segment("MSH", fields, enc, "latin-1"), None)
    except Exception:  # noqa: BLE001 - a header peek must never raise
        return None
