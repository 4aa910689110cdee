"""HL7 v2 as a source for the mapping engine: path dialect, nodes, consumption tracking.

Paths in HL7 v2 mapping files (compiled once, when the mapping files load)::

    PID-3            field 3 of PID, every repetition      PID-3[2].4.1  rep 2, comp 4, sub 1
    OBX-5.3          component 3 of every repetition        4.1           relative: component 4.1
    ORDER_OBSERVATION/OBX                                   groups, then segments (direct children)
    ../OBR-3         from OBX: the OBR one group up         /MSH-10       from the message root
    .                the current node                       OBX[2]        the 2nd OBX of the group
    /                the whole message

Relative numbers address fields of a segment node, components of a field node and
subcomponents of a component node. From a segment node, another segment's name means a
sibling in the same group (ORC → ``OBR-4``). Group names are the short names of the message
structure (HL7 v2.5.1 abstract message syntax, e.g. ``ORU_R01.ORDER_OBSERVATION``).

Every field the engine reads is marked consumed; :meth:`Hl7Document.unconsumed` lists valued
fields and segments that no rule read (``--coverage``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hub.mapping.source import ABSENT, VALUED, Function

from .escape import unescape
from .parser import _LITERAL_HEADERS, Message, Presence, Segment
from .structure import Group

__all__ = ["GroupNode", "HPath", "Hl7Dialect", "Hl7Document", "SegmentNode", "ValueNode"]

_SEG_TAIL = re.compile(r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:\[(?P<occ>\d+)\])?(?:-(?P<nums>\d+(?:\[\d+\])?(?:\.\d+){0,2}))?$")
_NUM_TAIL = re.compile(r"^\d+(?:\[\d+\])?(?:\.\d+){0,2}$")
_GROUP = re.compile(r"^[A-Z][A-Z0-9_]{3,}$")


@dataclass(frozen=True, slots=True)
class HPath:
    """A compiled HL7 v2 source path (see module docstring)."""

    text: str
    root: bool = False
    up: int = 0
    groups: tuple[str, ...] = ()
    group_tail: str = ""  # the last step names a group
    segment: str = ""
    occurrence: int = 0  # 0 = every occurrence
    numbers: tuple[int, ...] = ()
    rep: int = 0  # 0 = every repetition (only with numbers)
    is_self: bool = False
    local: bool = False  # no root, '..' or group steps: relative to the current segment or value
    rel: bool = False  # numbers only (no segment name, no repetition): "3", "4.1"
    #: read from a value node, the path stays inside that value ("3", "4.1", "."): what
    #: :mod:`hub.mapping.plan` needs to memoise a datatype map
    value_relative: bool = False
    field: int = 0  # numbers[0], or 0
    first_comp: int = 1  # component read by value() (numbers[1], else the first)
    first_sub: int = 1  # subcomponent read by value()

    def __post_init__(self) -> None:
        numbers = self.numbers
        if numbers:
            object.__setattr__(self, "field", numbers[0])
            object.__setattr__(self, "first_comp", numbers[1] if len(numbers) > 1 else 1)
            object.__setattr__(self, "first_sub", numbers[2] if len(numbers) > 2 else 1)
        local = not (self.root or self.up or self.groups or self.group_tail or self.is_self)
        object.__setattr__(self, "local", local)
        object.__setattr__(self, "rel", local and not self.segment and bool(self.numbers) and not self.rep)
        inside = not (self.root or self.up or self.groups or self.group_tail or self.segment)
        object.__setattr__(self, "value_relative", inside and (bool(self.numbers) or self.is_self))


def _numbers(text: str) -> tuple[tuple[int, ...], int]:
    rep = 0
    first, _, rest = text.partition(".")
    if "[" in first:
        first, _, rep_text = first.partition("[")
        rep = int(rep_text.rstrip("]"))
        if rep < 1:
            raise ValueError("repetitions count from 1")
    numbers = (int(first), *(int(n) for n in rest.split(".") if rest))
    if any(n < 1 for n in numbers):
        raise ValueError("fields, components and subcomponents count from 1")
    return numbers, rep


def compile_path(text: str) -> HPath:
    """Compile a path; ValueError for malformed ones."""
    raw = text.strip()
    if not raw:
        raise ValueError("empty path")
    root = raw.startswith("/")
    if raw == "/":
        return HPath(text=raw, root=True, is_self=True)
    parts = raw.lstrip("/").split("/")
    up = 0
    while parts and parts[0] == "..":
        up += 1
        parts.pop(0)
    if not parts or not parts[-1]:
        if up:
            return HPath(text=raw, root=root, up=up, is_self=True)
        raise ValueError("path ends with '/'")
    *group_parts, tail = parts
    for name in group_parts:
        if not _GROUP.match(name):
            raise ValueError(f"{name!r} is not a group name (upper case, 4+ characters)")
    if tail == ".":
        return HPath(text=raw, root=root, up=up, groups=tuple(group_parts), is_self=True)
    match = _SEG_TAIL.match(tail)
    if match:
        numbers: tuple[int, ...] = ()
        rep = 0
        if match["nums"]:
            numbers, rep = _numbers(match["nums"])
        return HPath(
            text=raw,
            root=root,
            up=up,
            groups=tuple(group_parts),
            segment=match["seg"],
            occurrence=int(match["occ"] or 0),
            numbers=numbers,
            rep=rep,
        )
    if _NUM_TAIL.match(tail):
        if root or group_parts or up:
            raise ValueError("relative numbers cannot follow a group or '..'; name the segment")
        numbers, rep = _numbers(tail)
        return HPath(text=raw, numbers=numbers, rep=rep)
    if _GROUP.match(tail):
        return HPath(text=raw, root=root, up=up, groups=tuple(group_parts), group_tail=tail)
    raise ValueError("expected SEG-n[.n[.n]], a group name, numbers or '.'")


#: Presence member (by identity: hashing an Enum member runs Python code) → ABSENT/NULL/VALUED
_PRESENCE = {id(member): member.value for member in Presence}


class Hl7Document:
    """A parsed message with its group tree, as seen by the engine."""

    __slots__ = (
        "_children",
        "cache",
        "consumed",
        "ignored",
        "memo_context",
        "message",
        "parents",
        "settings",
        "touched",
        "tree",
    )

    def __init__(self, message: Message, tree: Group, settings: Any = None) -> None:
        self.message = message
        self.tree = tree
        self.settings = settings
        self.consumed: set[tuple[int, int]] = set()
        self.ignored: set[tuple[int, int]] = set()  # fields that are not data (Set IDs)
        self.touched: set[int] = set()
        self.cache: dict[str, Any] = {}  # per-message facts transforms derive once (MSH-7 offset)
        self._children: dict[int, tuple[dict[str, list[Segment]], dict[str, list[Group]]]] = {}
        enc = message.header.encoding
        #: delimiters and character set as one string: part of every value's memo key
        self.memo_context = repr(
            (enc.field, enc.component, enc.repetition, enc.escape, enc.subcomponent, enc.truncation, message.codec)
        )
        self.parents: dict[int, Group] = {}
        stack = [tree]
        while stack:
            group = stack.pop()
            for child in group.children:
                if isinstance(child, Segment):
                    self.parents[child.position] = group
                else:
                    stack.append(child)

    @property
    def root(self) -> GroupNode:
        """The node of the whole message (made on demand: a stored one would be a reference
        cycle document ↔ node, left for the cyclic garbage collector)."""
        return GroupNode(self, self.tree)

    def release(self) -> None:
        """Break the group tree's parent links (group ↔ parent group cycles) once the message is
        translated, so that its objects are freed at once rather than by the cyclic collector."""
        stack = [self.tree]
        while stack:
            group = stack.pop()
            group.parent = None
            stack.extend(child for child in group.children if not isinstance(child, Segment))
        self._children = {}

    def consume(self, segment: Segment, *fields: int) -> None:
        for number in fields:
            self.consumed.add((segment.position, number))

    def unconsumed(self) -> list[str]:
        """Valued fields (``OBX-17``) and whole segments (``ZPI``) no rule read, in message order."""
        out: list[str] = []
        seen: set[str] = set()
        consumed = self.consumed
        ignored = self.ignored
        touched = self.touched
        strip = ""
        last_enc = None
        for seg in self.message.segments:
            enc = seg.enc
            if enc is not last_enc:
                last_enc = enc
                strip = enc.component + enc.repetition + enc.subcomponent + " "
            position = seg.position
            fields = seg.fields
            valued = []
            for n in range(1, len(fields)):
                raw = fields[n]
                if raw and raw != '""':
                    bare = raw.strip(strip)
                    if bare and bare != '""' and (not ignored or (position, n) not in ignored):
                        valued.append(n)
            left = [n for n in valued if (position, n) not in consumed]
            if len(left) == len(valued) and position not in touched:  # nothing of it was read
                names = [seg.name]
            else:
                name = seg.name
                names = [f"{name}-{n}" for n in left]
            for item in names:
                if item not in seen:
                    seen.add(item)
                    out.append(item)
        return out

    # -- navigation ------------------------------------------------------------------------
    def group_of(self, segment: Segment) -> Group:
        return self.parents.get(segment.position, self.tree)

    def _value_nodes(self, seg: Segment, numbers: tuple[int, ...], rep: int) -> list[Any]:
        field = numbers[0]
        self.consumed.add((seg.position, field))
        fields = seg.fields
        raw = fields[field] if field < len(fields) else ""
        if not raw:
            return []
        separator = seg.enc.repetition
        if separator and separator in raw and not (field <= 2 and seg.name in _LITERAL_HEADERS):
            count = raw.count(separator) + 1
        else:
            count = 1
        comp = numbers[1] if len(numbers) > 1 else 0
        sub = numbers[2] if len(numbers) > 2 else 0
        if rep:
            return [ValueNode(self, seg, field, rep, comp, sub)] if rep <= count else []
        return [ValueNode(self, seg, field, r, comp, sub) for r in range(1, count + 1)]

    def _index(self, group: Group) -> tuple[dict[str, list[Segment]], dict[str, list[Group]]]:
        """The direct children of a group instance by name: segments, groups (built once)."""
        index = self._children.get(id(group))
        if index is None:
            segments: dict[str, list[Segment]] = {}
            groups: dict[str, list[Group]] = {}
            for child in group.children:
                if isinstance(child, Segment):
                    segments.setdefault(child.name, []).append(child)
                else:
                    groups.setdefault(child.name, []).append(child)
            index = self._children[id(group)] = (segments, groups)
        return index

    def segments_in(self, group: Group, name: str, occurrence: int) -> list[Segment]:
        """Direct child segments of a group with this name (the ``occurrence``-th, 0 = all); marks
        them touched. The list is shared: callers must not change it."""
        index = self._children.get(id(group))
        found = (index or self._index(group))[0].get(name)
        if not found:
            return []
        if occurrence:
            found = found[occurrence - 1 : occurrence]
        touched = self.touched
        for seg in found:
            touched.add(seg.position)
        return found

    def descend(self, groups: list[Group], names: tuple[str, ...]) -> list[Group]:
        for name in names:
            groups = [child for g in groups for child in self._index(g)[1].get(name, ())]
        return groups


class _Node:
    __slots__ = ("doc",)

    doc: Hl7Document

    def _start(self, path: HPath) -> list[Group] | None:
        """Groups a group/segment path starts from (None: resolve relative to this node)."""
        return None

    def _resolve(self, groups: list[Group], path: HPath) -> list[Any]:
        doc = self.doc
        groups = doc.descend(groups, path.groups)
        if path.is_self:
            return [GroupNode(doc, g) for g in groups]
        if path.group_tail:
            return [GroupNode(doc, g) for g in doc.descend(groups, (path.group_tail,))]
        segments = [s for g in groups for s in doc.segments_in(g, path.segment, path.occurrence)]
        if not path.numbers:
            return [SegmentNode(doc, s) for s in segments]
        return [node for s in segments for node in doc._value_nodes(s, path.numbers, path.rep)]

    def _first_segment(self, groups: list[Group], path: HPath) -> Segment | None:
        groups = self.doc.descend(groups, path.groups)
        for group in groups:
            found = self.doc.segments_in(group, path.segment, path.occurrence)
            if found:
                return found[0]
        return None


def _up(group: Group, levels: int) -> Group:
    for _ in range(levels):
        if group.parent is not None:
            group = group.parent
    return group


class GroupNode(_Node):
    """A group instance (or the whole message)."""

    __slots__ = ("group",)

    def __init__(self, doc: Hl7Document, group: Group) -> None:
        self.doc = doc
        self.group = group

    @property
    def location(self) -> str:
        path = self.group.path
        return path.split("/", 1)[1] if "/" in path else path

    def _base(self, path: HPath) -> list[Group]:
        if path.root:
            return [self.doc.tree]
        return [_up(self.group, path.up)]

    def select(self, path: HPath) -> Sequence[Any]:
        if not path.segment and path.numbers:
            return []
        if path.local and not path.numbers:  # segments of this group (OBSERVATION → OBX)
            doc = self.doc
            return [SegmentNode(doc, s) for s in doc.segments_in(self.group, path.segment, path.occurrence)]
        return self._resolve(self._base(path), path)

    def value(self, path: HPath | None) -> str | None:
        if path is None or not path.segment or not path.numbers:
            return None
        seg = self._first_segment(self._base(path), path)
        if seg is None:
            return None
        return _read(self.doc, seg, path.numbers, path.rep)

    def presence(self, path: HPath) -> str:
        if not path.segment:
            return VALUED if self.select(path) else ABSENT
        seg = self._first_segment(self._base(path), path)
        if seg is None:
            return ABSENT
        if not path.numbers:
            return VALUED
        return _presence(self.doc, seg, path.numbers, path.rep)


def _read(doc: Hl7Document, seg: Segment, numbers: tuple[int, ...], rep: int) -> str | None:
    field = numbers[0]
    doc.consumed.add((seg.position, field))
    length = len(numbers)
    return seg.value(field, rep or 1, numbers[1] if length > 1 else 1, numbers[2] if length > 2 else 1)


def _presence(doc: Hl7Document, seg: Segment, numbers: tuple[int, ...], rep: int) -> str:
    field = numbers[0]
    doc.consumed.add((seg.position, field))
    length = len(numbers)
    return _PRESENCE[
        id(seg.presence(field, rep or 1, numbers[1] if length > 1 else 0, numbers[2] if length > 2 else 0))
    ]


class SegmentNode(_Node):
    """One segment."""

    __slots__ = ("segment",)

    def __init__(self, doc: Hl7Document, segment: Segment) -> None:
        self.doc = doc
        self.segment = segment

    @property
    def location(self) -> str:
        return self.segment.label

    def _own(self, path: HPath) -> bool:
        if not path.local:
            return False
        name = path.segment
        if not name:
            return True
        segment = self.segment
        return name == segment.name and (not path.occurrence or path.occurrence == segment.occurrence)

    def _base(self, path: HPath) -> list[Group]:
        if path.root:
            return [self.doc.tree]
        return [_up(self.doc.group_of(self.segment), path.up)]

    def select(self, path: HPath) -> Sequence[Any]:
        if path.local:
            segment = self.segment
            name = path.segment
            own = (not name or name == segment.name) and (not path.occurrence or path.occurrence == segment.occurrence)
            if path.numbers:
                if not own:
                    return self._resolve(self._base(path), path)
                # a field of this segment, every repetition (the common case; _value_nodes inlined)
                doc = self.doc
                field = path.field
                doc.consumed.add((segment.position, field))
                fields = segment.fields
                raw = fields[field] if field < len(fields) else ""
                if not raw:
                    return []
                separator = segment.enc.repetition
                if separator and separator in raw and not (field <= 2 and segment.name in _LITERAL_HEADERS):
                    count = raw.count(separator) + 1
                else:
                    count = 1
                numbers = path.numbers
                comp = numbers[1] if len(numbers) > 1 else 0
                sub = numbers[2] if len(numbers) > 2 else 0
                rep = path.rep
                if rep:
                    return [ValueNode(doc, segment, field, rep, comp, sub)] if rep <= count else []
                if count == 1:
                    return [ValueNode(doc, segment, field, 1, comp, sub)]
                return [ValueNode(doc, segment, field, r, comp, sub) for r in range(1, count + 1)]
            if not own:  # sibling segments in this segment's group (OBX → NTE)
                doc = self.doc
                group = _up(doc.group_of(segment), path.up)
                return [SegmentNode(doc, s) for s in doc.segments_in(group, name, path.occurrence)]
        if path.is_self and not path.up and not path.root and not path.groups:
            return [self]
        if self._own(path) and not path.group_tail:
            if not path.numbers:
                return [self]
            return self.doc._value_nodes(self.segment, path.numbers, path.rep)
        return self._resolve(self._base(path), path)

    def value(self, path: HPath | None) -> str | None:
        if path is None or not path.numbers:
            return None
        segment = self.segment
        if (
            path.local
            and (not path.segment or path.segment == segment.name)
            and (not path.occurrence or path.occurrence == segment.occurrence)
        ):
            field = path.field
            self.doc.consumed.add((segment.position, field))
            return segment.value(field, path.rep or 1, path.first_comp, path.first_sub)
        seg = self._first_segment(self._base(path), path)
        return _read(self.doc, seg, path.numbers, path.rep) if seg is not None else None

    def presence(self, path: HPath) -> str:
        if self._own(path):
            if not path.numbers:
                return VALUED
            return _presence(self.doc, self.segment, path.numbers, path.rep)
        if not path.segment:
            return VALUED if self.select(path) else ABSENT
        seg = self._first_segment(self._base(path), path)
        if seg is None:
            return ABSENT
        return _presence(self.doc, seg, path.numbers, path.rep) if path.numbers else VALUED


class ValueNode(_Node):
    """A field repetition (comp = 0), a component (sub = 0) or a subcomponent."""

    __slots__ = ("comp", "field", "rep", "segment", "sub")

    def __init__(self, doc: Hl7Document, segment: Segment, field: int, rep: int, comp: int, sub: int) -> None:
        self.doc = doc
        self.segment = segment
        self.field = field
        self.rep = rep
        self.comp = comp
        self.sub = sub

    @property
    def location(self) -> str:
        text = f"{self.segment.label}-{self.field}"
        if self.rep > 1:
            text += f"[{self.rep}]"
        if self.comp:
            text += f".{self.comp}"
            if self.sub:
                text += f".{self.sub}"
        return text

    def _absolute(self, numbers: tuple[int, ...]) -> tuple[int, int] | None:
        """(comp, sub) for relative numbers; None when they go deeper than subcomponents."""
        if not self.comp:
            if len(numbers) > 2:
                return None
            return numbers[0], numbers[1] if len(numbers) > 1 else 0
        if self.sub or len(numbers) > 1:
            return None
        return self.comp, numbers[0]

    def select(self, path: HPath) -> Sequence[Any]:
        if path.is_self and not (path.root or path.up or path.groups):
            return [self]
        if not path.segment and path.numbers and not path.root:
            if path.rep:
                return []
            target = self._absolute(path.numbers)
            if target is None:
                return []
            comp, sub = target
            node = ValueNode(self.doc, self.segment, self.field, self.rep, comp, sub)
            return [node] if node.presence_self() != ABSENT else []
        return SegmentNode(self.doc, self.segment).select(path)

    def memo_key(self) -> tuple[Any, ...] | None:
        """What every value-relative read from this node depends on: the raw text of this
        repetition / component / subcomponent, its level, the delimiters and the character set
        (None for MSH-1/MSH-2, which are read literally)."""
        segment = self.segment
        if self.field <= 2 and segment.name in _LITERAL_HEADERS:
            return None
        raw = segment._primitive(self.field, self.rep, self.comp, self.sub)
        doc = self.doc
        if segment.enc is doc.message.header.encoding and segment.charset == doc.message.codec:
            return (raw, self.comp, self.sub, doc.memo_context)
        return (raw, self.comp, self.sub, segment.enc, segment.charset)

    def presence_self(self) -> str:
        return _PRESENCE[id(self.segment.presence(self.field, self.rep, self.comp, self.sub))]

    def value(self, path: HPath | None) -> str | None:
        if path is None or (path.is_self and not (path.root or path.up or path.groups)):
            return self.segment.value(self.field, self.rep, self.comp or 1, self.sub or 1)
        if path.rel and not self.comp:
            numbers = path.numbers
            if len(numbers) == 1:
                comps = self.segment._components(self.field, self.rep)
                index = numbers[0]
                if comps is None or index > len(comps):
                    return None
                raw = comps[index - 1]
                if not raw or raw == '""':
                    return None
                segment = self.segment
                enc = segment.enc
                if enc.subcomponent and enc.subcomponent in raw:
                    raw = raw.split(enc.subcomponent, 1)[0]
                    if not raw or raw == '""':
                        return None
                if enc.escape and enc.escape in raw:
                    return unescape(raw, enc, segment.charset)
                return raw
        if not path.segment and path.numbers and not path.root:
            target = self._absolute(path.numbers)
            if target is None or path.rep:
                return None
            comp, sub = target
            return self.segment.value(self.field, self.rep, comp, sub or 1)
        segment = self.segment
        if (
            path.local
            and path.numbers
            and path.segment == segment.name
            and (not path.occurrence or path.occurrence == segment.occurrence)
        ):
            # a field of this value's own segment (OBX-5 → OBX-2), as SegmentNode.value reads it
            field = path.field
            self.doc.consumed.add((segment.position, field))
            return segment.value(field, path.rep or 1, path.first_comp, path.first_sub)
        return SegmentNode(self.doc, segment).value(path)

    def presence(self, path: HPath) -> str:
        if path.is_self and not (path.root or path.up or path.groups):
            return self.presence_self()
        if not path.segment and path.numbers and not path.root:
            target = self._absolute(path.numbers)
            if target is None or path.rep:
                return ABSENT
            comp, sub = target
            return _PRESENCE[id(self.segment.presence(self.field, self.rep, comp, sub))]
        return SegmentNode(self.doc, self.segment).presence(path)

    def text(self) -> str | None:
        """The whole repetition as text (separators kept), for ST/TX/FT values."""
        if self.comp:
            return self.value(None)
        return self.segment.text(self.field, self.rep)


class Hl7Dialect:
    """The :class:`hub.mapping.source.Dialect` for HL7 v2."""

    name = "hl7v2"

    def __init__(self, functions: Mapping[str, Function]) -> None:
        self._functions = dict(functions)

    def compile_path(self, text: str) -> HPath:
        return compile_path(text)

    @property
    def functions(self) -> Mapping[str, Function]:
        return self._functions
