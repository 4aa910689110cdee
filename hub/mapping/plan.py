"""Compiled message maps: the engine's fast path (every run except ``--explain``).

Each list of rules (a message map's resource, a segment or datatype map, inline ``rules:``) is
compiled once, on first use, into Python code: one block per rule, in file order, with the
rule's paths, target writer, vocabulary and constants bound as names - no rule metadata looked
up, no path parsed, no per-rule call or exception scaffolding at run time. The code does what
the tracing interpreter in :mod:`.engine` does for the same rules (that interpreter is the
reference meaning of a mapping file; tests compare the two on every corpus message), with
three optimisations that cannot change a result:

* **One read for a run of conditions on the same path.** Consecutive rules guarded by
  ``{path: P, in | not_in | equals: …}`` on the same ``P`` (the OBX map's ten value-type rules
  on OBX-2) read ``P`` once. Reading a source path has no effect but marking the field
  consumed, which the first read does.
* **Memoised datatype maps.** A map whose rules only read inside the value they are applied to
  (paths that are ``value_relative``, functions that are ``value_pure``, no ``ref``/``built``)
  yields the same output for the same element text: the output is kept, keyed by the node's
  ``memo_key()`` (HL7 v2: the raw text of the field repetition or component plus the
  delimiters), and copied on the next hit - unless its evaluation warned, then it is always
  evaluated (warnings name the field they came from). Slot bookkeeping (``coding[1]``) made by
  the map is replayed onto the copy. Maps whose values rarely repeat stop being memoised.
  Adapters opt in; a node without ``memo_key`` is never memoised.
* **A map merged first is applied in place** (``{map: OBX-Observation}`` as a resource's first
  rule) instead of being built apart and merged, where that leaves the same object (see
  :meth:`PlanCompiler._direct_ok`).
"""

from __future__ import annotations

import marshal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from hub.errors import MappingError

from .conceptmap import ConceptMapStore
from .identity import make_id
from .model import (
    ALL,
    CONSTANT,
    FIRST,
    JOIN,
    REF,
    REFS,
    SELF,
    SOURCE,
    Condition,
    MessageMap,
    ResourceSpec,
    Rule,
    ScopeSpec,
)
from .runtime import Built, Scope, State, clone, location, vocabulary
from .source import NULL, VALUED, SourceNode, is_value_pure
from .target import PLAIN, SLOT, compile_target, merge

__all__ = ["MessagePlan", "PlanCompiler"]

Test = Callable[[Any, State], bool]

#: Outputs kept per memoised map (the memo is cleared when full: a bound, not an LRU).
MEMO_SIZE = 4096
#: A map whose outputs were looked up this often and found less than a quarter of the time
#: is no longer memoised (counted per engine; cheap to keep evaluating).
MEMO_PROBATION = 64
_SWITCH_KINDS = frozenset({"equals", "in", "not_in"})


def _norm(value: Any) -> str:
    return "" if value is None else str(value).strip().upper()


# -- conditions -----------------------------------------------------------------------------------
def compile_condition(cond: Condition) -> Test:
    """A closure with the meaning of ``Condition.__call__``."""
    kind = cond.kind
    path = cond.path
    if kind == "valued":
        return lambda node, state: node.presence(path) == VALUED
    if kind == "not_valued":
        return lambda node, state: node.presence(path) != VALUED
    if kind == "null":
        return lambda node, state: node.presence(path) == NULL
    if kind in ("equals", "in", "not_in"):
        accept = _acceptor(cond)

        def test(node: Any, state: State) -> bool:
            value = node.value(path)
            return accept("" if value is None else str(value).strip().upper())

        return test
    if kind == "matches":
        pattern = cond.pattern
        if pattern is None:
            return lambda node, state: False
        search = pattern.search
        return lambda node, state: bool(search(node.value(path) or ""))
    if kind == "built":
        name = cond.want
        return lambda node, state: bool(state.scope.lookup(name))
    parts = tuple(compile_condition(part) for part in cond.parts)
    if kind == "not":
        inner = parts[0]
        return lambda node, state: not inner(node, state)
    if kind == "all":
        if len(parts) == 2:
            first, second = parts
            return lambda node, state: first(node, state) and second(node, state)
        return lambda node, state: all(part(node, state) for part in parts)
    if len(parts) == 2:  # any
        first, second = parts
        return lambda node, state: first(node, state) or second(node, state)
    return lambda node, state: any(part(node, state) for part in parts)


