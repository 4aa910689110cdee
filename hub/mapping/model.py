"""Compiled mapping files: messages, maps (segment and datatype), rules, conditions, identities.

Mapping files are YAML (schema: ``mappings/schema/mapping.schema.json``); this module turns
one loaded file into frozen objects the engine evaluates, collecting :class:`Problem` s that
name file and line. Paths are compiled by the adapter's :class:`~.source.Dialect`, targets
by :mod:`.target`.

File kinds:

``message``   which resources a message structure yields: ``resources:`` entries (one resource
              per node of ``from``) and ``scope:`` blocks (repeat the nested entries for each
              group instance, e.g. each ``ORDER_OBSERVATION``).
``segment`` / ``datatype``
              reusable maps: a list of rules evaluated against a segment or a field value,
              producing an object (a resource body, or an element such as an Identifier).

Rule keys (one producer: ``source`` [+ ``map``/``rules``/``transform``], ``constant``,
``ref``, ``refs``, or ``map``/``rules`` alone on the current node):

``target``  FHIR path (see :mod:`.target`); omitted → the produced object is merged in place
``vocabulary`` / ``as``  ConceptMap id or url; output ``code`` (default), ``coding`` or
            ``codeableConcept``; unmapped codes pass through in their v2 table system and are
            reported
``when``    condition on the current node; ``where`` condition on each selected node
``default`` value when nothing was produced; ``required: true`` fails the message instead
``repeats`` ``first`` (default), ``all`` (one value per repetition/node) or ``join``
            (text joined with line breaks)

Resource entry keys besides ``name``, ``resourceType``, ``from``, ``when``, ``identity``, ``rules``:
``duplicates`` (``first`` | ``suffix``) and ``write``: ``replace`` (default: the bundle entry is
``PUT Type/id``, the message's resource replaces the stored one) or ``if_absent`` (``POST Type`` with
``ifNoneExist: _id=<id>``: written only when no resource has that id yet; delivery turns it into
``PUT Type/id`` or drops it, see :func:`hub.pipeline.delivery.prepare_transaction`). ``if_absent``
is for resources a message only needs to exist - the Patient and Encounter of an order or result,
whose demographics and visit belong to registration (ADT).

Conditions: ``{valued: P}``, ``{not_valued: P}``, ``{null: P}``, ``{path: P, equals: V}``,
``{path: P, in: [..]}``, ``{path: P, not_in: [..]}``, ``{path: P, matches: regex}``,
``{built: name}``, ``{all: [..]}``, ``{any: [..]}``, ``{not: C}``. Codes compare
case-insensitively and trimmed (v2 codes are upper case; senders are not always).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .source import NULL, VALUED, Dialect, Function, SourceNode
from .target import APPEND, PLAIN, Step, parse_target
from .yamlload import line_of

__all__ = [
    "IF_ABSENT",
    "REPLACE",
    "WRITES",
    "Condition",
    "IdentityAlt",
    "IdentityDef",
    "KeyPart",
    "MapDef",
    "MessageMap",
    "Problem",
    "ResourceSpec",
    "Rule",
    "ScopeSpec",
    "compile_file",
]

Cond = Callable[[SourceNode, Any], bool]  # kept for adapters' type hints

SOURCE, CONSTANT, REF, REFS, SELF = 1, 2, 3, 4, 5
FIRST, ALL, JOIN = "first", "all", "join"
#: ``write:`` of a resource entry: replace the stored resource (PUT), or write it only if absent.
REPLACE, IF_ABSENT = "replace", "if_absent"
WRITES = (REPLACE, IF_ABSENT)


@dataclass(frozen=True, slots=True, eq=False)
class Condition:
    """A compiled ``when:``/``where:`` condition; call it with (node, engine state).

    ``kind`` is the YAML key: ``valued``, ``not_valued``, ``null`` (presence of ``path``),
    ``equals`` (``want``), ``in`` / ``not_in`` (``values``), ``matches`` (``pattern``) - each on
    the trimmed, upper-cased value at ``path`` -, ``built`` (a resource named ``want`` exists in
    the enclosing scopes), ``all`` / ``any`` / ``not`` (of ``parts``). The engine compiles these
    further (:mod:`.plan`); this ``__call__`` is the reference meaning.
    """

    kind: str
    path: Any = None
    want: str = ""
    values: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None
    parts: tuple[Condition, ...] = ()

    def __call__(self, node: SourceNode, state: Any) -> bool:
        kind = self.kind
        if kind == "all":
            return all(c(node, state) for c in self.parts)
        if kind == "any":
            return any(c(node, state) for c in self.parts)
        if kind == "not":
            return not self.parts[0](node, state)
        if kind == "built":
            return bool(state.find(self.want))
        if kind == "valued":
            return node.presence(self.path) == VALUED
        if kind == "null":
            return node.presence(self.path) == NULL
        if kind == "not_valued":
            return node.presence(self.path) != VALUED
        if kind == "matches":
            return bool(self.pattern.search(node.value(self.path) or "")) if self.pattern else False
        value = _norm(node.value(self.path))
        if kind == "equals":
            return value == self.want
        if kind == "in":
            return value in self.values
        return value not in self.values  # not_in

    def walk(self) -> Iterator[Condition]:
        """This condition and every condition inside it."""
        yield self
        for part in self.parts:
            yield from part.walk()


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem in a mapping file; ``str()`` gives ``file:line: message``."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass(slots=True, eq=False)
class Rule:
    kind: int
    where: str  # "file:line" of the rule, for explain and errors
    target: tuple[Step, ...] | None = None
    target_text: str = ""
    source: Any = None
    source_text: str = ""
    constant: Any = None
    ref: str = ""
    map_id: str = ""
    map: MapDef | None = None
    inline: list[Rule] | None = None
    transform_name: str = ""
    transform: Function | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    vocabulary: str = ""
    vocab_as: str = "code"
    when: Condition | None = None
    filter: Condition | None = None
    default: Any = None
    repeats: str = FIRST
    required: bool = False


@dataclass(slots=True, eq=False)
class MapDef:
    id: str
    kind: str
    input: str
    output: str
    rules: list[Rule]
    file: str
    line: int = 1


@dataclass(frozen=True, slots=True)
class KeyPart:
    path: Any = None
    path_text: str = ""
    resource: str = ""
    constant: str = ""
    optional: bool = False


@dataclass(frozen=True, slots=True)
class IdentityAlt:
    keys: tuple[KeyPart, ...]
    within: Any = None
    within_text: str = ""
    filter: Condition | None = None
    namespace: str = "sender"


@dataclass(slots=True, eq=False)
class ResourceSpec:
    name: str
    resource_type: str
    where: str
    from_path: Any = None
    from_text: str = ""
    when: Condition | None = None
    rules: list[Rule] = field(default_factory=list)
    identity: list[IdentityAlt] = field(default_factory=list)
    identity_ref: str = ""
    message_identity: bool = False
    duplicates: str = "first"
    write: str = REPLACE


@dataclass(slots=True, eq=False)
class IdentityDef:
    """A reusable identity (``kind: identity`` file): alternatives evaluated on the resource node."""

    id: str
    alternatives: list[IdentityAlt]
    file: str
    line: int = 1


@dataclass(slots=True, eq=False)
class ScopeSpec:
    path: Any
    path_text: str
    where: str
    when: Condition | None = None
    items: list[ResourceSpec | ScopeSpec] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class MessageMap:
    id: str
    structures: tuple[str, ...]
    events: tuple[str, ...]
    items: list[ResourceSpec | ScopeSpec]
    file: str
    description: str = ""

    def resources(self) -> list[ResourceSpec]:
        out: list[ResourceSpec] = []

        def walk(items: list[ResourceSpec | ScopeSpec]) -> None:
            for item in items:
                if isinstance(item, ResourceSpec):
                    out.append(item)
                else:
                    walk(item.items)

        walk(self.items)
        return out


class _Compiler:
    """Compiles one loaded YAML document; collects problems instead of raising."""

    def __init__(self, file: str, dialect: Dialect) -> None:
        self.file = file
        self.dialect = dialect
        self.problems: list[Problem] = []
        self.functions = dialect.functions

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, message))

    def path(self, text: Any, line: int, what: str) -> Any:
        if not isinstance(text, str | int) or isinstance(text, bool):
            self.problem(line, f"{what} must be a path string")
            return None
        try:
            return self.dialect.compile_path(str(text))
        except ValueError as exc:
            self.problem(line, f"{what} {str(text)!r}: {exc}")
            return None

    # -- conditions ---------------------------------------------------------------------
    def condition(self, raw: Any, line: int) -> Condition | None:
        if not isinstance(raw, dict) or not raw:
            self.problem(line, "a condition must be a mapping such as {valued: PID-3}")
            return None
        line = line_of(raw) or line
        if "all" in raw or "any" in raw:
            key = "all" if "all" in raw else "any"
            items = raw[key]
            if not isinstance(items, list) or not items:
                self.problem(line, f"'{key}' needs a list of conditions")
                return None
            parts = [self.condition(item, line_of(items, i) or line) for i, item in enumerate(items)]
            conds = tuple(p for p in parts if p is not None)
            if len(conds) != len(parts):
                return None
            return Condition(key, parts=conds)
        if "not" in raw:
            inner = self.condition(raw["not"], line)
            if inner is None:
                return None
            return Condition("not", parts=(inner,))
        if "built" in raw:
            return Condition("built", want=str(raw["built"]))
        for key in ("valued", "null", "not_valued"):
            if key in raw:
                path = self.path(raw[key], line, key)
                if path is None:
                    return None
                return Condition(key, path=path)
        if "path" not in raw:
            self.problem(line, "unknown condition (expected valued, not_valued, null, path, built, all, any, not)")
            return None
        path = self.path(raw["path"], line, "path")
        if path is None:
            return None
        if "equals" in raw:
            return Condition("equals", path=path, want=_norm(raw["equals"]))
        if "in" in raw or "not_in" in raw:
            key = "in" if "in" in raw else "not_in"
            values = raw[key]
            if not isinstance(values, list):
                self.problem(line, f"'{key}' needs a list of codes")
                return None
            return Condition(key, path=path, values=frozenset(_norm(v) for v in values))
        if "matches" in raw:
            try:
                pattern = re.compile(str(raw["matches"]))
            except re.error:
                self.problem(line, "'matches' is not a valid regular expression")
                return None
            return Condition("matches", path=path, pattern=pattern)
        self.problem(line, "a 'path' condition needs equals, in, not_in or matches")
        return None

    # -- rules ----------------------------------------------------------------------------
    def rules(self, raw: Any, line: int) -> list[Rule]:
        if not isinstance(raw, list):
            self.problem(line, "'rules' must be a list")
            return []
        out = []
        for index, item in enumerate(raw):
            rule = self.rule(item, line_of(raw, index) or line)
            if rule is not None:
                out.append(rule)
        return out

    def rule(self, raw: Any, line: int) -> Rule | None:
        if not isinstance(raw, dict):
            self.problem(line, "a rule must be a mapping")
            return None
        line = line_of(raw) or line
        where = f"{self.file}:{line}"
        producers = [k for k in ("source", "constant", "ref", "refs") if k in raw]
        if len(producers) > 1:
            self.problem(line, f"a rule has one producer, found {', '.join(producers)}")
            return None
        rule = Rule(kind=SELF, where=where)
        if producers:
            rule.kind = {"source": SOURCE, "constant": CONSTANT, "ref": REF, "refs": REFS}[producers[0]]
        elif not ("map" in raw or "rules" in raw):
            self.problem(line, "a rule needs source, constant, ref, refs, map or rules")
            return None
        if "target" in raw:
            rule.target_text = str(raw["target"])
            try:
                rule.target = parse_target(rule.target_text)
            except ValueError as exc:
                self.problem(line_of(raw, "target") or line, f"target {rule.target_text!r}: {exc}")
                return None
        if rule.kind == SOURCE:
            rule.source_text = str(raw["source"])
            rule.source = self.path(raw["source"], line_of(raw, "source") or line, "source")
            if rule.source is None:
                return None
        elif rule.kind == CONSTANT:
            rule.constant = raw["constant"]
        elif rule.kind in (REF, REFS):
            rule.ref = str(raw["ref" if rule.kind == REF else "refs"])
        if "map" in raw and "rules" in raw:
            self.problem(line, "a rule uses either 'map' or inline 'rules', not both")
            return None
        if "map" in raw:
            rule.map_id = str(raw["map"])
        if "rules" in raw:
            rule.inline = self.rules(raw["rules"], line_of(raw, "rules") or line)
        if "transform" in raw:
            rule.transform_name = str(raw["transform"])
            function = self.functions.get(rule.transform_name)
            if function is None:
                self.problem(line_of(raw, "transform") or line, f"unknown transform {rule.transform_name!r}")
            rule.transform = function
            args = raw.get("args") or {}
            if not isinstance(args, dict):
                self.problem(line, "'args' must be a mapping")
            else:
                rule.args = dict(args)
        if "vocabulary" in raw:
            rule.vocabulary = str(raw["vocabulary"])
            rule.vocab_as = str(raw.get("as", "code"))
            if rule.vocab_as not in ("code", "coding", "codeableConcept"):
                self.problem(line, "'as' must be code, coding or codeableConcept")
        for key in ("when", "where"):
            if key in raw:
                cond = self.condition(raw[key], line_of(raw, key) or line)
                if cond is None:
                    return None
                if key == "when":
                    rule.when = cond
                else:
                    rule.filter = cond
        rule.default = raw.get("default")
        rule.required = bool(raw.get("required", False))
        rule.repeats = str(raw.get("repeats", FIRST))
        if rule.repeats not in (FIRST, ALL, JOIN):
            self.problem(line, "'repeats' must be first, all or join")
        self._check_shape(rule, raw, line)
        return rule

    def _check_shape(self, rule: Rule, raw: dict[str, Any], line: int) -> None:
        produces_object = rule.map_id or rule.inline is not None or rule.transform_name
        if rule.target is None and rule.kind in (CONSTANT, REF, REFS):
            self.problem(line, "this rule needs a 'target'")
        if rule.target is None and rule.kind == SOURCE and not produces_object and not rule.required:
            # (with ``required`` and no target it is a guard: the message fails, naming the field)
            self.problem(line, "a 'source' rule without map, rules, transform or 'required' needs a 'target'")
        many = rule.repeats == ALL or rule.kind == REFS
        if many and rule.target is not None and not any(s.mode == APPEND for s in rule.target):
            self.problem(line, "repeats: all / refs needs a list target such as 'identifier[]'")
        if rule.repeats == JOIN and (rule.map_id or rule.inline is not None):
            self.problem(line, "repeats: join joins text; it cannot be used with a map")
        if "as" in raw and not rule.vocabulary:
            self.problem(line, "'as' needs 'vocabulary'")
        if rule.target is not None and rule.target[-1].mode == PLAIN and rule.target[-1].name == "resourceType":
            self.problem(line, "resourceType is set by the engine")

    # -- identity ---------------------------------------------------------------------------
    def identity(self, raw: Any, line: int) -> tuple[list[IdentityAlt], bool]:
        if raw == "message":
            return [], True
        if not isinstance(raw, list):
            self.problem(line, "'identity' must be a list of alternatives, an identity id or 'message'")
            return [], False
        alts = []
        for index, item in enumerate(raw):
            item_line = line_of(raw, index) or line
            if not isinstance(item, dict) or "keys" not in item:
                self.problem(item_line, "an identity alternative needs 'keys'")
                continue
            keys = []
            for part in item["keys"] if isinstance(item["keys"], list) else []:
                optional = bool(part.get("optional", False)) if isinstance(part, dict) else False
                if isinstance(part, dict) and "resource" in part:
                    keys.append(KeyPart(resource=str(part["resource"]), optional=optional))
                elif isinstance(part, dict) and "constant" in part:
                    keys.append(KeyPart(constant=str(part["constant"])))
                else:
                    text = part.get("path") if isinstance(part, dict) else part
                    keys.append(
                        KeyPart(
                            path=self.path(text, item_line, "identity key"),
                            path_text=str(text),
                            optional=optional,
                        )
                    )
            if not keys:
                self.problem(item_line, "'keys' must be a non-empty list")
                continue
            within = self.path(item["within"], item_line, "within") if "within" in item else None
            cond = self.condition(item["where"], item_line) if "where" in item else None
            namespace = str(item.get("namespace", "sender"))
            if namespace not in ("sender", "global"):
                self.problem(item_line, "namespace must be sender or global")
            alts.append(
                IdentityAlt(
                    keys=tuple(keys),
                    within=within,
                    within_text=str(item.get("within", "")),
                    filter=cond,
                    namespace=namespace,
                )
            )
        return alts, False

    # -- message files ------------------------------------------------------------------------
    def items(self, raw: Any, line: int, names: set[str]) -> list[ResourceSpec | ScopeSpec]:
        if not isinstance(raw, list):
            self.problem(line, "'resources' must be a list")
            return []
        out: list[ResourceSpec | ScopeSpec] = []
        for index, item in enumerate(raw):
            item_line = line_of(raw, index) or line
            if not isinstance(item, dict):
                self.problem(item_line, "a resources entry must be a mapping")
                continue
            item_line = line_of(item) or item_line
            when = self.condition(item["when"], line_of(item, "when")) if "when" in item else None
            if "scope" in item:
                scope = ScopeSpec(
                    path=self.path(item["scope"], item_line, "scope"),
                    path_text=str(item["scope"]),
                    where=f"{self.file}:{item_line}",
                    when=when,
                )
                scope.items = self.items(item.get("resources", []), line_of(item, "resources") or item_line, names)
                out.append(scope)
                continue
            name = str(item.get("name", ""))
            if not name or "resourceType" not in item:
                self.problem(item_line, "a resource entry needs 'name' and 'resourceType'")
                continue
            if name in names:
                self.problem(item_line, f"resource name {name!r} is used twice")
            names.add(name)
            spec = ResourceSpec(name=name, resource_type=str(item["resourceType"]), where=f"{self.file}:{item_line}")
            if "from" in item:
                spec.from_text = str(item["from"])
                spec.from_path = self.path(item["from"], line_of(item, "from") or item_line, "from")
            spec.when = when
            spec.rules = self.rules(item.get("rules", []), line_of(item, "rules") or item_line)
            if "identity" in item:
                raw_identity = item["identity"]
                if isinstance(raw_identity, str) and raw_identity != "message":
                    spec.identity_ref = raw_identity
                else:
                    spec.identity, spec.message_identity = self.identity(
                        raw_identity, line_of(item, "identity") or item_line
                    )
            spec.duplicates = str(item.get("duplicates", "first"))
            spec.write = str(item.get("write", REPLACE))
            if spec.write not in WRITES:
                self.problem(line_of(item, "write") or item_line, "'write' must be replace or if_absent")
            out.append(spec)
        return out


def _norm(value: Any) -> str:
    return "" if value is None else str(value).strip().upper()


def compile_file(
    document: Any, file: str, dialect: Dialect
) -> tuple[MessageMap | MapDef | IdentityDef | None, list[Problem]]:
    """Compile one loaded mapping document (already schema-checked or not)."""
    compiler = _Compiler(file, dialect)
    if not isinstance(document, dict):
        compiler.problem(line_of(document), "a mapping file must be a YAML mapping")
        return None, compiler.problems
    kind = document.get("kind")
    doc_id = str(document.get("id", ""))
    if not doc_id:
        compiler.problem(line_of(document), "missing 'id'")
    if kind == "message":
        structures = document.get("structures") or []
        events = document.get("events") or []
        names: set[str] = set()
        items = compiler.items(document.get("resources", []), line_of(document, "resources"), names)
        message = MessageMap(
            id=doc_id,
            structures=tuple(str(s).upper() for s in structures),
            events=tuple(str(e).upper() for e in events),
            items=items,
            file=file,
            description=str(document.get("description", "")),
        )
        _check_refs(message, compiler)
        return message, compiler.problems
    if kind in ("segment", "datatype"):
        rules = compiler.rules(document.get("rules", []), line_of(document, "rules"))
        mapdef = MapDef(
            id=doc_id,
            kind=str(kind),
            input=str(document.get("input", "")),
            output=str(document.get("output", "")),
            rules=rules,
            file=file,
            line=line_of(document),
        )
        return mapdef, compiler.problems
    if kind == "identity":
        alternatives, _ = compiler.identity(document.get("alternatives"), line_of(document, "alternatives"))
        return IdentityDef(doc_id, alternatives, file, line_of(document)), compiler.problems
    compiler.problem(line_of(document, "kind"), "'kind' must be message, segment, datatype or identity")
    return None, compiler.problems


def _check_refs(message: MessageMap, compiler: _Compiler) -> None:
    """ref/refs/built/resource names must name resources of the same message map."""
    names = {spec.name for spec in message.resources()}

    def walk(rules: list[Rule]) -> None:
        for rule in rules:
            if rule.kind in (REF, REFS) and rule.ref not in names:
                _, _, line = rule.where.rpartition(":")
                compiler.problem(int(line), f"ref {rule.ref!r} names no resource of this message map")
            if rule.inline:
                walk(rule.inline)

    for spec in message.resources():
        walk(spec.rules)
        for alt in spec.identity:
            for part in alt.keys:
                if part.resource and part.resource not in names:
                    _, _, line = spec.where.rpartition(":")
                    compiler.problem(int(line), f"identity names unknown resource {part.resource!r}")
