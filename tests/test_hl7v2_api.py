"""The public surface of the HL7 v2 adapter and the mapping engine is pinned (style guide §2.10)."""

from __future__ import annotations

import adapters.hl7v2
import hub.mapping


def test_hl7v2_exports() -> None:
    assert sorted(adapters.hl7v2.__all__) == sorted(
        [
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
    )
    for name in adapters.hl7v2.__all__:
        assert getattr(adapters.hl7v2, name) is not None


def test_mapping_exports() -> None:
    assert sorted(hub.mapping.__all__) == sorted(
        [
            "Built",
            "Choice",
            "Coding",
            "ConceptMapStore",
            "Dialect",
            "EngineResult",
            "Function",
            "FunctionContext",
            "Lookup",
            "MapDef",
            "MappingEngine",
            "MappingRepository",
            "MessageMap",
            "Problem",
            "SourceNode",
            "TraceEntry",
            "make_id",
            "provenance",
            "transaction",
            "validate_mappings",
        ]
    )


def test_mapping_engine_does_not_import_adapters() -> None:
    import pathlib

    for path in pathlib.Path(hub.mapping.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "import adapters" not in text and "from adapters" not in text, path.name
