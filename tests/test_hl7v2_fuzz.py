"""Property-based fuzzing of parser + translator + ACK: every input ends in a Translation or a
MappingError (and so in AA, AE or AR) - never in another exception."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2 import Hl7v2Translator, ack_for_error, build_ack, parse, peek_header, split_batch
from hub.errors import MappingError
from hub.fhir.validation import validate_resource

DATA = Path(__file__).parent / "data" / "hl7v2"
SEEDS = [p.read_bytes() for p in sorted(DATA.glob("*.hl7")) if not p.name.startswith("batch")]
SEGMENTS = [
    "PID",
    "PV1",
    "PV2",
    "OBR",
    "ORC",
    "OBX",
    "NTE",
    "NK1",
    "AL1",
    "DG1",
    "EVN",
    "MRG",
    "RXA",
    "RXR",
    "SPM",
    "TQ1",
    "TXA",
    "SCH",
    "AIS",
    "AIL",
    "AIP",
    "ZPI",
    "PD1",
    "MSH",
    "IN1",
]
TEXT = st.text(alphabet=st.sampled_from(list('|^~\\&#"AZaz09.-+/ :\r\nÄé\x00')), max_size=40)
#: MEORING_FUZZ_EXAMPLES=5000 for a deep run; the default keeps the suite fast.
FUZZ = settings(
    max_examples=int(os.environ.get("MEORING_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@cache
def translator() -> Hl7v2Translator:
    return Hl7v2Translator()


def outcome(raw: bytes) -> str:
    """Translate ``raw`` and build the ACK it would get; return the MSA-1 code."""
    try:
        translation, _ = translator().translate_raw(raw)
    except MappingError as exc:
        ack = parse(ack_for_error(raw, exc, control_id="ACK1"))  # the ACK itself must parse
        code = ack.get("MSA-1")
        assert code in ("AE", "AR")
        assert ack.segment("ERR") is not None
        return code
    for entry in translation.bundle["entry"]:
        validate_resource(entry["resource"])
    header = peek_header(raw)
    assert header is not None
    ack = parse(build_ack(header, "AA", control_id="ACK1"))
    assert ack.get("MSA-1") == "AA" and ack.get("MSA-2") == header.control_id
    return "AA"


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    assert outcome(raw) in ("AA", "AE", "AR")
    split_batch(raw)


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_real_messages(seed: bytes, data: st.DataObject) -> None:
    text = seed.decode("utf-8", errors="replace")
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["insert", "delete", "replace_field", "drop_segment", "dup_segment"]))
        lines = text.replace("\n", "\r").split("\r")
        if kind == "insert":
            pos = data.draw(st.integers(0, len(text)))
            text = text[:pos] + data.draw(TEXT) + text[pos:]
        elif kind == "delete" and text:
            pos = data.draw(st.integers(0, len(text) - 1))
            text = text[:pos] + text[pos + data.draw(st.integers(1, 5)) :]
        elif kind == "replace_field":
            index = data.draw(st.integers(0, len(lines) - 1))
            fields = lines[index].split("|")
            f = data.draw(st.integers(0, max(len(fields) - 1, 0)))
            fields[f] = data.draw(TEXT)
            lines[index] = "|".join(fields)
            text = "\r".join(lines)
        elif kind == "drop_segment" and len(lines) > 1:
            del lines[data.draw(st.integers(1, len(lines) - 1))]
            text = "\r".join(lines)
        elif kind == "dup_segment":
            index = data.draw(st.integers(0, len(lines) - 1))
            lines.insert(index, lines[index])
            text = "\r".join(lines)
    assert outcome(text.encode("utf-8", errors="replace")) in ("AA", "AE", "AR")


@FUZZ
@given(
    st.sampled_from(
        ["ADT^A01", "ADT^A08", "ORU^R01", "ORM^O01", "VXU^V04", "SIU^S12", "MDM^T02", "ADT^A40", "OML^O21"]
    ),
    st.sampled_from(["2.3", "2.5.1", "2.8"]),
    st.lists(st.tuples(st.sampled_from(SEGMENTS), st.lists(TEXT, max_size=30)), max_size=12),
)
def test_generated_structures(msh9: str, version: str, segments: list[tuple[str, list[str]]]) -> None:
    lines = [f"MSH|^~\\&|APP|FAC|HUB|HUB|20250101120000+0000||{msh9}|FUZZ-1|P|{version}"]
    lines += ["|".join([name, *fields]) for name, fields in segments]
    raw = "\r".join(lines).encode("utf-8")
    assert outcome(raw) in ("AA", "AE", "AR")


@FUZZ
@given(st.text(max_size=200))
def test_parser_on_arbitrary_text(text: str) -> None:
    try:
        message = parse("MSH|^~\\&|A|B|C|D|2025||ADT^A01|X|P|2.5\r" + text)
    except MappingError:
        return
    for seg in message:
        for n in range(len(seg.fields)):
            seg.value(n, 1, 1, 1)
            seg.presence(n)
            seg.text(n)
