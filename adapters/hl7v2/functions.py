"""Transforms that mapping rules call by name (``transform: datetime``) for HL7 v2 values.

They follow the HL7 v2-to-FHIR IG datatype maps (DTM/TS → dateTime, NM → decimal, SN →
Quantity/Range/Ratio, HD → Identifier.system, ED → Attachment, XTN → ContactPoint.value,
CWE.3 → Coding.system via table 0396). Each receives the source node, the engine context and
the rule's ``args``; it returns a value, or None after a warning when the input cannot be
converted (``PID-7: not a valid date; left out``) - warnings name fields, never values.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub.mapping.source import Function, FunctionContext, value_pure
from hub.mapping.target import Choice

from .source import HPath, ValueNode

__all__ = ["FUNCTIONS", "Hl7Settings", "convert_dtm"]

_DTM = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?(?P<f>\.\d{1,6})?"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?$"
)
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)$")
_OID = re.compile(r"^[0-2](?:\.\d+)+$")
_URI_SAFE = re.compile(r"^[A-Za-z0-9._~\-]+$")
_PATHS = {n: HPath(text=str(n), numbers=(n,)) for n in range(1, 21)}

UCUM = "http://unitsofmeasure.org"

#: Common UCUM unit codes seen in OBX-6 without a coding system (HL7 v2.5.1 Ch. 7.4.2.6 advises UCUM).
COMMON_UCUM = frozenset(
    """% /uL /mL /L /min /h /d 10*3/uL 10*6/uL 10*9/L 10*12/L 10*3/mL 10*6/mL fL pg g/dL g/L mg/dL
    mg/L ug/dL ug/L ug/mL ng/mL ng/dL ng/L pg/mL mmol/L umol/L nmol/L pmol/L mol/L meq/L U/L [IU]/L
    m[IU]/L [iU]/L u[IU]/mL U/mL kU/L mL/min mL/min/{1.73_m2} mm/h mm[Hg] cm[H2O] kg g mg ug cm mm m
    [in_i] [lb_av] Cel [degF] s min h d wk mo a L mL dL uL kg/m2 m2 {ratio} {INR} {cells}/uL /[HPF]
    /[LPF] mosm/kg [pH] {titer} 1 {beats}/min""".split()
)


class Hl7Settings:
    """Site settings the transforms need: the default time zone for local times.

    HL7 v2 timestamps often carry no UTC offset, but FHIR dateTime values with a time must.
    The offset comes from the value, else from MSH-7 (same sender, same clock), else from
    ``default_timezone`` (an IANA name such as ``Europe/Berlin``); without any, the time is
    dropped and the date kept, with a warning.
    """

    def __init__(self, default_timezone: str | None = None) -> None:
        self.zone: ZoneInfo | None = None
        if default_timezone:
            try:
                self.zone = ZoneInfo(default_timezone)
            except (ZoneInfoNotFoundError, ValueError):
                from hub.errors import ConfigError

                raise ConfigError("unknown time zone", key="default_timezone") from None

    def offset_for(self, moment: datetime) -> str | None:
        if self.zone is None:
            return None
        offset = self.zone.utcoffset(moment)
        return _format_offset(offset) if offset is not None else None


def _format_offset(offset: timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _norm_tz(tz: str) -> str:
    if tz == "Z":
        return "+00:00"
    digits = tz[1:].replace(":", "")
    if len(digits) == 2:
        digits += "00"
    return f"{tz[0]}{digits[:2]}:{digits[2:4]}"


def convert_dtm(text: str, *, want: str = "dateTime", default_offset: str | None = None) -> tuple[str | None, str]:
    """HL7 DTM/TS/DT → FHIR ``date``, ``dateTime`` or ``instant`` text.

    Returns (value or None, problem) - problem is "" when all went well, otherwise a short
    reason (``not a valid date``, ``time without UTC offset; date kept``...). A pure function
    of its arguments, remembered for the last few thousand (a feed repeats its timestamps).
    """
    return _convert_dtm(text, want, default_offset)


_OFFSET = re.compile(r"^[+-](0\d|1[0-3]):[0-5]\d$|^[+-]14:00$")


@lru_cache(maxsize=8192)
def _convert_dtm(text: str, want: str, default_offset: str | None) -> tuple[str | None, str]:
    match = _DTM.match(text.replace(" ", ""))
    if match is None:
        return None, "not a valid HL7 date/time"
    y, mo, d, h, mi, s, f, tz = (match[k] for k in ("y", "mo", "d", "h", "mi", "s", "f", "tz"))
    try:
        date(int(y), int(mo or 1), int(d or 1))
        if h is not None:
            datetime(int(y), int(mo or 1), int(d or 1), int(h), int(mi or 0), min(int(s or 0), 59))
    except ValueError:
        return None, "not a valid date"
    if y == "0000":
        return None, "not a valid date"
    day = y + (f"-{mo}" if mo else "") + (f"-{d}" if mo and d else "")
    if want == "date":
        return day, ""
    if h is None or not (mo and d):
        if want == "instant":
            return None, "not precise enough for an instant"
        return day, ""
    offset = _norm_tz(tz) if tz else default_offset
    if offset is None:
        if want == "instant":
            return None, "time without UTC offset"
        return day, "time without UTC offset; date kept"
    if not _OFFSET.match(offset):
        return day, "UTC offset out of range; date kept"
    fraction = f or ""
    return f"{day}T{h}:{mi or '00'}:{s or '00'}{fraction}{offset}", ""


def _msh_offset(node: Any) -> str | None:
    doc = getattr(node, "doc", None)
    if doc is None:
        return None
    cache = getattr(doc, "cache", None)
    if cache is not None and "msh_offset" in cache:
        found: str | None = cache["msh_offset"]
        return found
    stamp = doc.message.header.timestamp
    match = _DTM.match(stamp.replace(" ", "")) if stamp else None
    offset = _norm_tz(match["tz"]) if match and match["tz"] else None
    if cache is not None:
        cache["msh_offset"] = offset
    return offset


def _default_offset(node: Any, text: str) -> str | None:
    offset = _msh_offset(node)
    if offset is not None:
        return offset
    settings = getattr(getattr(node, "doc", None), "settings", None)
    if isinstance(settings, Hl7Settings) and settings.zone is not None:
        match = _DTM.match(text.replace(" ", ""))
        if match and match["h"]:
            try:
                moment = datetime(int(match["y"]), int(match["mo"]), int(match["d"]), int(match["h"]))
            except (TypeError, ValueError):
                return None
            return settings.offset_for(moment)
    return None


def _location(node: Any) -> str:
    return str(getattr(node, "location", "value"))


def _time_function(want: str) -> Function:
    def convert(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
        text = node.value(None)
        if not text:
            return None
        value, problem = convert_dtm(text, want=want, default_offset=_default_offset(node, text))
        if problem:
            ctx.warn(f"{_location(node)}: {problem}" + ("" if value else "; left out"))
        return value

    return convert


def f_time(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """TM (HHMM[SS[.S]]) → FHIR time hh:mm:ss."""
    text = (node.value(None) or "").strip()
    match = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?(?:[+-]\d{4})?$", text)
    if not match or int(match[1]) > 23 or int(match[2] or 0) > 59 or int(match[3] or 0) > 59:
        if text:
            ctx.warn(f"{_location(node)}: not a valid time; left out")
        return None
    return f"{match[1]}:{match[2] or '00'}:{match[3] or '00'}{match[4] or ''}"


def _number(text: str) -> int | float | None:
    text = text.strip()
    if not _NUMBER.match(text):
        return None
    if "." in text:
        return float(text)
    return int(text)


def f_decimal(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """NM → decimal (JSON number)."""
    text = node.value(None)
    if text is None:
        return None
    value = _number(text)
    if value is None:
        ctx.warn(f"{_location(node)}: not a number; left out")
    return value


def f_integer(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """NM/SI → integer."""
    value = f_decimal(node, ctx, args)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        ctx.warn(f"{_location(node)}: not a whole number; left out")
        return None
    return value


def f_boolean(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """ID from table 0136 (Y/N) → boolean."""
    text = (node.value(None) or "").strip().upper()
    if text in ("Y", "YES", "T", "TRUE", "1"):
        return True
    if text in ("N", "NO", "F", "FALSE", "0"):
        return False
    if text:
        ctx.warn(f"{_location(node)}: not a Y/N value; left out")
    return None


def _component(node: Any, number: int) -> str | None:
    value = node.value(_PATHS[number])
    return value.strip() if isinstance(value, str) and value.strip() else None


def _segment_units(node: Any, field: int) -> tuple[str | None, str | None, str | None]:
    if not isinstance(node, ValueNode):
        return None, None, None
    seg = node.segment
    node.doc.consumed.add((seg.position, field))
    return seg.value(field, 1, 1, 1), seg.value(field, 1, 2, 1), seg.value(field, 1, 3, 1)


def _unit_fields(code: str | None, text: str | None, system: str | None) -> dict[str, Any]:
    return dict(_unit_items(code, text, system))


@lru_cache(maxsize=4096)
def _unit_items(code: str | None, text: str | None, system: str | None) -> tuple[tuple[str, str], ...]:
    out: dict[str, Any] = {}
    if text or code:
        out["unit"] = text or code
    if code and ((system or "").upper() in ("UCUM", "ANSI+UCUM", "UCUM+ANSI") or (not system and code in COMMON_UCUM)):
        out["system"] = UCUM
        out["code"] = code
    return tuple(out.items())


def f_units(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """CWE units (OBX-6) → the unit/system/code part of a Quantity (UCUM when recognisable)."""
    return _unit_fields(_component(node, 1), _component(node, 2), _component(node, 3)) or None


_COMPARATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}


def f_quantity(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """NM (with units from field ``args.units`` of the same segment, OBX-6 by default) → Quantity.

    Tolerates a comparator written into the number (``<5``), which senders do.
    """
    text = (node.value(None) or "").strip()
    if not text:
        return None
    comparator = None
    if text[0] in "<>":
        for sign in (">=", "<=", ">", "<"):
            if text.startswith(sign):
                comparator, text = sign, text[len(sign) :].strip()
                break
    value = _number(text)
    if value is None:
        ctx.warn(f"{_location(node)}: not a number; left out")
        return None
    quantity: dict[str, Any] = {"value": value}
    if comparator:
        quantity["comparator"] = comparator
    quantity.update(_unit_items(*_segment_units(node, int(args.get("units", 6)))))
    return quantity


#: Duration units (AIS-8, AIL-10, AIP-10: CNE, ISO+/ANSI or UCUM codes) → seconds.
_DURATION_SECONDS = {
    "S": 1, "SEC": 1, "SECONDS": 1,
    "MIN": 60, "M": 60, "MINUTES": 60,
    "H": 3600, "HR": 3600, "HOURS": 3600,
    "D": 86400, "DAYS": 86400,
    "WK": 604800, "W": 604800,
}  # fmt: skip


def f_end_after(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """The end of a period that starts at this DTM and lasts field ``args.duration`` of the same
    segment, in the units of field ``args.units`` (minutes when empty, as HL7 defines for AIS-8):
    AIS-4 + AIS-7/AIS-8 → Appointment.end (IG AIS[Appointment]). An instant, with the start's
    offset; nothing (and a warning) when the duration or its units cannot be read."""
    text = node.value(None)
    if not text or not isinstance(node, ValueNode):
        return None
    start, problem = convert_dtm(text, want="instant", default_offset=_default_offset(node, text))
    if start is None:
        ctx.warn(f"{_location(node)}: {problem}; no end computed")
        return None
    seg = node.segment
    duration_field, units_field = int(args["duration"]), int(args["units"])
    node.doc.consumed.add((seg.position, duration_field))
    node.doc.consumed.add((seg.position, units_field))
    amount = _number(seg.value(duration_field, 1, 1, 1) or "")
    unit = (seg.value(units_field, 1, 1, 1) or "MIN").strip().upper()
    factor = _DURATION_SECONDS.get(unit)
    if amount is None or amount < 0 or factor is None:
        ctx.warn(f"{seg.label}-{duration_field}: duration or its units not understood; no end computed")
        return None
    end = datetime.fromisoformat(start) + timedelta(seconds=amount * factor)
    return end.isoformat(timespec="milliseconds" if "." in start else "seconds")


def f_sn(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """SN (structured numeric) → value[x]: Quantity, Range, Ratio or string (IG SN rows; see
    HL7/v2-to-fhir#51 for the overlap this resolves by the separator, SN.3)."""
    comparator = _component(node, 1)
    first = _component(node, 2)
    separator = _component(node, 3)
    second = _component(node, 4)
    units = _unit_fields(*_segment_units(node, int(args.get("units", 6))))
    n1 = _number(first) if first else None
    n2 = _number(second) if second else None
    if (first and n1 is None) or (second and n2 is None):
        ctx.warn(f"{_location(node)}: structured numeric is not numeric; left out")
        return None
    if separator in (":", "/") and n1 is not None and n2 is not None:
        return Choice("Ratio", {"numerator": {"value": n1, **units}, "denominator": {"value": n2}})
    if separator == "-" and (n1 is not None or n2 is not None):
        out: dict[str, Any] = {}
        if n1 is not None:
            out["low"] = {"value": n1, **units}
        if n2 is not None:
            out["high"] = {"value": n2, **units}
        return Choice("Range", out)
    if separator is None and second is None and n1 is not None:
        quantity: dict[str, Any] = {"value": n1, **units}
        if comparator in _COMPARATORS:
            quantity["comparator"] = _COMPARATORS[comparator]
        elif comparator not in (None, "="):
            return Choice("String", f"{comparator}{first}")
        return Choice("Quantity", quantity)
    text = "".join(p for p in (comparator, first, separator, second) if p)
    return Choice("String", text) if text else None


def f_text(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """ST/TX/FT → string, the whole repetition (separators a sender left unescaped are kept)."""
    if isinstance(node, ValueNode):
        text = node.text()
    else:
        text = node.value(None)
    if text is None:
        return None
    text = text.rstrip()
    return text or None


def _system_from_hd(ctx: FunctionContext, namespace: str | None, uid: str | None, uid_type: str | None) -> Any:
    if uid and uid_type:
        table = ctx.concepts.get("table-hl70301-to-uri-template")
        lookup = table.lookup(uid_type) if table is not None else None
        if lookup is not None and lookup.mapped and lookup.coding is not None:
            return lookup.coding.code.replace("{id}", uid)
    for key in (namespace, uid):
        if not key:
            continue
        table = ctx.concepts.get("assigning-authority-to-system")
        if table is not None:
            lookup = table.lookup(key)
            if lookup.mapped and lookup.coding is not None:
                return lookup.coding.code
    if uid and _OID.match(uid):
        return f"urn:oid:{uid}"
    if namespace and _OID.match(namespace):
        return f"urn:oid:{namespace}"
    if namespace and _URI_SAFE.match(namespace):
        return f"urn:id:{namespace}"
    if uid and _URI_SAFE.match(uid):
        return f"urn:id:{uid}"
    return None


def f_hd_system(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """HD (namespace ^ universal id ^ universal id type) → Identifier.system URI.

    ISO/UUID/URI universal ids become ``urn:oid:``/``urn:uuid:``/the URI (table 0301 ConceptMap);
    a bare namespace is looked up in the site's ``assigning-authority-to-system`` ConceptMap,
    else written ``urn:id:<namespace>``. ``args.first`` = the component where HD starts (EI: 2).
    """
    first = int(args.get("first", 1))
    return _system_from_hd(ctx, _component(node, first), _component(node, first + 1), _component(node, first + 2))


def f_coding_system(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """Name of coding system (CWE.3/.6, table 0396) → Coding.system URI."""
    name = (node.value(None) or "").strip()
    if not name:
        return None
    table = ctx.concepts.get("table-hl70396-to-uri")
    if table is not None:
        lookup = table.lookup(name)
        if lookup.mapped and lookup.coding is not None:
            return lookup.coding.code
    upper = name.upper()
    if upper.startswith("HL7") and upper[3:].isdigit():
        return f"http://terminology.hl7.org/CodeSystem/v2-{upper[3:]}"
    if _OID.match(name):
        return f"urn:oid:{name}"
    if name.startswith(("http://", "https://", "urn:")):
        return name
    if _URI_SAFE.match(name):
        ctx.warn(f"{_location(node)}: coding system {name[:20]!r} is not in table 0396; kept as urn:id")
        return f"urn:id:{name}"
    ctx.warn(f"{_location(node)}: coding system name cannot form a URI; left out")
    return None


def _name_parts(node: Any, first: int) -> str | None:
    family = _component(node, first)
    given = [p for p in (_component(node, first + 1), _component(node, first + 2)) if p]
    prefix = _component(node, first + 4)
    parts = [p for p in (prefix, *given, family) if p]
    return " ".join(parts) if parts else None


def f_name_text(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """XPN/XCN → a display string "prefix given middle family" (XCN: ``args.first`` = 2)."""
    return _name_parts(node, int(args.get("first", 1)))


def f_location_text(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """PL (point of care ^ room ^ bed ^ facility ^ status ^ type ^ building ^ floor) → display."""
    parts = [_component(node, n) for n in (4, 7, 8, 1, 2, 3)]
    labels = [p for p in parts if p]
    if not labels:
        facility = _component(node, 4)
        return facility
    return " ".join(labels)


def f_xtn_value(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """XTN → ContactPoint.value: e-mail (XTN.4) for Internet/X.400; else XTN.1 (v2.3-style
    formatted number), else +country (area) local ext (v2.5 XTN.5-8)."""
    equipment = (_component(node, 3) or "").upper()
    email = _component(node, 4)
    if equipment in ("INTERNET", "X.400") or (email and not _component(node, 1)):
        return email
    formatted = _component(node, 1)
    if formatted and not formatted.startswith("@"):
        return formatted
    country, area, local, ext = (_component(node, n) for n in (5, 6, 7, 8))
    if not local:
        return email or formatted
    text = ""
    if country:
        text += f"+{country.lstrip('+')} "
    if area:
        text += f"({area}) "
    text += local
    if ext:
        text += f" ext. {ext}"
    return text


_MEDIA = {
    ("AP", "PDF"): "application/pdf",
    ("APPLICATION", "PDF"): "application/pdf",
    ("AP", "RTF"): "application/rtf",
    ("APPLICATION", "RTF"): "application/rtf",
    ("AP", "XML"): "application/xml",
    ("AP", "OCTET-STREAM"): "application/octet-stream",
    ("TEXT", "HTML"): "text/html",
    ("TEXT", "XML"): "text/xml",
    ("TEXT", "RTF"): "text/rtf",
    ("TEXT", "PLAIN"): "text/plain",
    ("TEXT", ""): "text/plain",
    ("IM", "JPEG"): "image/jpeg",
    ("IM", "PNG"): "image/png",
    ("IM", "TIFF"): "image/tiff",
    ("IMAGE", "JPEG"): "image/jpeg",
    ("IMAGE", "PNG"): "image/png",
    ("IMAGE", "TIFF"): "image/tiff",
}


def f_attachment(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """ED (source ^ type ^ subtype ^ encoding ^ data) → Attachment with base64 data.

    Encodings (table 0299): Base64 kept (whitespace removed), Hex and A (ASCII text) converted.
    """
    kind = (_component(node, 2) or "").upper()
    subtype = (_component(node, 3) or "").upper()
    encoding = (_component(node, 4) or "").upper()
    data = node.value(_PATHS[5]) or ""
    if not data:
        return None
    try:
        if encoding in ("BASE64", "B64"):
            raw = base64.b64decode("".join(data.split()), validate=True)
        elif encoding == "HEX":
            raw = bytes.fromhex(data)
        else:
            raw = data.encode("utf-8")
    except (binascii.Error, ValueError):
        ctx.warn(f"{_location(node)}: encapsulated data does not match its encoding; left out")
        return None
    content_type = _MEDIA.get((kind, subtype))
    if content_type is None and "/" in subtype:
        content_type = subtype.lower()
    if content_type is None:
        content_type = "application/octet-stream"
    return {"contentType": content_type, "data": base64.b64encode(raw).decode("ascii")}


_TEXT_TYPES = frozenset({"TX", "ST", "FT", ""})


def f_text_document(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """The text of a document sent as OBX lines (MDM: OBX-2 TX/ST/FT or empty, one line per OBX-5
    repetition) → one text/plain Attachment (base64). Applied to the message root."""
    doc = getattr(node, "doc", None)
    if doc is None:
        return None
    lines: list[str] = []
    for seg in doc.message.all("OBX"):
        doc.consumed.add((seg.position, 2))
        if (seg.value(2) or "").strip().upper() not in _TEXT_TYPES:
            continue
        doc.consumed.add((seg.position, 5))
        for rep in range(1, len(seg.repetitions(5)) + 1):
            lines.append(seg.text(5, rep) or "")
    if not any(line.strip() for line in lines):
        return None
    data = "\n".join(lines).rstrip("\n").encode("utf-8")
    return {"contentType": "text/plain; charset=utf-8", "data": base64.b64encode(data).decode("ascii")}


def f_join_fields(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """Components ``args.components`` (list of numbers) joined with ``args.separator``."""
    numbers = args.get("components") or [1, 2]
    separator = str(args.get("separator", " "))
    parts = [_component(node, int(n)) for n in numbers]
    text = separator.join(p for p in parts if p)
    return text or None


def f_message_type(node: Any, ctx: FunctionContext, args: Mapping[str, Any]) -> Any:
    """MSH-9 → "TYPE^EVENT^STRUCTURE" text (IG: Provenance.activity display)."""
    parts = [_component(node, n) for n in (1, 2, 3)]
    return "^".join(p for p in parts if p) or None


def _value_pure(function: Function) -> Function:
    """:func:`hub.mapping.source.value_pure`. Transforms reading other fields (``quantity`` reads
    OBX-6), MSH-7 or settings (the date transforms: the default UTC offset) are not pure."""
    return value_pure(function)


FUNCTIONS: dict[str, Function] = {
    "datetime": _time_function("dateTime"),
    "date": _time_function("date"),
    "instant": _time_function("instant"),
    "time": _value_pure(f_time),
    "decimal": _value_pure(f_decimal),
    "integer": _value_pure(f_integer),
    "boolean": _value_pure(f_boolean),
    "units": _value_pure(f_units),
    "quantity": f_quantity,
    "sn": f_sn,
    "end_after": f_end_after,
    "text": _value_pure(f_text),
    "hd_system": _value_pure(f_hd_system),
    "coding_system": _value_pure(f_coding_system),
    "name_text": _value_pure(f_name_text),
    "location_text": _value_pure(f_location_text),
    "xtn_value": _value_pure(f_xtn_value),
    "attachment": _value_pure(f_attachment),
    "text_document": f_text_document,
    "join": _value_pure(f_join_fields),
    "message_type": _value_pure(f_message_type),
}
