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

from dataclasses import dataclass
from typing import Any

from hub.errors import MappingError

from .conceptmap import ConceptMapStore
from .identity import make_id
from .model import CONSTANT, FIRST, JOIN, REF, REFS, SELF, MessageMap, ResourceSpec, Rule, ScopeSpec
from .plan import PlanCompiler
from .runtime import (
    Built,
    Scope,
    State,
    TraceEntry,
    clone,
    dedupe,
    empty,
    location,
    release,
    resolve_deferred,
    safe_code,
    vocabulary,
)
from .source import SourceNode
from .target import assign, merge

__all__ = ["Built", "EngineResult", "MappingEngine", "TraceEntry", "safe_code"]


@dataclass(slots=True)
class EngineResult:
    resources: list[Built]
    warnings: list[str]
    trace: list[TraceEntry] | None


class MappingEngine:
    """Evaluates message maps; thread-safe (all per-message state is local; compiled plans and
    memoised map outputs are shared and only ever replaced whole).

    Every run except ``explain`` goes through compiled plans (:mod:`.plan`); ``explain`` runs the
    interpreter below, which records for each element the rule and source behind it. Both build
    the same resources: the interpreter is the reference meaning of a mapping file.
    """

    def __init__(self, concepts: ConceptMapStore) -> None:
        self.concepts = concepts
        self._plans = PlanCompiler(concepts)

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
        state = State(self.concepts, namespace, message_key, explain)
        if explain:
            self._items(message_map.items, root, state)
        else:
            self._plans.plan(message_map).run(root, state)
        dedupe(state)
        resolve_deferred(state)
        release(state)
        trace: list[TraceEntry] | None = None
        if explain:
            trace = [
                TraceEntry(built.reference, element, rule, source)
                for built in state.built
                if not built.dropped
                for element, rule, source in built.trace
            ]
        return EngineResult([b for b in state.built if not b.dropped], state.warnings, trace)

    # -- the tracing interpreter ----------------------------------------------------------------
    def _items(self, items: list[ResourceSpec | ScopeSpec], node: SourceNode, state: State) -> None:
        for item in items:
            if isinstance(item, ResourceSpec):
                self._resource(item, node, state)
                continue
            for child in node.select(item.path):
                if item.when is not None and not item.when(child, state):
                    continue
                outer = state.scope
                state.scope = Scope(outer)
                try:
                    self._items(item.items, child, state)
                finally:
                    state.scope = outer

    def _resource(self, spec: ResourceSpec, scope_node: SourceNode, state: State) -> None:
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
                node.location,
                spec.duplicates,
                spec.write,
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

    def _identity(self, spec: ResourceSpec, node: SourceNode, state: State) -> str:
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

    def _rules(self, rules: list[Rule], node: SourceNode, obj: dict[str, Any], state: State) -> None:
        for rule in rules:
            self._rule(rule, node, obj, state)

    def _rule(self, rule: Rule, node: SourceNode, obj: dict[str, Any], state: State) -> None:
        if rule.when is not None and not rule.when(node, state):
            return
        kind = rule.kind
        if kind == REF or kind == REFS:
            self._reference(rule, obj, state)
            return
        sources: list[str] = []
        if kind == CONSTANT:
            constant = rule.constant
            values: list[Any] = [clone(constant) if isinstance(constant, dict | list) else constant]
            sources.append("constant")
        elif kind == SELF:
            value = self._produce(rule, node, state)
            values = [] if empty(value) else [value]
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
            if values:
                selected = node.select(rule.source)
                sources.append(selected[0].location if selected else rule.source_text)
        else:
            values = []
            selected = node.select(rule.source)
            if rule.filter is not None:
                selected = [n for n in selected if rule.filter(n, state)]
            for child in selected:
                value = self._produce(rule, child, state)
                if not empty(value):
                    values.append(value)
                    sources.append(child.location)
                    if rule.repeats == FIRST:
                        break
            if rule.repeats == JOIN and values:
                values = ["\n".join(str(v) for v in values)]
                sources[:] = [", ".join(sources)]
        if rule.vocabulary and values:
            values = [vocabulary(self.concepts, rule, v, node, state) for v in values]
            values = [v for v in values if v is not None]
        if not values:
            if rule.default is not None:
                default = rule.default
                values = [clone(default) if isinstance(default, dict | list) else default]
                sources[:] = ["default"]
            elif rule.required:
                raise MappingError(
                    f"required element {rule.source_text or rule.target_text} is empty ({rule.where})",
                    location=location(node, rule),
                    code="required",
                )
            else:
                return
        self._write(rule, values, obj, state, sources)

    def _write(self, rule: Rule, values: list[Any], obj: dict[str, Any], state: State, sources: list[str]) -> None:
        for index, value in enumerate(values):
            if rule.target is None:
                if isinstance(value, dict):
                    merge(obj, value)
                    self._trace_nested(state, value, "", rule, sources, index)
                continue
            path = assign(obj, rule.target, value, state.slots, True)
            self._trace_nested(state, value, path, rule, sources, index)

    def _trace_nested(self, state: State, value: Any, path: str, rule: Rule, sources: list[str], index: int) -> None:
        trace = state.trace_stack[-1]
        source = sources[index] if index < len(sources) else (sources[-1] if sources else "")
        nested = state.nested.pop(id(value), None) if isinstance(value, dict) else None
        if nested:
            for element, inner_rule, inner_source in nested:
                full = f"{path}.{element}" if path and element else (path or element)
                trace.append((full, inner_rule, inner_source))
        else:
            trace.append((path, rule.where, source))

    def _produce(self, rule: Rule, node: SourceNode, state: State) -> Any:
        rules = rule.map.rules if rule.map is not None else rule.inline
        if rules is not None:
            out: dict[str, Any] = {}
            state.trace_stack.append([])
            try:
                self._rules(rules, node, out, state)
            finally:
                nested = state.trace_stack.pop()
            if out:
                state.nested[id(out)] = nested
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

    def _reference(self, rule: Rule, obj: dict[str, Any], state: State) -> None:
        built = state.current
        if built is None:
            return
        trace = state.trace_stack[-1]
        if rule.kind == REF:
            target = state.scope.lookup(rule.ref)
            if target is not None:
                path = assign(obj, rule.target or (), {"reference": target.reference}, state.slots, True)
                trace.append((path, rule.where, f"ref {rule.ref}"))
                return
        state.deferred.append((rule, obj, built, state.scope, trace))
