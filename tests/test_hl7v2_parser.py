"""Parser robustness (HL7 v2.5.1 Ch. 2.5-2.7; hl7v2-fhir.md §8 "Things our parser must survive")."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.hl7v2 import Presence, parse, peek_header, split_batch, unescape
from adapters.hl7v2.escape import EncodingChars, escape
from adapters.hl7v2.parser import parse_location
from adapters.hl7v2.structure import group, resolve_structure
from hub.errors import MappingError

DATA = Path(__file__).parent / "data" / "hl7v2"

MSH = "MSH|^~\\&|APP|FAC|HUB|HUB|20250101120000+0100||ADT^A01^ADT_A01|CTRL1|P|2.5.1"
PID = "PID|1||123^^^HOSP^MR~456^^^SSA^SS||Doe^Jane^Q||19700101|F"


def msg(*lines: str, sep: str = "\r") -> bytes:
    return sep.join(lines).encode()


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_terminators(sep: str) -> None:
    message = parse(msg(MSH, PID, "PV1|1|I", sep=sep))
    assert [s.name for s in message] == ["MSH", "PID", "PV1"]
    assert message.get("PID-5.2") == "Jane"


def test_mixed_terminators_and_no_final_terminator() -> None:
    message = parse((MSH + "\r" + PID + "\nPV1|1|I\r\nOBX|1|ST|x||y").encode())
    assert [s.name for s in message] == ["MSH", "PID", "PV1", "OBX"]
    assert message.get("OBX-5") == "y"
    assert "mixed CR and LF segment terminators" in message.deviations


def test_utf8_bom_and_mllp_framing_are_removed() -> None:
    message = parse(b"\x0b\xef\xbb\xbf" + msg(MSH, PID) + b"\x1c\r")
    assert message.header.control_id == "CTRL1"
    assert "byte-order mark before MSH removed" in message.deviations


def test_header_facts() -> None:
    raw = msg(
        "MSH|^~\\&|LAB^1.2.3^ISO|NORTH|HUB|HUBFAC|20250101120000+0100||ORU^R01^ORU_R01|C77|T|2.5.1"
        "|||AL|ER||UNICODE UTF-8",
        PID,
    )
    header = parse(raw).header
    assert header.sending_application == "LAB^1.2.3^ISO"
    assert header.sending_facility == "NORTH"
    assert (header.message_type, header.trigger_event, header.message_structure) == ("ORU", "R01", "ORU_R01")
    assert (header.control_id, header.processing_id, header.version) == ("C77", "T", "2.5.1")
    assert (header.accept_ack_type, header.application_ack_type) == ("AL", "ER")
    assert header.charset == "UNICODE UTF-8"
    assert header.enhanced_mode
    assert header.sender == "NORTH"


def test_five_encoding_characters() -> None:
    message = parse(msg("MSH|^~\\&#|APP|FAC|HUB|HUB|20250101||ORU^R01|C1|P|2.5.1", "OBX|1|ST|x||a\\P\\b#c"))
    assert message.encoding.truncation == "#"
    assert message.encoding.msh2 == "^~\\&#"
    assert message.get("OBX-5") == "a#b#c"


def test_duplicate_encoding_characters_are_tolerated() -> None:
    message = parse(msg("MSH|^~\\\\&|APP|FAC|HUB|HUB|20250101||ADT^A01|C1|P|2.3", "PID|1||1^^^A&B&C"))
    assert message.encoding.subcomponent == "&"
    assert message.get("PID-3.4.2") == "B"
    assert any("repeats an encoding character" in d for d in message.deviations)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b\\T\\c\\R\\d\\E\\e", "a^b&c~d\\e"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("x\\.sp 2\\y", "x\n\ny"),
        ("x\\.sk 3\\y", "x   y"),
        ("\\H\\bold\\N\\", "bold"),
        ("\\X48656C6C6F\\", "Hello"),
        ("\\XC3BC\\", "ü"),
        ("\\Zlocal\\", "\\Zlocal\\"),
        ("unterminated \\F", "unterminated \\F"),
        ("\\.in +4\\x\\.fi\\", "x"),
        ("\\C2842\\text", "text"),
    ],
)
def test_escape_sequences(raw: str, expected: str) -> None:
    assert unescape(raw) == expected


def test_escape_round_trip() -> None:
    enc = EncodingChars(truncation="#")
    text = "a|b^c&d~e\\f#g"
    assert unescape(escape(text, enc), enc) == text


def test_escapes_are_read_lazily_per_value() -> None:
    message = parse(msg(MSH, "OBX|1|FT|c||A\\S\\B^second"))
    seg = message.segment("OBX")
    assert seg is not None
    assert seg.raw(5) == "A\\S\\B^second"  # stored raw
    assert message.get("OBX-5") == "A^B"  # first component, unescaped on read
    assert message.get("OBX-5.2") == "second"
    assert seg.text(5) == "A^B^second"


def test_repetitions_components_subcomponents() -> None:
    message = parse(msg(MSH, PID))
    assert message.get("PID-3") == "123"
    assert message.get("PID-3[2].1") == "456"
    assert message.get("PID-3[2].4") == "SSA"
    assert message.get("PID-3[3].1") is None
    assert message.get("PID-5.3") == "Q"
    seg = message.segment("PID")
    assert seg is not None and seg.repetitions(3) == ["123^^^HOSP^MR", "456^^^SSA^SS"]


def test_empty_versus_explicit_null() -> None:
    message = parse(msg(MSH, 'PID|1||123||""||19700101|||||^^^^|""'))
    assert message.presence("PID-4") is Presence.ABSENT
    assert message.presence("PID-5") is Presence.NULL
    assert message.get("PID-5") is None
    assert message.presence("PID-7") is Presence.VALUED
    assert message.presence("PID-12") is Presence.ABSENT  # only separators
    assert message.presence("PID-13") is Presence.NULL
    assert message.presence("PID-40") is Presence.ABSENT


def test_z_segments_and_unknown_segments_are_kept() -> None:
    message = parse(msg(MSH, PID, "ZPI|1|custom", "SPM|1|SP1"))
    assert [s.name for s in message] == ["MSH", "PID", "ZPI", "SPM"]
    assert message.get("ZPI-2") == "custom"


def test_unescaped_line_break_is_joined_to_previous_segment() -> None:
    message = parse((MSH + "\rOBX|1|TX|c||first\nsecond half||||||F\r").encode())
    assert [s.name for s in message] == ["MSH", "OBX"]
    assert message.get("OBX-5") == "first\nsecond half"
    assert message.get("OBX-11") == "F"


@pytest.mark.parametrize("version", ["2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"])
def test_all_versions_parse(version: str) -> None:
    header = parse(msg(MSH.replace("2.5.1", version), PID)).header
    assert header.version == version


def test_v21_event_from_evn() -> None:
    message = parse(msg("MSH|^~\\&|A|B|C|D|198801010000||ADT|C1|P|2.1", "EVN|A01|198801010000", PID))
    assert message.header.message_type == "ADT"
    assert message.header.trigger_event == "A01"
    assert resolve_structure(message.header) == "ADT_A01"


@pytest.mark.parametrize(
    ("file", "charset", "needle"),
    [
        ("oru_r01_latin1.hl7", "latin-1", "Gonçalves"),
        ("adt_a01_v28_bom_crlf.hl7", "utf-8", "Müller-Lüdenscheidt"),
    ],
)
def test_charsets(file: str, charset: str, needle: str) -> None:
    message = parse((DATA / file).read_bytes())
    assert message.codec == charset
    assert message.get("PID-5") == needle


def test_declared_charset_not_matching_bytes_falls_back() -> None:
    raw = (MSH + "||||||ASCII\r" + "PID|1||1||Zoë").encode("utf-8")
    message = parse(raw)
    assert message.get("PID-5") == "Zoë"
    assert any("decoded as utf-8" in d for d in message.deviations)


def test_hex_escape_uses_message_charset() -> None:
    raw = (MSH + "||||||8859/1\r" + "OBX|1|ST|c||\\XE9\\").encode("latin-1")
    message = parse(raw)
    assert message.codec == "latin-1"
    assert message.get("OBX-5") == "é"


@pytest.mark.parametrize(
    ("raw", "location"),
    [
        (b"", "MSH"),
        (b"PID|1||123", "MSH"),
        (b"MSH|^~\\&|A|B|C|D|2025||", "MSH-9"),
        (b"MSH|^~\\&|A|B|C|D|2025||ADT^A01|", "MSH-10"),
        (b"MSHX^~\\&|A", "MSH-1"),
    ],
)
def test_unparseable_messages_raise_mapping_error_with_location(raw: bytes, location: str) -> None:
    with pytest.raises(MappingError) as info:
        parse(raw)
    assert info.value.location == location


def test_error_messages_carry_no_values() -> None:
    with pytest.raises(MappingError) as info:
        parse(b"MSH|^~\\&|SECRETAPP|SECRETFAC|C|D|2025||")
    assert "SECRET" not in str(info.value)


def test_peek_header_of_broken_message() -> None:
    header = peek_header(b"MSH|^~\\&|A|B|C|D|2025||ADT^A01||P|2.4")
    assert header is not None
    assert header.control_id == ""
    assert header.version == "2.4"
    assert peek_header(b"garbage") is None


def test_location_parser() -> None:
    loc = parse_location("OBX[3]-5[2].1.2")
    assert (loc.segment, loc.occurrence, loc.field, loc.rep, loc.comp, loc.sub) == ("OBX", 3, 5, 2, 1, 2)
    assert str(loc) == "OBX[3]-5[2].1.2"
    with pytest.raises(ValueError, match="not an HL7 location"):
        parse_location("pid-3")


def test_segment_occurrences() -> None:
    message = parse(msg(MSH, "OBX|1|ST|a||x", "OBX|2|ST|b||y"))
    second = message.segment("OBX", 2)
    assert second is not None and second.label == "OBX[2]"
    assert message.get("OBX[2]-5") == "y"
    assert len(message.all("OBX")) == 2


def test_oru_grouping() -> None:
    message = parse((DATA / "oru_r01_multi_order.hl7").read_bytes())
    tree = group(message.segments, resolve_structure(message.header))
    (result,) = tree.groups("PATIENT_RESULT")
    orders = result.groups("ORDER_OBSERVATION")
    assert len(orders) == 2
    assert [s.name for s in orders[0].segments()] == ["ORC", "OBR"]
    assert len(orders[0].groups("OBSERVATION")) == 5
    # the NTE after an OBX belongs to that OBX's OBSERVATION group
    last_obs = orders[1].groups("OBSERVATION")[0]
    assert [s.name for s in last_obs.segments()] == ["OBX", "NTE"]


def test_grouping_keeps_unexpected_segments() -> None:
    message = parse((DATA / "oru_r01_v23_lf.hl7").read_bytes())
    tree = group(message.segments, "ORU_R01")
    assert sorted(s.name for s in tree.walk()) == sorted(s.name for s in message.segments)


def test_unknown_structure_is_flat() -> None:
    message = parse(msg(MSH.replace("ADT^A01^ADT_A01", "ZDT^Z01"), PID))
    tree = group(message.segments, resolve_structure(message.header))
    assert tree.name == "ZDT_Z01"
    assert [s.name for s in tree.segments()] == ["MSH", "PID"]


@pytest.mark.parametrize(
    ("msh9", "structure"),
    [
        ("ADT^A04", "ADT_A01"),
        ("ADT^A08^ADT_A01", "ADT_A01"),
        ("ADT^A40", "ADT_A39"),
        ("ADT^A04^9.3-DEF", "ADT_A01"),
        ("SIU^S15", "SIU_S12"),
        ("MDM^T02", "MDM_T02"),
    ],
)
def test_structure_resolution(msh9: str, structure: str) -> None:
    header = parse(msg(MSH.replace("ADT^A01^ADT_A01", msh9), PID)).header
    assert resolve_structure(header, frozenset({"ADT_A01", "ADT_A39", "SIU_S12", "MDM_T02"})) == structure


def test_split_batch() -> None:
    messages = split_batch((DATA / "batch_fhs_3.hl7").read_bytes())
    assert len(messages) == 3
    assert [parse(m).header.control_id for m in messages] == ["LAB-CBC-0001", "SR-A08-0002", "LAB-PDF-0001"]
    assert split_batch(msg(MSH, PID, sep="\n")) == [msg(MSH, PID) + b"\r"]
    assert split_batch(b"FHS|^~\\&\rBHS|^~\\&\rBTS|0\rFTS|1\r") == []
