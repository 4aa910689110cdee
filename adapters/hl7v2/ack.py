"""Acknowledgments: original and enhanced mode ACKs with MSA and ERR (HL7 v2.5.1 Ch. 2.9, 2.14.1).

* :func:`should_send_ack` - MSH-15/MSH-16 (table 0155: AL, NE, SU, ER) as a pure function.
* :func:`build_ack` - an ACK answering a message, written in the inbound message's version,
  encoding characters and character set (MSH-18), sender and receiver swapped, MSA-2 = MSH-10.
* :func:`ack_for_error` - the negative ACK (AE/AR or CE/CR) for an exception, with an ERR segment:
  ERR-2 location (segment, sequence, field...), ERR-3 table 0357 code, ERR-4 severity, ERR-8 text
  (v2.5+); for v2.1-2.4 receivers ERR-1 (ELD) and MSA-3/MSA-6 instead.

Texts come from :class:`hub.errors.MappingError` messages, which name fields, never values.
"""

from __future__ import annotations

import enum
import re
import uuid
from datetime import UTC, datetime

from hub.errors import MappingError, UnsupportedMessage

from .charset import codec_for
from .escape import DEFAULT_ENCODING, EncodingChars, escape
from .parser import ERROR_CODES, Header, peek_header

__all__ = [
    "AckCode",
    "ack_code_for",
    "ack_for_error",
    "build_ack",
    "error_code",
    "parse_error_location",
    "should_send_ack",
]


class AckCode(enum.StrEnum):
    """Table 0008 acknowledgment codes."""

    AA = "AA"  # application accept
    AE = "AE"  # application error
    AR = "AR"  # application reject
    CA = "CA"  # commit accept (enhanced mode)
    CE = "CE"  # commit error
    CR = "CR"  # commit reject

    @property
    def positive(self) -> bool:
        return self in (AckCode.AA, AckCode.CA)


def should_send_ack(ack_type: str | None, *, success: bool) -> bool:
    """Whether an acknowledgment is due under MSH-15 (accept) or MSH-16 (application) ``ack_type``.

    Table 0155: AL always, NE never, SU only on success, ER only on error/reject. An empty
    value means "always" (original mode answers every message; in enhanced mode an empty
    MSH-15/16 is read as AL, the permissive choice). Unknown values also mean "always".
    """
    kind = (ack_type or "").strip().upper()
    if kind == "NE":
        return False
    if kind == "SU":
        return success
    if kind == "ER":
        return not success
    return True


#: 0357 codes that reject the message as a whole (AR / CR) rather than its content (AE / CE).
_REJECT_CODES = frozenset({"200", "201", "202", "203"})


def error_code(error: BaseException) -> str:
    """HL7 table 0357 code for an exception (207 application internal error by default)."""
    if isinstance(error, UnsupportedMessage):
        return "200"
    if isinstance(error, MappingError):
        return ERROR_CODES.get(error.code, "207")
    return "207"


def ack_code_for(error: BaseException | None, *, header: Header | None = None, accept_level: bool = False) -> AckCode:
    """AA/AE/AR (or CA/CE/CR with ``accept_level``) for an outcome; None = success.

    Reject (AR/CR) for what cannot be processed at all: an unreadable MSH, an unsupported message
    type, event, processing id or version; error (AE/CE) for content that cannot be translated.
    """
    if error is None:
        return AckCode.CA if accept_level else AckCode.AA
    code = error_code(error)
    location = getattr(error, "location", None) or ""
    reject = code in _REJECT_CODES or header is None or location.startswith("MSH")
    if accept_level:
        return AckCode.CR if reject else AckCode.CE
    return AckCode.AR if reject else AckCode.AE


_LOCATION = re.compile(
    r"(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>\d+)\])?(?:-(?P<field>\d+)(?:\[(?P<rep>\d+)\])?"
    r"(?:\.(?P<comp>\d+))?(?:\.(?P<sub>\d+))?)?$"
)


def parse_error_location(location: str | None) -> tuple[str, int, int, int, int, int] | None:
    """(segment, sequence, field, repetition, component, subcomponent) of an HL7 location such as
    ``OBX[3]-5.1`` or ``PATIENT_RESULT[1]/PID-3``; None when it is not an HL7 location.

    A mapping rule whose source is empty is reported as ``<node> <source>`` (``OBX[2] OBX-14``,
    ``OBX[2]-5 1``): the node says which occurrence, the source which field or component.
    """
    if not location:
        return None
    parts = location.strip().rsplit("/", 1)[-1].split(" ")
    where = _location_parts(parts[-1])
    node = _location_parts(parts[-2]) if len(parts) > 1 else None
    if node is not None:
        relative = _RELATIVE.match(parts[-1])
        if relative is not None:
            where = _below(node, [int(n) for n in parts[-1].split(".")])
        elif where is not None and where[0] == node[0]:
            where = (where[0], node[1], *where[2:])
    return where


_RELATIVE = re.compile(r"\d+(?:\.\d+){0,2}$")


def _location_parts(text: str) -> tuple[str, int, int, int, int, int] | None:
    match = _LOCATION.match(text)
    if match is None:
        return None
    return (
        match["seg"],
        int(match["occ"] or 1),
        int(match["field"] or 0),
        int(match["rep"] or (1 if match["field"] else 0)),
        int(match["comp"] or 0),
        int(match["sub"] or 0),
    )


