"""Message structures: which abstract message syntax a message follows, and its segment groups.

* :func:`resolve_structure` - MSH-9.3, or for senders that leave it empty (v2.3 and older
  never had it) the event → structure table (HL7 table 0354, v2.5.1 Ch. 2 Appendix; the IG's
  guidance "derive MSG-3 from MSH-9.1 + MSH-9.2", HL7 v2-to-FHIR IG, implementation
  considerations).
* :func:`group` - the segment-group tree (``PATIENT_RESULT`` / ``ORDER_OBSERVATION`` /
  ``OBSERVATION`` ...) of a parsed message. The abstract message syntax comes from hl7apy's
  structure tables (v2.5.1, falling back to other versions); the matching is our own and
  tolerant, in the manner of HAPI's "non-standard segment" handling: a segment the structure
  does not expect where it stands (Z-segments, segments from a later version, out-of-order
  segments) is kept in the group where it appeared, never dropped.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .parser import Header, Segment

__all__ = ["EVENT_STRUCTURES", "Group", "GroupDef", "group", "resolve_structure", "structure_def"]

#: (message type, trigger event) → message structure (HL7 table 0354, version-independent subset).
EVENT_STRUCTURES: dict[tuple[str, str], str] = {}


def _events(message_type: str, structure: str, events: str) -> None:
    for event in events.split():
        EVENT_STRUCTURES[(message_type, event)] = structure


_events("ADT", "ADT_A01", "A01 A04 A08 A13")
_events("ADT", "ADT_A02", "A02")
_events("ADT", "ADT_A03", "A03")
_events("ADT", "ADT_A05", "A05 A14 A28 A31")
_events("ADT", "ADT_A06", "A06 A07")
_events("ADT", "ADT_A09", "A09 A10 A11")
_events("ADT", "ADT_A12", "A12")
_events("ADT", "ADT_A15", "A15")
_events("ADT", "ADT_A16", "A16")
_events("ADT", "ADT_A17", "A17")
_events("ADT", "ADT_A18", "A18")
_events("ADT", "ADT_A20", "A20")
_events("ADT", "ADT_A21", "A21 A22 A23 A25 A26 A27 A29 A32 A33")
_events("ADT", "ADT_A24", "A24")
_events("ADT", "ADT_A30", "A30 A34 A35 A36 A46 A47 A48 A49")
_events("ADT", "ADT_A37", "A37")
_events("ADT", "ADT_A38", "A38")
_events("ADT", "ADT_A39", "A39 A40 A41 A42")
_events("ADT", "ADT_A43", "A43 A44")
_events("ADT", "ADT_A45", "A45")
_events("ADT", "ADT_A50", "A50 A51")
_events("ADT", "ADT_A52", "A52 A53 A55")
_events("ADT", "ADT_A54", "A54")
_events("ADT", "ADT_A60", "A60")
_events("ADT", "ADT_A61", "A61 A62")
_events("ORU", "ORU_R01", "R01")
_events("ORU", "ORU_R30", "R30 R31 R32")
_events("ORU", "ORU_W01", "W01")
_events("ORM", "ORM_O01", "O01")
_events("OML", "OML_O21", "O21")
_events("OML", "OML_O33", "O33")
_events("OML", "OML_O35", "O35")
_events("OUL", "OUL_R22", "R22")
_events("OUL", "OUL_R23", "R23")
_events("OUL", "OUL_R24", "R24")
_events("RDE", "RDE_O11", "O11 O25")
_events("VXU", "VXU_V04", "V04")
_events("SIU", "SIU_S12", "S12 S13 S14 S15 S16 S17 S18 S19 S20 S21 S22 S23 S24 S26")
_events("MDM", "MDM_T01", "T01 T03 T05 T07 T09 T11")
_events("MDM", "MDM_T02", "T02 T04 T06 T08 T10")
_events("DFT", "DFT_P03", "P03")
_events("BAR", "BAR_P01", "P01")
_events("ACK", "ACK", "")

#: hl7apy packages searched, in order, for the abstract syntax of a structure.
_VERSIONS = ("v2_5_1", "v2_8", "v2_6", "v2_5", "v2_4", "v2_3_1", "v2_3")


def resolve_structure(header: Header, known: frozenset[str] | None = None) -> str:
    """The message structure (``ADT_A01``...) of a message.

    MSH-9.3 wins when it names a structure in ``known`` (or any when ``known`` is None);
    otherwise (absent, or an odd value such as ``9.3-DEF``) the event table decides, and last
    ``TYPE_EVENT``.
    """
    sent = header.message_structure
    if sent and (known is None or sent in known):
        return sent
    derived = EVENT_STRUCTURES.get((header.message_type, header.trigger_event))
    if derived:
        return derived
    if header.message_type == "ACK":
        return "ACK"
    return f"{header.message_type}_{header.trigger_event}" if header.trigger_event else header.message_type


@dataclass(frozen=True, slots=True)
class GroupDef:
    """A group of an abstract message syntax; ``children`` are segment names or GroupDefs.

    Per child: ``repeats``; ``starts``, the segments that can begin it (its leading optional
    elements up to the first required one); ``contains``, every segment inside it.
    Choice groups (ORM's OBR/RQD/RQ1/RXO/ODS/ODT) are flattened into their parent.
    """

    name: str
    children: tuple[str | GroupDef, ...]
    repeats: tuple[bool, ...]
    required: tuple[bool, ...]
    starts: tuple[frozenset[str], ...]
    contains: tuple[frozenset[str], ...]

    def first_set(self) -> frozenset[str]:
        names: set[str] = set()
        for start, required in zip(self.starts, self.required, strict=True):
            names |= start
            if required:
                break
        return frozenset(names)

    def all_segments(self) -> frozenset[str]:
        return frozenset().union(*self.contains) if self.contains else frozenset()


def _convert(name: str, spec: Any, groups: dict[str, Any]) -> GroupDef:
    children: list[str | GroupDef] = []
    repeats: list[bool] = []
    required: list[bool] = []
    for child_name, _ref, (low, high), kind in spec[1]:
        if kind == "GRP" and groups[child_name][0] == "choice":
            for alt_name, _alt_ref, _alt_card, alt_kind in groups[child_name][1]:
                children.append(_convert(alt_name, groups[alt_name], groups) if alt_kind == "GRP" else alt_name)
                repeats.append(False)
                required.append(False)
            continue
        children.append(_convert(child_name, groups[child_name], groups) if kind == "GRP" else child_name)
        repeats.append(high == -1 or high > 1)
        required.append(low >= 1)
    starts = tuple(frozenset({c}) if isinstance(c, str) else c.first_set() for c in children)
    contains = tuple(frozenset({c}) if isinstance(c, str) else c.all_segments() for c in children)
    short = name.split("_", 2)[-1] if name.count("_") >= 2 else name
    return GroupDef(short, tuple(children), tuple(repeats), tuple(required), starts, contains)


@lru_cache(maxsize=256)
def structure_def(structure: str) -> GroupDef | None:
    """The abstract message syntax of ``structure`` from hl7apy's tables, or None if unknown."""
    for version in _VERSIONS:
        try:
            messages = importlib.import_module(f"hl7apy.{version}.messages")
            groups = importlib.import_module(f"hl7apy.{version}.groups")
        except ImportError:  # pragma: no cover - hl7apy is a dependency
            return None
        spec = messages.MESSAGES.get(structure)
        if spec is not None:
            converted = _convert(structure, spec, groups.GROUPS)
            return GroupDef(
                structure,
                converted.children,
                converted.repeats,
                converted.required,
                converted.starts,
                converted.contains,
            )
    return None


@dataclass(slots=True)
class Group:
    """One instance of a segment group; ``children`` are segments and groups in message order.

    ``name`` is the short group name (``ORDER_OBSERVATION``; the root is the structure name),
    ``index`` the 1-based occurrence of this group name under its parent.
    """

    name: str
    children: list[Segment | Group] = field(default_factory=list)
    index: int = 1
    parent: Group | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"<Group {self.name}[{self.index}] children={len(self.children)}>"

    def segments(self, name: str | None = None) -> list[Segment]:
        """Direct child segments (with this name)."""
        return [c for c in self.children if isinstance(c, Segment) and (name is None or c.name == name)]

    def groups(self, name: str | None = None) -> list[Group]:
        """Direct child groups (with this short name)."""
        return [c for c in self.children if isinstance(c, Group) and (name is None or c.name == name)]

    def walk(self) -> Iterator[Segment]:
        """Every segment under this group, in message order."""
        for child in self.children:
            if isinstance(child, Segment):
                yield child
            else:
                yield from child.walk()

    @property
    def path(self) -> str:
        """``ORU_R01/PATIENT_RESULT[1]/ORDER_OBSERVATION[2]`` style path of this instance."""
        if self.parent is None:
            return self.name
        return f"{self.parent.path}/{self.name}[{self.index}]"


class _Frame:
    __slots__ = ("defn", "group", "pos")

    def __init__(self, defn: GroupDef, group: Group) -> None:
        self.defn = defn
        self.group = group
        self.pos = -1


#: Segments whose meaning depends on what precedes them: never used to open a group loosely.
_CONTEXTUAL = frozenset({"NTE", "OBX", "ROL", "PRT", "TQ1", "TQ2", "CTI", "FT1"})


def _find(defn: GroupDef, pos: int, name: str, loose: bool) -> int:
    """Index of the child of ``defn`` at or after ``pos`` that accepts segment ``name``; -1 if none.

    The child at ``pos`` itself accepts only a new repetition. ``loose`` also accepts a group
    that contains the segment anywhere (for senders that leave out a group's first segment).
    """
    table = defn.contains if loose else defn.starts
    if pos >= 0 and defn.repeats[pos] and name in table[pos]:
        return pos
    for index in range(pos + 1, len(defn.children)):
        if name in table[index]:
            return index
    return -1


def _open(frames: list[_Frame], index: int, name: str) -> Group:
    """Descend from the top frame into child ``index`` (and further) until segment ``name`` fits.
    Returns the group that receives the segment."""
    while True:
        frame = frames[-1]
        frame.pos = index
        child = frame.defn.children[index]
        if isinstance(child, str):
            return frame.group
        siblings = sum(1 for g in frame.group.children if isinstance(g, Group) and g.name == child.name)
        new = Group(child.name, [], siblings + 1, frame.group)
        frame.group.children.append(new)
        frames.append(_Frame(child, new))
        index = _find(child, -1, name, False)
        if index < 0:
            index = _find(child, -1, name, True)
        if index < 0:  # pragma: no cover - the child was chosen because it holds the segment
            return new


_PRIOR_GROUPS = frozenset({"PRIOR_RESULT", "ORDER_PRIOR"})


def _weak_prior_reading(frames: list[_Frame], depth: int, index: int) -> bool:
    """Whether placing a segment at child ``index`` of frame ``depth`` is only the weak reading
    of an ambiguous structure: opening a PRIOR_RESULT from an ORC/OBR, or repeating an
    ORDER_PRIOR. Then the next outer order wins if there is one (OML_O21, ORL...). The first
    ORDER_PRIOR of a PRIOR_RESULT opened by its own PID/PV1 is the strong reading and stays.
    """
    frame = frames[depth]
    child = frame.defn.children[index]
    if not isinstance(child, GroupDef) or child.name not in _PRIOR_GROUPS:
        return False
    if child.name == "PRIOR_RESULT" or index == frame.pos:
        return True
    return bool(frame.group.groups(child.name))  # a second ORDER_PRIOR


def group(segments: list[Segment], structure: str) -> Group:
    """The group tree of a message's segments under the abstract syntax of ``structure``.

    Unknown structures yield a flat root group. Never raises, never drops a segment.
    """
    defn = structure_def(structure)
    root = Group(structure)
    if defn is None:
        root.children.extend(segments)
        return root
    frames = [_Frame(defn, root)]
    for seg in segments:
        name = seg.name
        target: Group | None = None
        for loose in (False, True):
            if loose and name in _CONTEXTUAL:
                break
            found: tuple[int, int] | None = None
            for depth in range(len(frames) - 1, -1, -1):
                frame = frames[depth]
                index = _find(frame.defn, frame.pos, name, loose)
                if index < 0:
                    continue
                # An ORC/OBR that could open or repeat a nested prior-result group, or start
                # the next order further out: the next order is by far the likelier reading
                # (prior results begin with their own PID/PV1), so look further out first.
                if not _weak_prior_reading(frames, depth, index):
                    found = (depth, index)
                    break
                if found is None:
                    found = (depth, index)
            if found is not None:
                depth, index = found
                del frames[depth + 1 :]
                target = _open(frames, index, name)
            if target is not None:
                break
        if target is None:  # not expected anywhere ahead: keep it where it stands
            target = frames[-1].group
        target.children.append(seg)
    return root
