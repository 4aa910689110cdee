"""Per-message evaluation state shared by the engine's two evaluators (the compiled plans of
:mod:`.plan` and the tracing interpreter of :mod:`.engine`): built resources, scopes, warnings,
and the helpers whose behaviour both must share word for word (vocabulary, error locations,
deduplication, deferred references)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .conceptmap import ConceptMapStore
from .identity import make_id
from .model import REF, REPLACE, Rule
from .source import SourceNode
from .target import Slots, assign

__all__ = [
    "Built",
    "Scope",
    "State",
    "TraceEntry",
    "clone",
    "dedupe",
    "empty",
    "release",
    "resolve_deferred",
    "safe_code",
]

_SAFE_CODE = re.compile(r"^[A-Za-z0-9._\-]{1,20}$")


def safe_code(code: str) -> str:
    """A code for a warning: shown only if it looks like a table code, never free text (PHI)."""
    return repr(code) if _SAFE_CODE.match(code) else "(a non-code value)"


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """Which rule and source element produced one FHIR element (``--explain``)."""

    resource: str
    element: str
    rule: str
    source: str


@dataclass(slots=True, eq=False)
class Built:
    """One resource built from a message; ``write`` is its spec's ``write:`` (``replace`` or
    ``if_absent``), how the bundle entry writes it."""

    name: str
    resource_type: str
    id: str
    body: dict[str, Any]
    scope: Scope
    location: str
    duplicates: str = "first"
    write: str = REPLACE
    dropped: bool = False
    trace: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"


class Scope:
    """One instance of a ``scope:`` block (or the message): the resources built in it."""

    __slots__ = ("children", "parent", "resources")

    def __init__(self, parent: Scope | None) -> None:
        self.parent = parent
        self.resources: dict[str, list[Built]] = {}
        self.children: list[Scope] = []
        if parent is not None:
            parent.children.append(self)

    def lookup(self, name: str) -> Built | None:
        scope: Scope | None = self
        while scope is not None:
            found = scope.resources.get(name)
            if found:
                return found[0]
            scope = scope.parent
        return None

    def collect(self, name: str, out: list[Built]) -> list[Built]:
        out.extend(self.resources.get(name, ()))
        for child in self.children:
            child.collect(name, out)
        return out


Deferred = tuple[Rule, dict[str, Any], Built, Scope, "list[tuple[str, str, str]] | None"]


class State:
    """Per-message evaluation state; also the :class:`~.source.FunctionContext` of transforms."""

    __slots__ = (
        "_concepts",
        "built",
        "current",
        "deferred",
        "fallbacks",
        "message_key",
        "namespace",
        "nested",
        "scope",
        "slots",
        "trace_stack",
        "tracing",
        "warn_calls",
        "warnings",
    )

    def __init__(self, concepts: ConceptMapStore, namespace: str, message_key: str, tracing: bool) -> None:
        self._concepts = concepts
        self.namespace = namespace
        self.message_key = message_key
        self.tracing = tracing
        self.warnings: list[str] = []
        self.warn_calls = 0  # every call, duplicates included: what a memoised map must not skip
        self.slots: Slots = {}
        self.built: list[Built] = []
        self.deferred: list[Deferred] = []
        self.fallbacks: dict[str, int] = {}
        self.scope = Scope(None)
        self.current: Built | None = None
        self.trace_stack: list[list[tuple[str, str, str]]] = []
        # trace entries of map outputs, between production and assignment (by object id)
        self.nested: dict[int, list[tuple[str, str, str]]] = {}

    @property
    def concepts(self) -> ConceptMapStore:
        return self._concepts

    def warn(self, message: str) -> None:
        self.warn_calls += 1
        if message not in self.warnings:
            self.warnings.append(message)

    def find(self, name: str) -> Built | None:
        return self.scope.lookup(name)


def clone(value: Any) -> Any:
    """Copy of a JSON-like constant (rules' constants must never be shared between resources)."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def location(node: SourceNode, rule: Rule) -> str:
    """Where a rule's source is, for messages (never a value)."""
    if rule.source is None:
        return node.location
    try:
        selected = node.select(rule.source)
    except Exception:  # noqa: BLE001 - only for a message text
        selected = []
    return selected[0].location if selected else f"{node.location} {rule.source_text}"


def vocabulary(concepts: ConceptMapStore, rule: Rule, value: Any, node: SourceNode, state: State) -> Any:
    """``vocabulary:`` of a rule applied to one produced value (None: nothing to write)."""
    if not isinstance(value, str):
        return value
    code = value.strip()
    table = concepts.get(rule.vocabulary)
    if table is None:
        return None
    lookup = table.lookup(code)
    coding = lookup.coding
    if not lookup.mapped:
        where = location(node, rule)
        if coding is None and rule.vocab_as == "code":
            state.warn(f"{where}: code {safe_code(code)} not in ConceptMap {table.id}; left out")
            return None
        state.warn(f"{where}: code {safe_code(code)} not in ConceptMap {table.id}; passed through")
        if coding is None:
            coding = table.passthrough(code)
    if coding is None:
        return None
    if rule.vocab_as == "code":
        return coding.code
    if rule.vocab_as == "coding":
        return coding.as_dict()
    return {"coding": [coding.as_dict()]}


def resolve_deferred(state: State) -> None:
    """``ref`` targets found only later, and every ``refs`` list, once all resources exist."""
    for rule, obj, _built, scope, trace in state.deferred:
        if rule.kind == REF:
            found = scope.lookup(rule.ref)
            targets = [found] if found is not None else []
        else:
            targets = scope.collect(rule.ref, [])
        seen: set[str] = set()
        for target in targets:
            reference = target.reference
            if reference in seen:
                continue
            seen.add(reference)
            path = assign(obj, rule.target or (), {"reference": reference}, state.slots, trace is not None)
            if trace is not None:
                trace.append((path, rule.where, f"ref {rule.ref}"))


def dedupe(state: State) -> None:
    """Resources with the same type and id: the first is kept (``duplicates: first``) or later
    ones get a suffixed id (``duplicates: suffix``)."""
    seen: dict[tuple[str, str], Built] = {}
    counts: dict[tuple[str, str], int] = {}
    for built in state.built:
        key = (built.resource_type, built.id)
        first = seen.get(key)
        if first is None:
            seen[key] = built
            continue
        if built.duplicates == "suffix":
            count = counts.get(key, 1) + 1
            counts[key] = count
            built.id = built.body["id"] = make_id(built.id, built.resource_type, (str(count),))
            seen[(built.resource_type, built.id)] = built
            continue
        built.dropped = True
        if built.body != first.body:
            state.warn(f"two {built.resource_type} resources share one identity ({built.name}); the first is kept")


def release(state: State) -> None:
    """Break the reference cycles of a finished evaluation (scope ↔ child scope, scope → resource
    → scope), so that its objects are freed as soon as they are dropped instead of waiting for
    the cyclic garbage collector (which would otherwise scan them, a message at a time)."""
    root = state.scope
    while root.parent is not None:
        root = root.parent
    stack = [root]
    while stack:
        scope = stack.pop()
        stack.extend(scope.children)
        scope.children = []
        scope.resources = {}
    state.deferred = []
    state.current = None