def _below(node: tuple[str, int, int, int, int, int], numbers: list[int]) -> tuple[str, int, int, int, int, int]:
    """``numbers`` (field[.component[.sub]] or component[.sub]...) relative to ``node``."""
    seg, seq, field, rep, comp, sub = node
    slots = [field, comp, sub]
    start = 0 if not field else (1 if not comp else 2)
    for offset, number in enumerate(numbers[: 3 - start]):
        slots[start + offset] = number
    return seg, seq, slots[0], rep or (1 if slots[0] else 0), slots[1], slots[2]


def _timestamp(now: datetime | None) -> str:
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return moment.strftime("%Y%m%d%H%M%S") + f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts) or (2, 5)


def _writable(enc: EncodingChars) -> bool:
    """Whether an ACK can be written with these delimiters: distinct, and none of them a character
    that timestamps, version numbers or codes contain. Otherwise the standard ones are used."""
    chars = [enc.field, enc.component, enc.repetition, enc.escape, enc.subcomponent]
    if enc.truncation:
        chars.append(enc.truncation)
    return (
        all(len(c) == 1 and not c.isalnum() and not c.isspace() and c not in "+-.:/_'\"" for c in chars)
        and all(chars)
        and len(set(chars)) == len(chars)
    )


def _hd(value: str, enc: EncodingChars) -> str:
    return enc.component.join(escape(part, enc) for part in value.split(enc.component))


def build_ack(
    header: Header | None,
    code: AckCode | str,
    *,
    error: BaseException | None = None,
    text: str | None = None,
    control_id: str | None = None,
    now: datetime | None = None,
    severity: str = "E",
) -> bytes:
    """An ACK for the message whose MSH facts are ``header`` (None: the MSH was unreadable).

    ``code`` is the MSA-1 value; with ``error`` an ERR segment is added (0357 code from
    :func:`error_code`, location from ``error.location``, text from ``text`` or the error).
    ``control_id`` is MSH-10 of the ACK (default: a fresh unique id). Returns bytes in the
    inbound message's character set, segments ended by CR (no MLLP framing).
    """
    ack_code = AckCode(str(code))
    enc = header.encoding if header is not None and _writable(header.encoding) else DEFAULT_ENCODING
    version = (header.version if header is not None and header.version else "2.5.1").strip()
    vt = _version_tuple(version)
    sep = enc.field
    charset = header.charset if header is not None else ""
    trigger = header.trigger_event if header is not None else ""
    message_text = text if text is not None else (str(error) if error is not None else "")
    message_text = escape(message_text[:200], enc)
    msh = [
        "MSH",
        enc.msh2,
        _hd(header.receiving_application, enc) if header else "",
        _hd(header.receiving_facility, enc) if header else "",
        _hd(header.sending_application, enc) if header else "",
        _hd(header.sending_facility, enc) if header else "",
        _timestamp(now),
        "",
        enc.component.join(["ACK", escape(trigger, enc), "ACK"])
        if trigger and vt >= (2, 3, 1)
        else (enc.component.join(["ACK", escape(trigger, enc)]) if trigger else "ACK"),
        escape(control_id or uuid.uuid4().hex[:20], enc),
        escape(header.processing_id, enc) if header and header.processing_id else "P",
        escape(version, enc),
    ]
    if charset:
        msh += ["", "", "", "", "", escape(charset, enc)]
    segments = [sep.join(msh)]
    msa = ["MSA", ack_code.value, escape(header.control_id, enc) if header else ""]
    zero357 = error_code(error) if error is not None else ""
    if error is not None and vt < (2, 5):
        msa.append(message_text)  # MSA-3 text message (retained for pre-2.5 receivers)
        if vt >= (2, 3):
            msa += ["", "", enc.component.join([zero357, "", "HL70357"])]  # MSA-6 error condition
    segments.append(sep.join(msa))
    if error is not None:
        where = parse_error_location(getattr(error, "location", None))
        if vt >= (2, 5):
            erl = ""
            if where is not None:
                seg, seq, field, rep, comp, sub = where
                parts = [seg, str(seq)] + [str(n) if n else "" for n in (field, rep, comp, sub)]
                while parts and not parts[-1]:
                    parts.pop()
                erl = enc.component.join(parts)
            err = [
                "ERR",
                "",
                erl,
                enc.component.join([zero357, _TEXT_0357.get(zero357, ""), "HL70357"]),
                severity,
                "",
                "",
                "",
                message_text,
            ]
        else:
            eld = ""
            sub_sep = enc.subcomponent or enc.component
            code_ce = sub_sep.join([zero357, _TEXT_0357.get(zero357, ""), "HL70357"])
            if where is not None:
                seg, seq, field, *_ = where
                eld = enc.component.join([seg, str(seq), str(field) if field else "", code_ce])
            else:
                eld = enc.component.join(["", "", "", code_ce])
            err = ["ERR", eld]
        segments.append(sep.join(err))
    body = "\r".join(segments) + "\r"
    codec = (codec_for(charset) if charset else None) or "utf-8"
    try:
        return body.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return body.encode("utf-8")


def ack_for_error(
    raw: bytes | str,
    error: BaseException,
    *,
    header: Header | None = None,
    accept_level: bool = False,
    control_id: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """The negative ACK for ``raw`` that failed with ``error`` (MSH facts peeked if not given)."""
    if header is None:
        header = peek_header(raw)
    code = ack_code_for(error, header=header, accept_level=accept_level)
    return build_ack(header, code, error=error, control_id=control_id, now=now)


#: Display texts of table 0357.
_TEXT_0357 = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