def _acceptor(cond: Condition) -> Callable[[str], bool]:
    """For a normalised value: does a path condition (equals / in / not_in) hold?"""
    if cond.kind == "equals":
        return cond.want.__eq__
    if cond.kind == "in":
        return cond.values.__contains__
    values = cond.values
    return lambda value: value not in values


def _value_relative(path: Any) -> bool:
    return path is not None and bool(getattr(path, "value_relative", False))


# -- memoised map outputs ------------------------------------------------------------------------
class _Memo:
    """One memoised output: its marshalled body and the slots its evaluation left (path from the
    output root to the object, list name, label, index). Once hot, the copy is made by
    generated code instead (a literal, about three times faster than unmarshalling)."""

    __slots__ = ("blob", "hits", "make", "replay")

    def __init__(self, blob: bytes, replay: tuple[tuple[tuple[Any, ...], str, str, int], ...]) -> None:
        self.blob = blob
        self.replay = replay
        self.hits = 0
        self.make: Callable[[Any], dict[str, Any]] | None = None

    def instantiate(self, state: State) -> dict[str, Any]:
        make = self.make
        if make is not None:
            return make(state.slots)
        self.hits += 1
        if self.hits == _LITERAL_AFTER:
            self.make = _maker(marshal.loads(self.blob), self.replay)  # noqa: S302 - our own bytes
        out: dict[str, Any] = marshal.loads(self.blob)  # noqa: S302 - our own bytes, never input
        slots = state.slots
        for path, name, label, index in self.replay:
            obj: Any = out
            for step in path:
                obj = obj[step]
            slots[(id(obj), name, label)] = (index, obj)
        return out


_LITERAL_AFTER = 256  # compiling costs about as much as 300 unmarshallings
_LITERAL_TYPES = (str, int, bool, type(None))


def _literal_safe(value: Any) -> bool:
    """Whether ``repr(value)`` is a Python literal that evaluates to an equal, same-typed value."""
    kind = type(value)
    if kind is dict:
        return all(type(k) is str and _literal_safe(v) for k, v in value.items())
    if kind is list:
        return all(_literal_safe(v) for v in value)
    if kind is float:
        return value == value and value not in (float("inf"), float("-inf"))
    return kind in _LITERAL_TYPES


def _maker(template: dict[str, Any], replay: tuple[tuple[tuple[Any, ...], str, str, int], ...]) -> Any:
    """A function building a fresh copy of ``template`` and replaying its slots, or None."""
    if not _literal_safe(template):
        return None
    lines = ["def make(slots):", f"    out = {template!r}"]
    for path, name, label, index in replay:
        lines.append(f"    obj = out{''.join(f'[{step!r}]' for step in path)}")
        lines.append(f"    slots[(id(obj), {name!r}, {label!r})] = ({index!r}, obj)")
    lines.append("    return out")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<memoised map output>", "exec"), namespace)  # noqa: S102 - from repr() of our data
    return namespace["make"]


def _paths_of_objects(value: Any, path: tuple[Any, ...], out: dict[int, tuple[tuple[Any, ...], Any]]) -> None:
    if type(value) is dict:
        out[id(value)] = (path, value)
        for key, item in value.items():
            _paths_of_objects(item, (*path, key), out)
    elif type(value) is list:
        for index, item in enumerate(value):
            _paths_of_objects(item, (*path, index), out)


def _record(out: dict[str, Any], state: State, slot_names: frozenset[tuple[str, str]]) -> _Memo | None:
    """A memo of ``out``, with the slots its evaluation left on objects inside it: only slots
    named by the map's targets (``slot_names``) can be there."""
    try:
        blob = marshal.dumps(out)
    except ValueError:  # a value marshal cannot write: never memoised
        return None
    replay = []
    if slot_names:
        objects: dict[int, tuple[tuple[Any, ...], Any]] = {}
        _paths_of_objects(out, (), objects)
        slots = state.slots
        for obj_id, (path, obj) in objects.items():
            for name, label in slot_names:
                entry = slots.get((obj_id, name, label))
                if entry is not None and entry[1] is obj:
                    replay.append((path, name, label, entry[0]))
    return _Memo(blob, tuple(replay))


