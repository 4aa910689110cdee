"""HL7 v2 escape sequences (HL7 v2.5.1 Ch. 2.7 "Use of escape sequences in text fields";
v2.7 Ch. 2.7.1 adds ``\\P\\`` for the truncation character).

Values are stored raw by the parser and unescaped only when read, so a message whose
fields are never looked at costs nothing here. Unescaping is tolerant: an unknown or
unterminated sequence is kept literally (the sender's text is never dropped silently).

Supported on read:

==================  =======================================================
``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``    field / component / subcomponent / repetition / escape char
``\\P\\``              truncation character (v2.7+)
``\\Xhh…\\``           hexadecimal bytes, decoded with the message character set
``\\.br\\``            line break; ``\\.sp n\\`` n line breaks; ``\\.sk n\\`` n spaces
``\\.ce\\``            line break (centering is not representable in FHIR strings)
``\\.fi\\ \\.nf\\ \\.in n\\ \\.ti n\\``  formatting hints, dropped
``\\H\\ \\N\\``         highlighting on/off, dropped
``\\Cxxyy\\ \\Mxxyyzz\\`` character-set switches (ISO 2022), dropped
``\\Z…\\``             locally defined: kept literally
==================  =======================================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EncodingChars", "escape", "unescape"]


@dataclass(frozen=True, slots=True)
class EncodingChars:
    """The delimiters of one message: MSH-1 and MSH-2 (HL7 v2.5.1 Ch. 2.5.4, v2.7 Ch. 2.5.4 adds
    the fifth, truncation, character)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def msh2(self) -> str:
        """MSH-2 as it must be written back (4 characters, or 5 with the truncation character)."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_ENCODING = EncodingChars()


def _formatting(command: str) -> str | None:
    """Text for a formatted-text command (``.br``, ``.sp 2`` ...), or None if unknown."""
    name, _, arg = command.partition(" ")
    name = name.lower()
    if name == ".br" or name == ".ce":
        return "\n"
    if name in (".fi", ".nf", ".in", ".ti"):
        return ""
    count = 1
    if arg.strip():
        try:
            count = int(arg.strip().lstrip("+"))
        except ValueError:
            return None
    if name == ".sp":
        return "\n" * max(count, 1)
    if name == ".sk":
        return " " * max(count, 0)
    return None


def _hex(body: str, charset: str) -> str | None:
    try:
        data = bytes.fromhex(body)
    except ValueError:
        return None
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return data.decode("latin-1")


def unescape(value: str, enc: EncodingChars = DEFAULT_ENCODING, charset: str = "utf-8") -> str:
    """Replace the escape sequences in ``value`` (one field, component or subcomponent).

    ``charset`` is the Python codec of the message (from MSH-18), used for ``\\Xhh\\``.
    """
    esc = enc.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    pos = 0
    length = len(value)
    while pos < length:
        start = value.find(esc, pos)
        if start < 0:
            out.append(value[pos:])
            break
        out.append(value[pos:start])
        end = value.find(esc, start + 1)
        if end < 0:  # unterminated: keep the rest literally
            out.append(value[start:])
            break
        body = value[start + 1 : end]
        replacement: str | None
        if body == "F":
            replacement = enc.field
        elif body == "S":
            replacement = enc.component
        elif body == "T":
            replacement = enc.subcomponent
        elif body == "R":
            replacement = enc.repetition
        elif body == "E":
            replacement = esc
        elif body == "P":
            replacement = enc.truncation or None
        elif body in ("H", "N"):
            replacement = ""
        elif body.startswith("."):
            replacement = _formatting(body)
        elif body[:1] == "X" and len(body) > 1:
            replacement = _hex(body[1:], charset)
        elif body[:1] in ("C", "M") and len(body) > 1 and all(c in "0123456789ABCDEFabcdef" for c in body[1:]):
            replacement = ""
        else:
            replacement = None
        if replacement is None:
            # Unknown (or empty, "\\\\") sequence: keep the text as sent.
            out.append(value[start : end + 1])
        else:
            out.append(replacement)
        pos = end + 1
    return "".join(out)


def escape(value: str, enc: EncodingChars = DEFAULT_ENCODING) -> str:
    """Escape ``value`` so it can be written into one component (used for ACK texts).

    Line breaks become spaces: ACK texts (ERR-8, MSA-3) are plain TX/ST.
    """
    esc = enc.escape
    if esc:
        value = value.replace(esc, f"{esc}E{esc}")
        value = value.replace(enc.field, f"{esc}F{esc}")
        value = value.replace(enc.component, f"{esc}S{esc}")
        value = value.replace(enc.subcomponent, f"{esc}T{esc}")
        value = value.replace(enc.repetition, f"{esc}R{esc}")
        if enc.truncation:
            value = value.replace(enc.truncation, f"{esc}P{esc}")
    else:
        for ch in (enc.field, enc.component, enc.subcomponent, enc.repetition, enc.truncation):
            if ch:
                value = value.replace(ch, " ")
    return value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
