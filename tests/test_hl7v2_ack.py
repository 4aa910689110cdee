"""ACK construction (HL7 v2.5.1 Ch. 2.9 acknowledgment modes, 2.14.1 ACK, 2.15.5 ERR, 2.15.8 MSA)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.hl7v2 import AckCode, ack_for_error, build_ack, error_code, parse, should_send_ack
from adapters.hl7v2.ack import ack_code_for, parse_error_location
from hub.errors import MappingError, UnsupportedMessage, ValidationFailed

NOW = datetime(2025, 4, 3, 7, 15, 0, tzinfo=UTC)
INBOUND = (
    b"MSH|^~\\&|LAB|NORTH|HUB|HUBFAC|20250403071500+0000||ORU^R01^ORU_R01|C-1001|P|2.5.1|||AL|NE||UNICODE UTF-8\r"
    b"PID|1||123^^^HOSP^MR\r"
)


def segments(ack: bytes, codec: str = "utf-8") -> list[list[str]]:
    return [line.split("|") for line in ack.decode(codec).split("\r") if line]


def test_original_mode_accept() -> None:
    header = parse(INBOUND).header
    ack = build_ack(header, AckCode.AA, control_id="ACK-1", now=NOW)
    msh, msa = segments(ack)
    assert msh[0:6] == ["MSH", "^~\\&", "HUB", "HUBFAC", "LAB", "NORTH"]
    assert msh[6] == "20250403071500+0000"
    assert msh[8] == "ACK^R01^ACK"
    assert msh[9:12] == ["ACK-1", "P", "2.5.1"]
    assert msh[17] == "UNICODE UTF-8"
    assert msa == ["MSA", "AA", "C-1001"]


def test_application_error_with_err_segment_v25() -> None:
    header = parse(INBOUND).header
    error = MappingError("required element OBX-3 is empty", location="OBX[2]-3", code="required")
    ack = ack_for_error(INBOUND, error, header=header, control_id="ACK-2", now=NOW)
    _msh, msa, err = segments(ack)
    assert msa == ["MSA", "AE", "C-1001"]
    assert err[2] == "OBX^2^3^1"
    assert err[3] == "101^Required field missing^HL70357"
    assert err[4] == "E"
    assert err[8] == "required element OBX-3 is empty"


def test_unsupported_message_is_rejected() -> None:
    raw = INBOUND.replace(b"ORU^R01^ORU_R01", b"ZZZ^Z99")
    ack = ack_for_error(raw, UnsupportedMessage("no mapping for ZZZ^Z99", location="MSH-9"), now=NOW)
    _msh, msa, err = segments(ack)
    assert msa[1] == "AR"
    assert err[2] == "MSH^1^9^1"
    assert err[3].startswith("200^")


def test_unparseable_message_gets_reject_with_defaults() -> None:
    ack = ack_for_error(
        b"this is not HL7",
        MappingError("message does not start with an MSH segment", location="MSH", code="segment_sequence"),
        now=NOW,
    )
    msh, msa, err = segments(ack)
    assert msh[1] == "^~\\&" and msh[11] == "2.5.1"
    assert msa == ["MSA", "AR", ""]
    assert err[3].startswith("100^")


def test_validation_failure_is_application_error_207() -> None:
    error = ValidationFailed("Observation.status: Field required", resource_type="Observation", path="status")
    assert error_code(error) == "207"
    assert ack_code_for(error, header=parse(INBOUND).header) is AckCode.AE


def test_pre_25_receivers_get_msa3_and_err1() -> None:
    raw = INBOUND.replace(b"2.5.1", b"2.3")
    error = MappingError("PID-3 is empty", location="PID-3", code="required")
    ack = ack_for_error(raw, error, now=NOW)
    _msh, msa, err = segments(ack)
    assert msa[:4] == ["MSA", "AE", "C-1001", "PID-3 is empty"]
    assert msa[6] == "101^^HL70357"
    assert err[1] == "PID^1^3^101&Required field missing&HL70357"


def test_enhanced_mode_accept_level_codes() -> None:
    header = parse(INBOUND).header
    assert ack_code_for(None, accept_level=True) is AckCode.CA
    assert ack_code_for(MappingError("x", location="PID-3"), header=header, accept_level=True) is AckCode.CE
    assert ack_code_for(UnsupportedMessage("x"), header=header, accept_level=True) is AckCode.CR


@pytest.mark.parametrize(
    ("ack_type", "success", "expected"),
    [
        ("AL", True, True),
        ("AL", False, True),
        ("NE", True, False),
        ("NE", False, False),
        ("SU", True, True),
        ("SU", False, False),
        ("ER", True, False),
        ("ER", False, True),
        ("", True, True),
        (None, False, True),
        ("XX", True, True),
    ],
)
def test_should_send_ack(ack_type: str | None, success: bool, expected: bool) -> None:
    assert should_send_ack(ack_type, success=success) is expected


def test_ack_uses_inbound_encoding_characters_and_escapes_text() -> None:
    raw = b"MSH|^~\\&#|LAB|NORTH|HUB|HUBFAC|20250403||ADT^A01|C-7|P|2.7\rPID|1\r"
    error = MappingError("bad value in PID-3 (see A|B^C)", location="PID-3", code="data_type")
    ack = ack_for_error(raw, error, now=NOW)
    text = ack.decode()
    assert text.startswith("MSH|^~\\&#|")
    assert "A\\F\\B\\S\\C" in text


def test_ack_in_inbound_charset() -> None:
    raw = "MSH|^~\\&|LAB|FÄC|HUB|HUB|20250403||ADT^A01|C-8|P|2.5||||||8859/1\rPID|1\r".encode("latin-1")
    header = parse(raw).header
    ack = build_ack(header, AckCode.AA, now=NOW)
    assert "FÄC".encode("latin-1") in ack
    assert segments(ack, "latin-1")[0][17] == "8859/1"


def test_error_location_parsing() -> None:
    assert parse_error_location("OBX[3]-5[2].1.2") == ("OBX", 3, 5, 2, 1, 2)
    assert parse_error_location("PATIENT_RESULT[1]/PID-3") == ("PID", 1, 3, 1, 0, 0)
    assert parse_error_location("MSH") == ("MSH", 1, 0, 0, 0, 0)
    assert parse_error_location("valueQuantity.value") is None
    assert parse_error_location("performer[0].actor") is None  # a FHIR path (ValidationFailed)
    assert parse_error_location(None) is None


def test_error_location_of_an_empty_rule_source_keeps_the_occurrence() -> None:
    # A required rule whose source is empty reports "<node> <source>" (hub.mapping.runtime.location).
    assert parse_error_location("OBX[2] OBX-14") == ("OBX", 2, 14, 1, 0, 0)
    assert parse_error_location("PID PID-3") == ("PID", 1, 3, 1, 0, 0)
    assert parse_error_location("OBX[3] 5") == ("OBX", 3, 5, 1, 0, 0)  # relative: field of the segment
    assert parse_error_location("OBX[2]-5 1") == ("OBX", 2, 5, 1, 1, 0)  # component of the field
    assert parse_error_location("OBX[2]-5.1 2") == ("OBX", 2, 5, 1, 1, 2)
    assert parse_error_location("ORDER_OBSERVATION[1] OBR-7") == ("OBR", 1, 7, 1, 0, 0)


def test_ack_control_ids_are_unique_by_default() -> None:
    header = parse(INBOUND).header
    first = segments(build_ack(header, "AA"))[0][9]
    second = segments(build_ack(header, "AA"))[0][9]
    assert first != second and len(first) <= 20
