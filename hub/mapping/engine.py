"""Evaluating a message map against a source tree: resources, ids, references, trace.

The engine walks the message map in file order. A ``scope:`` block repeats its entries for
every node its path selects (one ``ORDER_OBSERVATION`` after another); a ``resources:`` entry
builds one resource per node of ``from`` (or one for the scope node), computes its id
(:mod:`.identity`) and applies its rules. ``ref:`` resolves to the nearest resource of that name
in the enclosing scopes; ``refs:`` collects every resource of that name built inside the
current scope instance, after all resources exist (so a DiagnosticReport lists the
Observations of its own order group only).

Nothing is dropped silently: unmapped codes, values a transform could not convert and
resources without business identifiers are reported in :attr:`EngineResult.warnings`; a rule
marked ``required`` that finds nothing, or a failing transform, raises
:class:`~hub.errors.MappingError` for the whole message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hub.errors import MappingError

from .conceptmap import ConceptMapStore
from .identity import make_id
from .model import ALL, CONSTANT, FIRST, JOIN, REF, REFS, SELF, SOURCE, MessageMap, ResourceSpec, Rule, ScopeSpec
from .source import SourceNode
from .target import PLAIN, Slots, assign, merge

__all__ = ["Built", "EngineResult", "MappingEngine", "TraceEntry", "safe_code"]

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
    """One resource built from a message."""

    name: str
    resource_type: str
    id: str
    body: dict[str, Any]
    scope: _Scope
    location: str
    duplicates: str = "first"
    dropped: bool = False
    trace: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"


class _Scope:
    __slots__ = ("children", "parent", "resources")

    def __init__(self, parent: _Scope | None) -> None:
        self.parent = parent
        self.resources: dict[str, list[Built]] = {}
        self.children: list[_Scope] = []
        if parent is not None:
            parent.children.append(self)

    def lookup(self, name: str) -> Built | None:
        scope: _Scope | None = self
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


@dataclass(slots=True)
class EngineResult:
    resources: list[Built]
    warnings: list[str]
    trace: list[TraceEntry] | None


class _State:
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
        "warnings",
    )

    def __init__(self, concepts: ConceptMapStore, namespace: str, message_key: str, tracing: bool) -> None:
        self._concepts = concepts
        self.namespace = namespace
        self.message_key = message_key
        self.tracing = tracing
        self.warnings: list[str] = []
        self.slots: Slots = {}
        self.built: list[Built] = []
        self.deferred: list[tuple[Rule, dict[str, Any], Built, _Scope, list[tuple[str, str, str]] | None]] = []
        self.fallbacks: dict[str, int] = {}
        self.scope = _Scope(None)
        self.current: Built | None = None
        self.trace_stack: list[list[tuple[str, str, str]]] = []
        # trace entries of map outputs, between production and assignment (by object id)
        self.nested: dict[int, list[tuple[str, str, str]]] = {}

    @property
    def concepts(self) -> ConceptMapStore:
        return self._concepts

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def find(self, name: str) -> Built | None:
        return self.scope.lookup(name)


def _clone(value: Any) -> Any:
    """Copy of a JSON-like constant (rules' constants must never be shared between resources)."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


_Op = Callable[[SourceNode, dict[str, Any], "_State"], None]


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


class MappingEngine:
    """Evaluates compiled message maps; thread-safe (all per-message state is local)."""

    def __init__(self, concepts: ConceptMapStore) -> None:
        self.concepts = concepts
        self._ops: dict[int, list[_Op]] = {}
        self._keep: list[list[Rule]] = []

    def run(
        self,
        message_map: MessageMap,
        root: SourceNode,
        *,
        namespace: str,
        message_key: str,
        explain: bool = False,
    ) -> EngineResult:
        """Build every resource of ``message_map`` from ``root``.

        ``namespace`` scopes business identifiers (the sender), ``message_key`` identifies the
        message (for ids of resources without business identifiers).
        """
        state = _State(self.concepts, namespace, message_key, explain)
        self._items(message_map.items, root, state)
        self._dedupe(state)
        self._resolve_deferred(state)
        trace: list[TraceEntry] | None = None
        if explain:
            trace = [
                TraceEntry(built.reference, element, rule, source)
                for built in state.built
                if not built.dropped
                for element, rule, source in built.trace
            ]
        return EngineResult([b for b in state.built if not b.dropped], state.warnings, trace)

    # -- structure ------------------------------------------------------------------------
    def _items(self, items: list[ResourceSpec | ScopeSpec], node: SourceNode, state: _State) -> None:
        for item in items:
            if isinstance(item, ResourceSpec):
                self._resource(item, node, state)
                continue
            for child in node.select(item.path):
                if item.when is not None and not item.when(child, state):
                    continue
                outer = state.scope
                state.scope = _Scope(outer)
                try:
                    self._items(item.items, child, state)
                finally:
                    state.scope = outer

    def _resource(self, spec: ResourceSpec, scope_node: SourceNode, state: _State) -> None:
        nodes = [scope_node] if spec.from_path is None else scope_node.select(spec.from_path)
        for node in nodes:
            if spec.when is not None and not spec.when(node, state):
                continue
            body: dict[str, Any] = {"resourceType": spec.resource_type, "id": ""}
            built = Built(
                spec.name,
                spec.resource_type,
                "",
                body,
                state.scope,
                node.location if state.tracing else "",
                spec.duplicates,
            )
            built.id = body["id"] = self._identity(spec, node, state)
            state.current = built
            state.trace_stack = [built.trace]
            self._rules(spec.rules, node, body, state)
            state.current = None
            if len(body) <= 2:
                state.warn(f"{spec.resource_type} from {node.location}: no element could be mapped; left out")
                continue
            state.scope.resources.setdefault(spec.name, []).append(built)
            state.built.append(built)

    def _identity(self, spec: ResourceSpec, node: SourceNode, state: _State) -> str:
        for alt in spec.identity:
            bases: list[SourceNode] = [node]
            if alt.within is not None:
                bases = list(node.select(alt.within))
                if alt.filter is not None:
                    bases = [b for b in bases if alt.filter(b, state)]
            for base in bases:
                parts: list[str] = []
                for key in alt.keys:
                    if key.resource:
                        other = state.scope.lookup(key.resource)
                        value = other.id if other is not None else None
                    elif key.constant:
                        value = key.constant
                    else:
                        value = base.value(key.path)
                    if not value or not value.strip():
                        if key.optional:
                            parts.append("")
                            continue
                        break
                    parts.append(value.strip())
                else:
                    valued = any(part for key, part in zip(alt.keys, parts, strict=True) if not key.resource)
                    if not valued:
                        continue
                    namespace = "global" if alt.namespace == "global" else state.namespace
                    return make_id(namespace, spec.resource_type, parts)
        if not spec.message_identity:
            state.warn(
                f"{spec.resource_type} from {node.location}: no business identifier; id derived from the message"
            )
        count = state.fallbacks.get(spec.name, 0) + 1
        state.fallbacks[spec.name] = count
        return make_id(state.namespace, spec.resource_type, ("message", state.message_key, spec.name, str(count)))

    # -- rules ------------------------------------------------------------------------------
    def _rules(self, rules: list[Rule], node: SourceNode, obj: dict[str, Any], state: _State) -> None:
        if state.tracing:
            for rule in rules:
                self._rule(rule, node, obj, state)
            return
        ops = self._ops.get(id(rules))
        if ops is None:
            ops = self._ops[id(rules)] = [self._compile(rule) for rule in rules]
            self._keep.append(rules)  # the id stays valid while the ops are cached
        for op in ops:
            op(node, obj, state)

    def _compile(self, rule: Rule) -> _Op:
        """A closure doing exactly what :meth:`_rule` does for this rule, without the dispatch.

        Only the common forms are specialised (a value copied to one element, a constant, a map
        applied per node); everything else, and every rule while tracing, runs through ``_rule``.
        """
        when = rule.when
        target = rule.target
        key = target[0].name if target is not None and len(target) == 1 and target[0].mode == PLAIN else None
        simple = rule.filter is None and not rule.vocabulary and not rule.required and rule.default is None
        path = rule.source
        default = rule.default
        vocabulary = bool(rule.vocabulary)
        if (
            rule.kind == SOURCE
            and target is not None
            and rule.filter is None
            and not rule.required
            and rule.repeats == FIRST
            and rule.map is None
            and rule.inline is None
        ):
            steps = target
            transform = rule.transform

            def copy_value(node: SourceNode, obj: dict[str, Any], state: _State) -> None:
                if when is not None and not when(node, state):
                    return
                if transform is None:
                    value: Any = node.value(path)
                else:
                    value = None
                    for child in node.select(path):
                        value = self._produce(rule, child, state)
                        if not _empty(value):
                            break
                        value = None
                if value is not None and vocabulary:
                    value = self._vocabulary(rule, value, node, state)
                if value is None:
                    if default is None:
                        return
                    value = _clone(default) if isinstance(default, dict | list) else default
                if key is not None:
                    obj[key] = value
                else:
                    assign(obj, steps, value, state.slots)

            return copy_value
        if rule.kind == CONSTANT and target is not None:
            constant = rule.constant
            mutable = isinstance(constant, dict | list)
            steps = target

            def set_constant(node: SourceNode, obj: dict[str, Any], state: _State) -> None:
                if when is None or when(node, state):
                    value = _clone(constant) if mutable else constant
                    if key is not None:
                        obj[key] = value
                    else:
                        assign(obj, steps, value, state.slots)

            return set_constant
        rules = rule.map.rules if rule.map is not None else rule.inline
        if rules is not None and simple and rule.transform is None and rule.repeats in (FIRST, ALL):
            first = rule.repeats == FIRST
            map_steps = target

            def apply_map(node: SourceNode, obj: dict[str, Any], state: _State) -> None:
                if when is not None and not when(node, state):
                    return
                for child in node.select(path) if rule.kind == SOURCE else (node,):
                    out: dict[str, Any] = {}
                    self._rules(rules, child, out, state)
                    if not out:
                        continue
                    if map_steps is None:
                        merge(obj, out)
                    else:
                        assign(obj, map_steps, out, state.slots)
                    if first:
                        return

            return apply_map

        def generic(node: SourceNode, obj: dict[str, Any], state: _State) -> None:
            self._rule(rule, node, obj, state)

        return generic

    def _rule(self, rule: Rule, node: SourceNode, obj: dict[str, Any], state: _State) -> None:
        if rule.when is not None and not rule.when(node, state):
            return
        kind = rule.kind
        if kind == REF or kind == REFS:
            self._reference(rule, obj, state)
            return
        sources: list[str] | None = [] if state.tracing else None
        if kind == CONSTANT:
            constant = rule.constant
            values: list[Any] = [_clone(constant) if isinstance(constant, dict | list) else constant]
            if sources is not None:
                sources.append("constant")
        elif kind == SELF:
            value = self._produce(rule, node, state)
            values = [] if _empty(value) else [value]
            if sources is not None:
                sources.append(node.location)
        elif (
            rule.map is None
            and rule.inline is None
            and rule.transform is None
            and rule.filter is None
            and rule.repeats == FIRST
        ):
            value = node.value(rule.source)
            values = [] if value is None else [value]
            if sources is not None and values:
                selected = node.select(rule.source)
                sources.append(selected[0].location if selected else rule.source_text)
        else:
            values = []
            selected = node.select(rule.source)
            if rule.filter is not None:
                selected = [n for n in selected if rule.filter(n, state)]
            for child in selected:
                value = self._produce(rule, child, state)
                if not _empty(value):
                    values.append(value)
                    if sources is not None:
                        sources.append(child.location)
                    if rule.repeats == FIRST:
                        break
            if rule.repeats == JOIN and values:
                values = ["\n".join(str(v) for v in values)]
                if sources is not None:
                    sources[:] = [", ".join(sources)]
        if rule.vocabulary and values:
            values = [self._vocabulary(rule, v, node, state) for v in values]
            values = [v for v in values if v is not None]
        if not values:
            if rule.default is not None:
                default = rule.default
                values = [_clone(default) if isinstance(default, dict | list) else default]
                if sources is not None:
                    sources[:] = ["default"]
            elif rule.required:
                raise MappingError(
                    f"required element {rule.source_text or rule.target_text} is empty ({rule.where})",
                    location=_location(node, rule),
                    code="required",
                )
            else:
                return
        self._write(rule, values, obj, state, sources)

    def _write(
        self, rule: Rule, values: list[Any], obj: dict[str, Any], state: _State, sources: list[str] | None
    ) -> None:
        for index, value in enumerate(values):
            if rule.target is None:
                if isinstance(value, dict):
                    merge(obj, value)
                    if sources is not None:
                        self._trace_nested(state, value, "", rule, sources, index)
                continue
            path = assign(obj, rule.target, value, state.slots, sources is not None)
            if sources is not None:
                self._trace_nested(state, value, path, rule, sources, index)

    def _trace_nested(self, state: _State, value: Any, path: str, rule: Rule, sources: list[str], index: int) -> None:
        trace = state.trace_stack[-1]
        source = sources[index] if index < len(sources) else (sources[-1] if sources else "")
        nested = state.nested.pop(id(value), None) if isinstance(value, dict) else None
        if nested:
            for element, inner_rule, inner_source in nested:
                full = f"{path}.{element}" if path and element else (path or element)
                trace.append((full, inner_rule, inner_source))
        else:
            trace.append((path, rule.where, source))

    def _produce(self, rule: Rule, node: SourceNode, state: _State) -> Any:
        rules = rule.map.rules if rule.map is not None else rule.inline
        if rules is not None:
            out: dict[str, Any] = {}
            if state.tracing:
                state.trace_stack.append([])
                try:
                    self._rules(rules, node, out, state)
                finally:
                    nested = state.trace_stack.pop()
                if out:
                    state.nested[id(out)] = nested
            else:
                self._rules(rules, node, out, state)
            return out
        if rule.transform is not None:
            try:
                return rule.transform(node, state, rule.args)
            except MappingError:
                raise
            except Exception as exc:  # noqa: BLE001 - a transform bug must not crash the pipeline
                raise MappingError(
                    f"transform {rule.transform_name} failed ({exc.__class__.__name__}) at {rule.where}",
                    location=node.location,
                    code="data_type",
                ) from None
        return node.value(None)

    def _vocabulary(self, rule: Rule, value: Any, node: SourceNode, state: _State) -> Any:
        if not isinstance(value, str):
            return value
        code = value.strip()
        table = self.concepts.get(rule.vocabulary)
        if table is None:
            return None
        lookup = table.lookup(code)
        coding = lookup.coding
        if not lookup.mapped:
            where = _location(node, rule)
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

    # -- references ---------------------------------------------------------------------------
    def _reference(self, rule: Rule, obj: dict[str, Any], state: _State) -> None:
        built = state.current
        if built is None:
            return
        trace = state.trace_stack[-1] if state.tracing else None
        if rule.kind == REF:
            target = state.scope.lookup(rule.ref)
            if target is not None:
                path = assign(obj, rule.target or (), {"reference": target.reference}, state.slots, trace is not None)
                if trace is not None:
                    trace.append((path, rule.where, f"ref {rule.ref}"))
                return
        state.deferred.append((rule, obj, built, state.scope, trace))

    def _resolve_deferred(self, state: _State) -> None:
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

    def _dedupe(self, state: _State) -> None:
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


def _location(node: SourceNode, rule: Rule) -> str:
    if rule.source is None:
        return node.location
    try:
        selected = node.select(rule.source)
    except Exception:  # noqa: BLE001 - only for a message text
        selected = []
    return selected[0].location if selected else f"{node.location} {rule.source_text}"
