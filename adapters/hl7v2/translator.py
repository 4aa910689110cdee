"""The HL7 v2 translator: ER7 bytes → FHIR R4 transaction Bundle (the pipeline's Translator).

Steps, each failing the whole message (never a partial result): parse (:mod:`.parser`),
resolve the message structure and its mapping (:mod:`.structure`; no mapping →
:class:`~hub.errors.UnsupportedMessage`), group the segments, run the mapping engine
(:mod:`hub.mapping`), add one Provenance, validate every resource as R4
(:func:`hub.fhir.validation.validate_resource` → :class:`~hub.errors.ValidationFailed`), and
return the Bundle with the warnings (parser deviations, unmapped codes...) and the coverage
(valued fields no rule read).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from hub.errors import ConfigError, MappingError, UnsupportedMessage, ValidationFailed
from hub.fhir.validation import validate_resource
from hub.mapping import MappingEngine, MappingRepository, TraceEntry, make_id, provenance, transaction
from hub.mapping.fastvalidate import ShapeValidator
from hub.mapping.model import IF_ABSENT
from hub.mapping.runtime import safe_code
from hub.pipeline.translator import InboundMessage, Translation

from .ack import parse_error_location
from .functions import FUNCTIONS, Hl7Settings, convert_dtm
from .parser import Message, parse
from .source import Hl7Dialect, Hl7Document
from .structure import group, resolve_structure

__all__ = ["CHANNEL", "Hl7v2Translator", "default_translator", "format_explain", "translate_bytes"]

CHANNEL = "hl7v2"
SENDER_SYSTEM = "urn:meoring:hl7v2:sending-facility"
_V2_0003 = "http://terminology.hl7.org/CodeSystem/v2-0003"
_CODE = re.compile(r"^[A-Z0-9]{1,4}(\^[A-Z0-9]{1,4})?$")
_MSH_USED = (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 15, 16, 18)
#: Segments whose field 1 is a Set ID (a sequence number, not data): never reported as unconsumed.
_SET_ID_SEGMENTS = frozenset(
    "PID PV1 NK1 OBX OBR NTE AL1 DG1 PR1 IN1 GT1 SPM TQ1 AIS AIG AIL AIP RGS ROL PRT TXA FT1 CTI".split()
)
#: Fields that are counters or markers, not data, by segment (never reported as unconsumed): the
#: Set IDs above; RXA-1/RXA-2, the give and administration sub-id counters; RGS-1/RGS-2, the set id
#: and segment action code of an SIU resource group (the IG maps nothing of RGS: it only groups the
#: AIS/AIG/AIL/AIP that follow it; SIU_S12.yaml drops the resources of a group whose RGS-2 is D).
_NOT_DATA: dict[str, tuple[int, ...]] = {
    **{name: (1,) for name in _SET_ID_SEGMENTS},
    "RXA": (1, 2),
    "RGS": (1, 2),
}
#: Segments that only group others: read as a whole even when no rule names them.
_GROUPING_SEGMENTS = frozenset({"RGS"})
_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
#: ConceptMap for EVN-4 (table 0062 Event Reason → Provenance.reason, IG vocabulary map EventReason)
_EVENT_REASON_MAP = "table-hl70062-to-event-reason"


class Hl7v2Translator:
    """Implements :class:`hub.pipeline.translator.Translator` for channel ``hl7v2``.

    ``mappings_dir`` is a mapping root (``hl7v2/``, ``conceptmaps/``, ``schema/``; default: the
    shipped ``mappings`` package), ``site_dir`` an optional override layer with the same layout.
    ``default_timezone`` (IANA name) gives local HL7 times their UTC offset when neither the value
    nor MSH-7 carries one. ``validation``: ``"shape"`` (default) validates every resource with
    :class:`hub.mapping.fastvalidate.ShapeValidator` - the verdict and errors of
    ``validate_resource``, with the structural work done once per element layout and each
    primitive checked by the model's own validator; ``"full"`` calls ``validate_resource`` on
    every resource. Bad mapping files raise :class:`~hub.errors.ConfigError` naming file and
    line. Thread-safe after construction (maps are compiled on first use; compiled plans,
    memoised map outputs and learned layouts are shared by all threads and only ever added to
    or replaced whole).
    """

    channel = CHANNEL

    def __init__(
        self,
        mappings_dir: Path | str | None = None,
        site_dir: Path | str | None = None,
        *,
        default_timezone: str | None = None,
        validation: str = "shape",
    ) -> None:
        if validation not in ("shape", "full"):
            raise ConfigError("validation must be 'shape' or 'full'", key="validation")
        self.validation = validation
        self._shapes = ShapeValidator() if validation == "shape" else None
        if mappings_dir is None:
            import mappings

            mappings_dir = mappings.directory()
        self.settings = Hl7Settings(default_timezone)
        self.dialect = Hl7Dialect(FUNCTIONS)
        self.repository = MappingRepository.load(
            Path(mappings_dir),
            channel=CHANNEL,
            dialect=self.dialect,
            site_dir=Path(site_dir) if site_dir is not None else None,
        )
        if self.repository.problems:
            shown = "; ".join(str(p) for p in self.repository.problems[:5])
            more = len(self.repository.problems) - 5
            raise ConfigError(
                f"mapping files have problems: {shown}" + (f" (and {more} more)" if more > 0 else ""),
                key="mappings",
            )
        self.engine = MappingEngine(self.repository.concepts)
        self._structures = self.repository.structures

    # -- the Translator protocol --------------------------------------------------------------
    def translate(self, message: InboundMessage) -> Translation:
        translation, _ = self.translate_raw(message.payload, inbox_id=message.inbox_id, received_at=message.received_at)
        return translation

    def explain_lines(self, message: InboundMessage) -> list[str]:
        """``meoring translate --explain``: for each FHIR element, the rule and source field behind it."""
        _, trace = self.translate_raw(message.payload, explain=True)
        return format_explain(trace or [])

    # -- entry points for the CLI and tests -----------------------------------------------------
    def translate_raw(
        self,
        raw: bytes | str,
        *,
        inbox_id: int | None = None,
        received_at: datetime | None = None,
        explain: bool = False,
    ) -> tuple[Translation, list[TraceEntry] | None]:
        """Translate one ER7 message; returns the Translation and, with ``explain``, the trace."""
        return self.translate_message(parse(raw), inbox_id=inbox_id, received_at=received_at, explain=explain)

    def translate_message(
        self,
        message: Message,
        *,
        inbox_id: int | None = None,
        received_at: datetime | None = None,
        explain: bool = False,
    ) -> tuple[Translation, list[TraceEntry] | None]:
        header = message.header
        if header.version and not header.version.startswith("2"):
            raise MappingError(
                "MSH-12 names a version this adapter does not read (HL7 v2.x only)",
                location="MSH-12",
                code="unsupported_version",
            )
        structure = resolve_structure(header, self._structures)
        message_map = self.repository.message_for(structure, header.trigger_event)
        if message_map is None:
            kind = f"{header.message_type}^{header.trigger_event}" if header.trigger_event else header.message_type
            raise UnsupportedMessage(f"no mapping for message type {kind} (structure {structure})", location="MSH-9")
        doc = Hl7Document(message, group(message.segments, structure), self.settings)
        try:
            doc.consume(message.msh, *_MSH_USED)
            ignored = doc.ignored
            for seg in message.segments:
                fields = _NOT_DATA.get(seg.name)
                if fields is not None:
                    for number in fields:
                        ignored.add((seg.position, number))
                    if seg.name in _GROUPING_SEGMENTS:
                        doc.touched.add(seg.position)
            result = self.engine.run(
                message_map,
                doc.root,
                namespace=header.sender,
                message_key=header.control_id,
                explain=explain,
            )
            resources = [built.body for built in result.resources]
            warnings = [*message.deviations, *result.warnings]
            resources.append(
                self._provenance(doc, [b.reference for b in result.resources], inbox_id, received_at, warnings)
            )
            try:
                if self._shapes is not None:
                    self._shapes.validate_all(resources)
                else:
                    for resource in resources:
                        validate_resource(resource)
            except ValidationFailed as exc:
                raise self._located(exc, message_map, doc) from None
            if_absent = {b.reference for b in result.resources if b.write == IF_ABSENT}
            translation = Translation(
                bundle=transaction(resources, if_absent),
                unconsumed=doc.unconsumed(),
                warnings=warnings,
            )
        finally:
            doc.release()
        return translation, result.trace

    def _located(self, exc: ValidationFailed, message_map: Any, doc: Hl7Document) -> ValidationFailed:
        """The error with ``location`` the HL7 field whose rule wrote the invalid element (what
        ERR-2 of an AE names), found in the explain trace of the same message - run again only on
        this failure path; unchanged when no rule wrote there (an element that is missing)."""
        path, kind = exc.path, exc.resource_type
        if not path or not kind:
            return exc
        header = doc.message.header
        try:
            trace = self.engine.run(
                message_map, doc.root, namespace=header.sender, message_key=header.control_id, explain=True
            ).trace
        except MappingError:
            return exc
        for entry in trace or []:
            element = entry.element
            if entry.resource.partition("/")[0] == kind and (
                element == path or element.startswith((path + ".", path + "["))
            ):
                where = parse_error_location(entry.source)  # as ERR-2 will read it
                if where is None or not where[2]:
                    continue  # a constant or a reference: no field to name
                located = ValidationFailed(str(exc), resource_type=kind, path=path)
                located.location = entry.source
                return located
        return exc

    def _provenance(
        self,
        doc: Hl7Document,
        targets: Sequence[str],
        inbox_id: int | None,
        received_at: datetime | None,
        warnings: list[str] | None = None,
    ) -> dict[str, Any]:
        """The message's one Provenance (IG MSH[Provenance-Source] and EVN[Provenance] in one):
        EVN-2 recorded, EVN-4 reason, EVN-5 operators as agents (type enterer), EVN-6 occurred."""
        message = doc.message
        header = message.header
        msh_offset = _offset(header.timestamp)
        recorded = None
        evn = message.segment("EVN")
        occurred = None
        agents: list[dict[str, Any]] = []
        reasons: list[dict[str, Any]] = []
        if evn is not None:
            doc.touched.add(evn.position)
            doc.consume(evn, 1, 2, 4, 5, 6)
            if evn.value(2):
                recorded, _ = convert_dtm(evn.value(2) or "", want="instant", default_offset=msh_offset)
            if evn.value(6):
                occurred, _ = convert_dtm(evn.value(6) or "", default_offset=msh_offset)
            reasons = self._event_reason(evn, warnings)
            agents = _operators(evn)
        if recorded is None and header.timestamp:
            recorded, _ = convert_dtm(header.timestamp, want="instant", default_offset=self._zone_offset(header))
        if recorded is None:
            moment = received_at or datetime.now(UTC)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            recorded = moment.isoformat(timespec="seconds")
        kind = "^".join(p for p in (header.message_type, header.trigger_event, header.message_structure) if p)
        activity = {
            "coding": [{"system": _V2_0003, "code": header.trigger_event or header.message_type, "display": kind}]
        }
        body = provenance(
            resource_id=make_id(header.sender, "Provenance", ("message", header.control_id)),
            targets=targets,
            recorded=recorded,
            sender=header.sender or "unknown",
            sender_system=SENDER_SYSTEM,
            message_id=header.control_id,
            inbox_id=inbox_id,
            activity=activity,
            occurred=occurred,
        )
        if reasons:
            body["reason"] = reasons
        if agents:
            body["agent"].extend(agents)
        return body

    def _event_reason(self, evn: Any, warnings: list[str] | None) -> list[dict[str, Any]]:
        """EVN-4 (table 0062; IS before v2.7, CWE since) → Provenance.reason through the ConceptMap
        (IG: 01/02/03 → v3-ActReason PATRQT/TREAT/HOPERAT, O stays a v2-0062 code); U (unknown) →
        a reason that only says data-absent-reason "unknown" (IG EVN[Provenance]). A code the map
        does not know passes through as a v2-0062 code and is reported, as the engine does."""
        code = (evn.value(4) or "").strip()
        if not code:
            return []
        if code.upper() == "U":
            return [{"extension": [{"url": _DATA_ABSENT_REASON, "valueCode": "unknown"}]}]
        table = self.repository.concepts.get(_EVENT_REASON_MAP)
        if table is None:
            return []
        lookup = table.lookup(code)
        if not lookup.mapped and warnings is not None:
            message = f"EVN-4: code {safe_code(code)} not in ConceptMap {table.id}; passed through"
            if message not in warnings:
                warnings.append(message)
        coding = lookup.coding if lookup.coding is not None else table.passthrough(code)
        return [{"coding": [coding.as_dict()]}]

    def _zone_offset(self, header: Any) -> str | None:
        text = header.timestamp
        if not text or len(text) < 10:
            return None
        try:
            moment = datetime(int(text[:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]))
        except ValueError:
            return None
        return self.settings.offset_for(moment)


def _operators(evn: Any) -> list[dict[str, Any]]:
    """EVN-5 operator ids (XCN, repeating) → Provenance agents of type ``enterer`` (the person who
    entered the event; IG EVN[Provenance]: agent.who(Practitioner)), each a logical reference built
    as datatypes/XCN-Reference.yaml builds one: XCN.1 → identifier.value, XCN.2-6 → display."""
    agents = []
    for rep in range(1, len(evn.repetitions(5)) + 1):
        ident = (evn.value(5, rep, 1) or "").strip()
        parts = [(evn.value(5, rep, n) or "").strip() for n in (6, 3, 4, 2)]  # prefix given middle family
        display = " ".join(p for p in parts if p)
        if not ident and not display:
            continue
        who: dict[str, Any] = {"type": "Practitioner"}
        if ident:
            who["identifier"] = {"value": ident}
        if display:
            who["display"] = display
        agents.append(
            {"type": {"coding": [{"system": _PARTICIPANT_TYPE, "code": "enterer", "display": "Enterer"}]}, "who": who}
        )
    return agents


def _offset(stamp: str) -> str | None:
    value, _ = convert_dtm(stamp) if stamp else (None, "")
    if value and "T" in value:
        return value[-6:]
    return None


@lru_cache(maxsize=1)
def default_translator() -> Hl7v2Translator:
    """A translator over the shipped mappings (plus ``mappings/site`` when it holds files)."""
    import mappings

    site = mappings.site_directory()
    has_site = site.is_dir() and any(p.suffix in (".yaml", ".yml", ".json") for p in site.rglob("*"))
    return Hl7v2Translator(mappings.directory(), site if has_site else None)


def translate_bytes(
    raw: bytes, *, explain: bool = False, translator: Hl7v2Translator | None = None
) -> tuple[Translation, list[TraceEntry] | None]:
    """Dry-run translation for ``meoring translate FILE``: (Translation, explain trace or None).

    Raises :class:`~hub.errors.MappingError` (incl. UnsupportedMessage / ValidationFailed) with a
    one-line, PHI-free message for a message that cannot be translated.
    """
    return (translator or default_translator()).translate_raw(raw, explain=explain)


def format_explain(trace: Sequence[TraceEntry]) -> list[str]:
    """One line per FHIR element: ``Patient/m… gender ← PID-8 (segments/PID-Patient.yaml:28)``."""
    return [f"{t.resource} {t.element} \u2190 {t.source} ({t.rule})" for t in trace]
