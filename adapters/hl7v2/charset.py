"""Character sets of HL7 v2 messages: MSH-18 (HL7 table 0211, v2.5.1 Ch. 2.15.9.18) to Python codecs.

The bytes of a message are decoded before parsing, so MSH-18 is read from the raw header
first (it is ASCII in every character set table 0211 allows, except UTF-16/32, which are
recognised by their byte-order mark). When MSH-18 is empty the standard says ASCII; in
practice such feeds send UTF-8 or Windows-1252, so decoding falls back in that order and
records a deviation instead of failing.
"""

from __future__ import annotations

import codecs

__all__ = ["CHARSETS", "codec_for", "decode_message"]

#: Table 0211 values (plus spellings seen in the field) → Python codec.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "US-ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISO IR100": "latin-1",
    "ISO IR14": "shift_jis",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "ISO-8859-1": "latin-1",
    "LATIN1": "latin-1",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}


def codec_for(msh18: str) -> str | None:
    """The Python codec for an MSH-18 value, or None when the value is unknown."""
    key = " ".join(msh18.strip().upper().split())
    if not key:
        return None
    found = CHARSETS.get(key)
    if found is not None:
        return found
    if len(key) > 40 or not all(c.isalnum() or c in "-_./ " for c in key):
        return None
    try:
        return codecs.lookup(key).name
    except (LookupError, ValueError):
        return None


def _header_charset(raw: bytes) -> str:
    """MSH-18 (first repetition) read from the raw bytes of the first segment."""
    start = raw.find(b"MSH")
    if start < 0 or len(raw) < start + 8:
        return ""
    end = len(raw)
    for terminator in (b"\r", b"\n"):
        pos = raw.find(terminator, start)
        if 0 <= pos < end:
            end = pos
    line = raw[start:end].decode("latin-1")
    if len(line) < 8:
        return ""
    sep = line[3]
    fields = line.split(sep)
    # fields[0] = "MSH", fields[1] = MSH-2, so MSH-n is fields[n - 1]
    if len(fields) < 18:
        return ""
    value = fields[17]
    rep = line[5] if len(line) > 5 else "~"
    comp = line[4] if len(line) > 4 else "^"
    return value.split(rep)[0].split(comp)[0]


def decode_message(raw: bytes) -> tuple[str, str, list[str]]:
    """Decode ``raw`` to text: returns (text, codec used, deviations).

    Handles UTF-8/16/32 byte-order marks, MSH-18, and a declared charset that does not
    match the bytes (falls back to UTF-8, then Windows-1252, then Latin-1, which never fails).
    """
    deviations: list[str] = []
    raw = raw.lstrip(b"\x0b\x1c\x00")  # MLLP framing left in a file
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
        deviations.append("byte-order mark before MSH removed")
    elif raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return raw.decode("utf-32"), "utf-32", deviations
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16"), "utf-16", deviations
    declared = _header_charset(raw)
    codec = codec_for(declared) if declared else None
    if declared and codec is None:
        deviations.append("MSH-18 names an unknown character set; decoded as UTF-8")
    candidates: list[str] = [codec] if codec else []
    candidates += [c for c in ("utf-8", "cp1252") if c not in candidates]
    for index, candidate in enumerate(candidates):
        try:
            text = raw.decode(candidate)
        except (UnicodeDecodeError, LookupError):
            continue
        if index > 0 and codec:
            deviations.append(f"bytes do not match MSH-18 character set; decoded as {candidate}")
        return text, candidate, deviations
    deviations.append("bytes are neither UTF-8 nor Windows-1252; decoded as Latin-1")
    return raw.decode("latin-1"), "latin-1", deviations