def _slot_names(rules: list[Rule], seen: set[int] | None = None) -> frozenset[tuple[str, str]]:
    """Every ``name[label]`` step in the targets of these rules and the maps they apply."""
    seen = set() if seen is None else seen
    if id(rules) in seen:
        return frozenset()
    seen.add(id(rules))
    names: set[tuple[str, str]] = set()
    for rule in rules:
        names.update((step.name, step.label) for step in rule.target or () if step.mode == SLOT)
        nested = rule.map.rules if rule.map is not None else rule.inline
        if nested is not None:
            names |= _slot_names(nested, seen)
    return frozenset(names)


class _Code:
    """Lines of generated code and the objects they name."""

    __slots__ = ("lines", "names")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {}

    def add(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def name(self, prefix: str, value: Any) -> str:
        name = f"{prefix}{len(self.names)}"
        self.names[name] = value
        return name


def _accept_code(code: _Code, cond: Condition, value: str) -> str:
    """An expression: does a path condition (equals / in / not_in) hold for normalised ``value``?"""
    if cond.kind == "equals":
        return f"{value} == {code.name('E', cond.want)}"
    operator = "in" if cond.kind == "in" else "not in"
    return f"{value} {operator} {code.name('S', cond.values)}"


def _constant_code(code: _Code, prefix: str, value: Any) -> str:
    """An expression for a rule's constant or default: a fresh copy each time for an object or
    list (a literal when ``repr`` round-trips it), the value itself otherwise."""
    if not isinstance(value, dict | list):
        return code.name(prefix, value)
    copy = clone(value)
    if _literal_safe(copy):
        return repr(copy)
    return f"{code.name('CLONE', clone)}({code.name(prefix, value)})"


def _empty_code(rule: Rule, value: str) -> str:
    """An expression: is a product empty (None, "", {} or [])? Map outputs are always objects."""
    if rule.map is not None or rule.inline is not None:
        return f"not {value}"
    return f'{value} is None or {value} == "" or {value} == {{}} or {value} == []'


# -- rule lists ---------------------------------------------------------------------------------
class _RuleList:
    """A compiled list of rules (a segment/datatype map or inline ``rules:``): ``run`` applies
    them to an object, ``produce`` builds the object a map yields (both generated code)."""

    __slots__ = ("hits", "memo", "memoising", "misses", "produce", "pure", "rules", "run", "slot_names", "source")

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.pure = False
        self.memo: dict[Any, _Memo | None] = {}
        self.memoising = True
        self.hits = 0
        self.misses = 0
        self.source = ""  # the generated code, for debugging
        self.slot_names = _slot_names(rules)
        # until generated (a map that applies itself is only caught by the repository's check)
        self.run: Callable[[Any, dict[str, Any], State], None] = self._late_run
        self.produce: Callable[[Any, State], dict[str, Any]] = self._late_produce

    def _late_run(self, node: Any, obj: dict[str, Any], state: State) -> None:
        self.run(node, obj, state)

    def _late_produce(self, node: Any, state: State) -> dict[str, Any]:
        return self.produce(node, state)

    def produce_memo(self, node: Any, state: State) -> dict[str, Any]:
        memo_key = getattr(node, "memo_key", None)
        key = memo_key() if memo_key is not None else None
        if key is None or not self.memoising:
            return self.produce(node, state)
        memo = self.memo
        hit = memo.get(key)
        if hit is not None:
            self.hits += 1
            return hit.instantiate(state)
        calls = state.warn_calls
        out = self.produce(node, state)
        if state.warn_calls == calls:
            self.misses += 1
            if self.misses >= MEMO_PROBATION and self.hits * 3 < self.misses:
                self.memoising = False  # values of this map rarely repeat (order numbers): stop keeping them
                memo.clear()
                return out
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = _record(out, state, self.slot_names)
        return out


class PlanCompiler:
    """Compiles message maps into :class:`MessagePlan` s; one per engine (holds the memos)."""

    def __init__(self, concepts: ConceptMapStore) -> None:
        self.concepts = concepts
        self._lists: dict[int, _RuleList] = {}
        self._plans: dict[int, tuple[MessageMap, MessagePlan]] = {}
        self._visiting: set[int] = set()  # rule lists whose direct application is being decided
        self._lock = threading.RLock()

    def plan(self, message_map: MessageMap) -> MessagePlan:
        found = self._plans.get(id(message_map))
        if found is not None and found[0] is message_map:
            return found[1]
        with self._lock:  # one compilation at a time: rule lists are registered before generated
            found = self._plans.get(id(message_map))
            if found is not None and found[0] is message_map:
                return found[1]
            plan = MessagePlan(message_map, self)
            self._plans[id(message_map)] = (message_map, plan)
            return plan

    # -- rule lists ---------------------------------------------------------------------------
    def rule_list(self, rules: list[Rule]) -> _RuleList:
        found = self._lists.get(id(rules))
        if found is not None and found.rules is rules:
            return found
        compiled = _RuleList(rules)
        self._lists[id(rules)] = compiled  # before compiling: a map may (wrongly) apply itself
        compiled.pure = self._pure(rules, set())
        self._generate(rules, compiled)
        return compiled

    def _pure(self, rules: list[Rule], visiting: set[int]) -> bool:
        """Whether these rules read nothing but the value they are applied to."""
        if id(rules) in visiting:
            return False
        visiting.add(id(rules))
        try:
            for rule in rules:
                if rule.kind in (REF, REFS):
                    return False
                if rule.kind == SOURCE and not _value_relative(rule.source):
                    return False
                if rule.transform is not None and not is_value_pure(rule.transform):
                    return False
                for cond in (rule.when, rule.filter):
                    if cond is None:
                        continue
                    for part in cond.walk():
                        if part.kind == "built" or (part.path is not None and not _value_relative(part.path)):
                            return False
                nested = rule.map.rules if rule.map is not None else rule.inline
                if nested is not None and not self._pure(nested, visiting):
                    return False
            return True
        finally:
            visiting.discard(id(rules))

    # -- code generation ------------------------------------------------------------------------
    def _generate(self, rules: list[Rule], compiled: _RuleList) -> None:
        """Generate ``run(node, obj, state)`` and ``produce(node, state)`` for a rule list: one
        block per rule, in file order, with what each rule needs bound as module-level names."""
        code = _Code()
        index = 0
        if rules and self._direct_ok(rules):
            self._emit_direct(code, rules[0], 1)
            index = 1
        while index < len(rules):
            rule = rules[index]
            when = rule.when
            if when is not None and when.kind in _SWITCH_KINDS:
                group = [rule]
                while (
                    index + len(group) < len(rules)
                    and (nxt := rules[index + len(group)].when) is not None
                    and nxt.kind in _SWITCH_KINDS
                    and nxt.path == when.path
                ):
                    group.append(rules[index + len(group)])
                if len(group) > 1:
                    self._emit_switch(code, when.path, group, 1)
                    index += len(group)
                    continue
            self._emit_rule(code, rule, 1)
            index += 1
        blocks = code.lines or ["    pass"]
        lines = [
            "def run(node, obj, state):",
            "    slots = state.slots",
            *blocks,
            "def produce(node, state):",
            "    obj = {}",
            "    slots = state.slots",
            *blocks,
            "    return obj",
        ]
        source = "\n".join(lines)
        where = rules[0].where.rpartition(":")[0] if rules else "rules"
        code.names.update(MappingError=MappingError, merge=merge, isinstance=isinstance, dict=dict, str=str)
        exec(compile(source, f"<rules of {where}>", "exec"), code.names)  # noqa: S102 - generated from the maps
        compiled.source = source
        compiled.run = code.names["run"]
        compiled.produce = code.names["produce"]

    def _emit_rule(self, code: _Code, rule: Rule, indent: int) -> None:
        when = rule.when
        if when is None:
            self._emit_body(code, rule, indent)
            return
        expression = self._emit_condition(code, when, indent)
        code.add(indent, f"if {expression}:")
        self._emit_body(code, rule, indent + 1)

    def _emit_condition(self, code: _Code, cond: Condition, indent: int) -> str:
        """Lines computing a condition (added at ``indent``) and the expression testing it."""
        kind = cond.kind
        if kind in ("valued", "not_valued", "null"):
            path = code.name("P", cond.path)
            expected = NULL if kind == "null" else VALUED
            return f"node.presence({path}) {'!=' if kind == 'not_valued' else '=='} {expected!r}"
        if kind in _SWITCH_KINDS:
            path = code.name("P", cond.path)
            code.add(indent, f"r = node.value({path})")
            return _accept_code(code, cond, '("" if r is None else str(r).strip().upper())')
        test = code.name("T", compile_condition(cond))
        return f"{test}(node, state)"

    def _emit_switch(self, code: _Code, path: Any, rules: list[Rule], indent: int) -> None:
        name = code.name("P", path)
        code.add(indent, f"r = node.value({name})")
        code.add(indent, 'k = "" if r is None else str(r).strip().upper()')
        for rule in rules:
            assert rule.when is not None
            code.add(indent, f"if {_accept_code(code, rule.when, 'k')}:")
            self._emit_body(code, rule, indent + 1)

    def _emit_direct(self, code: _Code, rule: Rule, indent: int) -> None:
        nested = rule.map.rules if rule.map is not None else rule.inline
        assert nested is not None
        run = code.name("R", self.rule_list(nested).run)
        if rule.when is not None:
            expression = self._emit_condition(code, rule.when, indent)
            code.add(indent, f"if {expression}:")
            indent += 1
        code.add(indent, f"{run}(node, obj, state)")

    def _emit_body(self, code: _Code, rule: Rule, indent: int) -> None:
        """The rule without its ``when``: inline code for the common forms, else its closure."""
        kind = rule.kind
        simple = rule.map is None and rule.inline is None and rule.transform is None
        plain = rule.vocabulary == "" and rule.default is None and not rule.required
        add = code.add
        if kind == CONSTANT:
            self._emit_write(code, rule, indent, _constant_code(code, "C", rule.constant))
            return
        if kind == SELF:
            self._emit_product(code, rule, indent, "node")
            add(indent, f"if {_empty_code(rule, 'v')}:")
            add(indent + 1, "v = None")
            if rule.vocabulary:
                add(indent, "else:")
                add(indent + 1, f"v = {code.name('V', self._vocabulary(rule))}(v, node, state)")
            self._emit_finish(code, rule, indent)
            return
        if kind == SOURCE and rule.filter is None and rule.repeats == FIRST and (simple or not rule.vocabulary):
            path = code.name("P", rule.source)
            if simple:
                add(indent, f"v = node.value({path})")
                if rule.vocabulary:
                    add(indent, "if v is not None:")
                    add(indent + 1, f"v = {code.name('V', self._vocabulary(rule))}(v, node, state)")
            else:
                add(indent, "v = None")
                add(indent, f"for c in node.select({path}):")
                self._emit_product(code, rule, indent + 1, "c")
                add(indent + 1, f"if not ({_empty_code(rule, 'v')}):")
                add(indent + 2, "break")
                add(indent + 1, "v = None")
            self._emit_finish(code, rule, indent)
            return
        if kind == SOURCE and rule.filter is None and rule.repeats == ALL and plain and not simple:
            path = code.name("P", rule.source)
            add(indent, f"for c in node.select({path}):")
            self._emit_product(code, rule, indent + 1, "c")
            add(indent + 1, f"if not ({_empty_code(rule, 'v')}):")
            self._emit_write(code, rule, indent + 2, "v")
            return
        if kind == SOURCE:
            self._emit_source(code, rule, indent)
            return
        if kind in (REF, REFS):
            self._emit_reference(code, rule, indent)
            return
        raise ValueError(f"unknown rule kind {kind} at {rule.where}")

    def _emit_source(self, code: _Code, rule: Rule, indent: int) -> None:
        """Any ``source`` rule: every selected node (``where``-tested first), its product, the
        first or all or all joined, the vocabulary, then the default / required / writes."""
        add = code.add
        path = code.name("P", rule.source)
        if rule.filter is not None:
            test = code.name("T", compile_condition(rule.filter))
            add(indent, f"sel = [c for c in node.select({path}) if {test}(c, state)]")
        else:
            add(indent, f"sel = node.select({path})")
        add(indent, "vs = []")
        add(indent, "for c in sel:")
        self._emit_product(code, rule, indent + 1, "c")
        add(indent + 1, f"if not ({_empty_code(rule, 'v')}):")
        add(indent + 2, "vs.append(v)")
        if rule.repeats == FIRST:
            add(indent + 2, "break")
        if rule.repeats == JOIN:
            add(indent, "if vs:")
            add(indent + 1, 'vs = ["\\n".join([str(x) for x in vs])]')
        if rule.vocabulary:
            vocab = code.name("V", self._vocabulary(rule))
            add(indent, "if vs:")
            add(indent + 1, f"vs = [x for x in [{vocab}(x, node, state) for x in vs] if x is not None]")
        add(indent, "if not vs:")
        if rule.default is not None:
            add(indent + 1, f"vs = [{_constant_code(code, 'D', rule.default)}]")
        elif rule.required:
            add(indent + 1, f"{code.name('REQ', self._required(rule))}(node)")
        else:
            add(indent + 1, "vs = ()")
        add(indent, "for v in vs:")
        self._emit_write(code, rule, indent + 1, "v")

    def _emit_reference(self, code: _Code, rule: Rule, indent: int) -> None:
        """``ref``: the nearest resource of that name in the enclosing scopes now, else after all
        resources exist; ``refs``: every one in this scope instance, after all exist."""
        add = code.add
        add(indent, "b = state.current")
        add(indent, "if b is not None:")
        rule_name = code.name("RULE", rule)
        if rule.kind == REF:
            add(indent + 1, f"t = state.scope.lookup({code.name('N', rule.ref)})")
            add(indent + 1, "if t is None:")
            add(indent + 2, f"state.deferred.append(({rule_name}, obj, b, state.scope, None))")
            if rule.target:
                add(indent + 1, "else:")
                self._emit_write(code, rule, indent + 2, '{"reference": t.resource_type + "/" + t.id}')
        else:
            add(indent + 1, f"state.deferred.append(({rule_name}, obj, b, state.scope, None))")

    def _emit_product(self, code: _Code, rule: Rule, indent: int, node: str) -> None:
        """Lines setting ``v`` to what the rule produces from ``node`` (map, transform, value)."""
        rules = rule.map.rules if rule.map is not None else rule.inline
        if rules is not None:
            nested = self.rule_list(rules)
            produce = code.name("F", nested.produce_memo if nested.pure else nested.produce)
            code.add(indent, f"v = {produce}({node}, state)")
            return
        if rule.transform is not None:
            transform = code.name("X", rule.transform)
            args = code.name("A", rule.args)
            message = code.name("M", (f"transform {rule.transform_name} failed (", f") at {rule.where}"))
            code.add(indent, "try:")
            code.add(indent + 1, f"v = {transform}({node}, state, {args})")
            code.add(indent, "except MappingError:")
            code.add(indent + 1, "raise")
            code.add(indent, "except Exception as exc:  # a transform bug must not crash the pipeline")
            code.add(
                indent + 1,
                f"raise MappingError({message}[0] + exc.__class__.__name__ + {message}[1], "
                f'location={node}.location, code="data_type") from None',
            )
            return
        code.add(indent, f"v = {node}.value(None)")

    def _emit_finish(self, code: _Code, rule: Rule, indent: int) -> None:
        """After a product ``v`` (None: nothing): the default, a required error, or the write."""
        if rule.default is not None:
            code.add(indent, "if v is None:")
            code.add(indent + 1, f"v = {_constant_code(code, 'D', rule.default)}")
            self._emit_write(code, rule, indent, "v")
            return
        if rule.required:
            code.add(indent, "if v is None:")
            code.add(indent + 1, f"{code.name('REQ', self._required(rule))}(node)")
        code.add(indent, "if v is not None:")
        self._emit_write(code, rule, indent + 1, "v")

    def _emit_write(self, code: _Code, rule: Rule, indent: int, value: str) -> None:
        target = rule.target
        if target is None:
            code.add(indent, f"if isinstance({value}, dict):")
            code.add(indent + 1, f"merge(obj, {value})")
        elif len(target) == 1 and target[0].mode == PLAIN:
            code.add(indent, f"obj[{target[0].name!r}] = {value}")
        else:
            code.add(indent, f"{code.name('W', compile_target(target))}(obj, {value}, slots)")

    def _required(self, rule: Rule) -> Callable[[Any], None]:
        def required(node: Any) -> None:
            raise MappingError(
                f"required element {rule.source_text or rule.target_text} is empty ({rule.where})",
                location=location(node, rule),
                code="required",
            )

        return required

    def _direct_ok(self, rules: list[Rule]) -> bool:
        """Whether the first rule, a map merged into the object (``{map: OBX-Observation}``), may
        write straight into the object instead of building its output and merging it.

        The object then holds no element yet (a new resource or map output), so merging the
        output (objects merge, lists extend, scalars overwrite) leaves exactly what writing the
        same elements directly leaves - except for what is keyed on the output object itself:
        ``refs``/unresolved ``ref`` of the map (resolved later into that object) and its
        top-level ``name[label]`` slots (a later rule of this list naming the same slot would
        find the map's element instead of starting a new one). Such maps, and memoised (pure)
        ones, are merged as usual.
        """
        first = rules[0]
        nested = first.map.rules if first.map is not None else first.inline
        if (
            first.kind != SELF
            or first.target is not None
            or nested is None
            or first.transform is not None
            or first.vocabulary
            or first.default is not None
            or first.required
            or id(rules) in self._visiting
        ):
            return False
        if self.rule_list(nested).pure:
            return False
        self._visiting.add(id(rules))
        try:
            slots = self._direct_effects(nested)
        finally:
            self._visiting.discard(id(rules))
        if slots is None:
            return False
        for rule in rules[1:]:
            target = rule.target
            if target is not None and target[0].mode == SLOT and (target[0].name, target[0].label) in slots:
                return False
        return True

    def _direct_effects(self, rules: list[Rule]) -> set[tuple[str, str]] | None:
        """The top-level ``name[label]`` slots a rule list applied directly to an object keys on
        that object - its own, and those of its first rule when that is applied directly too -
        or None when it leaves a reference to resolve into it later."""
        slots: set[tuple[str, str]] = set()
        for rule in rules:
            if rule.kind in (REF, REFS):
                return None
            if rule.target is not None and rule.target[0].mode == SLOT:
                slots.add((rule.target[0].name, rule.target[0].label))
        if rules and self._direct_ok(rules):
            first = rules[0]
            inner = first.map.rules if first.map is not None else first.inline
            more = self._direct_effects(inner) if inner is not None else None
            if more is None:
                return None
            slots |= more
        return slots

    # -- one rule -----------------------------------------------------------------------------
    def _vocabulary(self, rule: Rule) -> Callable[[Any, Any, State], Any]:
        concepts = self.concepts
        name = rule.vocabulary
        mode = rule.vocab_as

        def translate(value: Any, node: Any, state: State) -> Any:
            if isinstance(value, str):
                table = concepts.get(name)
                if table is not None:
                    code = value.strip()
                    found = table.codes.get(code) or table.upper.get(code.upper())
                    if found is not None:
                        if mode == "code":
                            return found.code
                        if mode == "coding":
                            return found.as_dict()
                        return {"coding": [found.as_dict()]}
            return vocabulary(concepts, rule, value, node, state)

        return translate


# -- message structure ----------------------------------------------------------------------------
def _identity(spec: ResourceSpec) -> Callable[[Any, State], str]:
    """The id of a resource from its identity alternatives (see :mod:`.identity`), as generated
    code: for each alternative and each base node (``within``, filtered by ``where``), the keys
    in order - an empty required key tries the next base, an empty optional one counts as "" -
    and the first alternative with a business value (not only resource ids) gives the id; else
    an id derived from the message (with a warning unless ``identity: message``)."""
    code = _Code()
    add = code.add
    code.names.update(make_id=make_id)
    resource_type = code.name("RT", spec.resource_type)
    for alt in spec.identity:
        if alt.within is None:
            add(1, "for base in (node,):")
        elif alt.filter is None:
            add(1, f"for base in node.select({code.name('W', alt.within)}):")
        else:
            test = code.name("T", compile_condition(alt.filter))
            add(1, f"for base in [b for b in node.select({code.name('W', alt.within)}) if {test}(b, state)]:")
        parts: list[str] = []
        valued: list[str] = []
        for index, key in enumerate(alt.keys):
            part = f"p{index}"
            if key.resource:
                add(2, f"t = state.scope.lookup({code.name('N', key.resource)})")
                add(2, "v = t.id if t is not None else None")
            elif key.constant:
                add(2, f"v = {code.name('C', key.constant)}")
                valued.append(part)
            else:
                add(2, f"v = base.value({code.name('P', key.path)})")
                valued.append(part)
            add(2, "if not v or not v.strip():")
            add(3, f'{part} = ""' if key.optional else "continue")
            add(2, "else:")
            add(3, f"{part} = v.strip()")
            parts.append(part)
        add(2, f"if not ({' or '.join(valued) or 'False'}):")
        add(3, "continue")
        namespace = '"global"' if alt.namespace == "global" else "state.namespace"
        add(2, f"return make_id({namespace}, {resource_type}, [{', '.join(parts)}])")
    if not spec.message_identity:
        warning = code.name(
            "WARN", (f"{spec.resource_type} from ", ": no business identifier; id derived from the message")
        )
        add(1, f"state.warn({warning}[0] + node.location + {warning}[1])")
    name = code.name("NAME", spec.name)
    add(1, f"count = state.fallbacks.get({name}, 0) + 1")
    add(1, f"state.fallbacks[{name}] = count")
    add(1, f'return make_id(state.namespace, {resource_type}, ("message", state.message_key, {name}, str(count)))')
    source = "\n".join(["def identity(node, state):", *code.lines])
    exec(compile(source, f"<identity of {spec.where}>", "exec"), code.names)  # noqa: S102 - generated from the maps
    identity: Callable[[Any, State], str] = code.names["identity"]
    return identity


Item = Callable[[Any, State], None]


class MessagePlan:
    """A compiled message map: ``run(root, state)`` builds every resource into ``state``."""

    def __init__(self, message_map: MessageMap, compiler: PlanCompiler) -> None:
        self.message_map = message_map
        self._compiler = compiler
        self._items = self._compile_items(message_map.items)

    def run(self, root: SourceNode, state: State) -> None:
        for item in self._items:
            item(root, state)

    def _compile_items(self, items: list[ResourceSpec | ScopeSpec]) -> tuple[Item, ...]:
        return tuple(self._resource(item) if isinstance(item, ResourceSpec) else self._scope(item) for item in items)

    def _scope(self, spec: ScopeSpec) -> Item:
        path = spec.path
        test = compile_condition(spec.when) if spec.when is not None else None
        items = self._compile_items(spec.items)

        def scope(node: Any, state: State) -> None:
            for child in node.select(path):
                if test is not None and not test(child, state):
                    continue
                outer = state.scope
                state.scope = Scope(outer)
                try:
                    for item in items:
                        item(child, state)
                finally:
                    state.scope = outer

        return scope

    def _resource(self, spec: ResourceSpec) -> Item:
        rules = self._compiler.rule_list(spec.rules)
        identity = _identity(spec)
        test = compile_condition(spec.when) if spec.when is not None else None
        from_path = spec.from_path
        name = spec.name
        resource_type = spec.resource_type
        duplicates = spec.duplicates
        write = spec.write

        def resource(scope_node: Any, state: State) -> None:
            nodes: Sequence[Any] = (scope_node,) if from_path is None else scope_node.select(from_path)
            for node in nodes:
                if test is not None and not test(node, state):
                    continue
                body: dict[str, Any] = {"resourceType": resource_type, "id": ""}
                scope = state.scope
                built = Built(name, resource_type, "", body, scope, "", duplicates, write)
                built.id = body["id"] = identity(node, state)
                state.current = built
                rules.run(node, body, state)
                state.current = None
                if len(body) <= 2:
                    state.warn(f"{resource_type} from {node.location}: no element could be mapped; left out")
                    continue
                found = scope.resources.get(name)
                if found is None:
                    scope.resources[name] = [built]
                else:
                    found.append(built)
                state.built.append(built)

        return resource
