"""R4 validation with the same verdict as :func:`hub.fhir.validation.validate_resource`, without
repeating the structural work for element layouts seen before.

What the fhir.resources R4B models (fhir_core 1.x, pydantic 2) check when they validate a
resource, element by element:

1. *per object* (one model class ``C``, one JSON object): unknown keys (``extra="forbid"``),
   required elements, one value per choice element (``_validate_one_of_many``), required
   primitive elements (``_validate_required_primitive_elements``), no null inside a list of
   complex elements (``reject_null_complex_elements``). These read only the object's keys and
   which of its values are null - nothing else; R4B resources add no validators of their own.
2. *per value*: each element value against its field annotation: a nested object with the
   element's model class (recursively, the same rules), a list item by item, a primitive with
   its pydantic validator (``Annotated[str, Code()]`` → the ``code`` pattern; ``dateTime`` →
   fhir_core's ``DateTime`` validator ...). These validators take no context.

So the verdict on an object decomposes: object ``o`` of class ``C`` is valid iff the key tuple of
``o`` is acceptable for ``C`` (1) and each value is valid for its field (2). This validator learns
(1) from full validations: after a resource passes ``validate_resource``, every object in it
records "keys K are acceptable for class C" - only for objects without null values, so a
learned key tuple says nothing about nulls. A later resource whose objects all have learned key
tuples, whose values have the expected JSON kinds (object / non-empty list / scalar) and whose
primitive values pass the very pydantic validators of their fields is valid; anything else -
an unseen key tuple, a null, an empty list, a value of another kind, a primitive a validator
rejects, a contained resource - goes through ``validate_resource`` in full, so errors are the
full validator's errors, word for word. Every resource is therefore validated with the full
model's verdict; only the repeated structural work is skipped.

Primitive validators are pydantic's own (``TypeAdapter`` over the field annotation, with the
model's config), called once per distinct (field type, value); values accepted are remembered.
Values of one message are checked in one batch per field type (one call into pydantic-core).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Hashable, Iterable
from functools import cache
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from hub.fhir.validation import validate_resource

__all__ = ["ShapeValidator"]

_SCALARS = frozenset({str, int, float, bool})
_PRIM, _OBJ, _PRIM_LIST, _OBJ_LIST, _EQUALS = 0, 1, 2, 3, 4
_MAX_ACCEPTED = 50_000


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


@cache
def _fields(cls: Any) -> dict[str, Any]:
    """Element name as it appears in JSON (alias, or python name: ``populate_by_name``) →
    field annotation of a model class."""
    out: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        out[name] = info.annotation
        if info.alias:
            out[info.alias] = info.annotation
    return out


def _optional(annotation: Any) -> Any:
    """``X`` of ``Optional[X]`` (``X | None``); other unions raise LookupError."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) != 1:
            raise LookupError("ambiguous union")
        return inner[0]
    return annotation


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(item annotation, is_list) of ``Optional[List[X]]`` / ``Optional[X]`` / ``X``.

    Items of primitive lists are ``Optional`` (a null lines a value up with its ``_element``
    extension); the fast path never accepts a null, so ``X`` is what non-null items must be.
    """
    annotation = _optional(annotation)
    if typing.get_origin(annotation) in (list, typing.List):  # noqa: UP006 - the models use typing.List
        return _optional(typing.get_args(annotation)[0]), True
    return annotation, False


class _Primitive:
    """The pydantic validator of one primitive element type, remembering the values it accepted
    (per Python type: ``1``, ``1.0`` and ``True`` are different values here)."""

    __slots__ = ("_adapter", "_batch", "accepted", "size")

    def __init__(self, annotation: Any, config: ConfigDict) -> None:
        self._adapter: TypeAdapter[Any] = TypeAdapter(annotation, config=config)
        self._batch: TypeAdapter[Any] = TypeAdapter(list[annotation], config=config)
        self.accepted: dict[type, set[Any]] = {t: set() for t in _SCALARS}
        self.size = 0

    def valid(self, value: Any) -> bool:
        try:
            self._adapter.validate_python(value)
        except ValidationError:
            return False
        self._remember(value)
        return True

    def valid_batch(self, values: list[Any]) -> list[bool]:
        """One verdict per value; one call into pydantic-core when all pass."""
        try:
            self._batch.validate_python(values)
        except ValidationError:
            return [self.valid(value) for value in values]
        for value in values:
            self._remember(value)
        return [True] * len(values)

    def _remember(self, value: Any) -> None:
        if self.size >= _MAX_ACCEPTED:
            for bucket in self.accepted.values():
                bucket.clear()
            self.size = 0
        self.accepted[type(value)].add(value)
        self.size += 1


#: Model-config keys that change how a primitive value validates (the rest concern models).
_SCALAR_CONFIG = (
    "strict",
    "str_strip_whitespace",
    "str_to_lower",
    "str_to_upper",
    "str_max_length",
    "str_min_length",
    "coerce_numbers_to_str",
    "allow_inf_nan",
    "regex_engine",
    "val_temporal_unit",
    "ser_json_inf_nan",
)

_PRIMITIVES: dict[tuple[Any, Hashable], _Primitive] = {}


def _primitive(annotation: Any, cls: Any) -> _Primitive:
    settings = {k: cls.model_config[k] for k in _SCALAR_CONFIG if k in cls.model_config}
    key = (annotation, tuple(sorted(settings.items())))
    found = _PRIMITIVES.get(key)
    if found is None:
        found = _PRIMITIVES[key] = _Primitive(annotation, ConfigDict(**settings))  # type: ignore[typeddict-item]
    return found


Miss = tuple[_Primitive, Any, int]
#: checks one object of a known key tuple: (object, misses, resource index) → verdict
Checker = Callable[[dict[str, Any], list[Miss], int], bool]


class _ClassPlan:
    """What is known of one model class: its key tuples seen valid, each with a checker of the
    values (generated code: one straight run of type tests and set lookups per key tuple)."""

    __slots__ = ("checks", "cls", "fields", "keys")

    def __init__(self, cls: Any) -> None:
        self.cls = cls
        self.keys: dict[tuple[str, ...], Checker] = {}
        self.checks: dict[tuple[str, ...], list[tuple[int, Any]]] = {}  # what each checker checks
        self.fields: dict[str, tuple[int, Any] | None] = {}


#: nested objects whose layout is known when a checker is generated are checked inline, this deep
_INLINE_DEPTH = 3


class _Generator:
    """Source of one checker. Per value: a primitive must have a JSON scalar type and be a value
    its validator accepted before (else it is queued in ``misses`` for the batch check); an
    object must be a dict whose key tuple is known for its class and whose values pass; a list
    must be a non-empty list of such items; ``resourceType`` must equal the class's resource
    type. Nested objects with the layout of the example object are checked inline, others
    through their class's checkers."""

    def __init__(self) -> None:
        self.lines = ["def check(o, misses, index):"]
        self.names: dict[str, Any] = {}
        self.count = 0

    def name(self, prefix: str, value: Any) -> str:
        self.count += 1
        name = f"{prefix}{self.count}"
        self.names[name] = value
        return name

    def var(self) -> str:
        self.count += 1
        return f"x{self.count}"

    def add(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def object(self, obj: str, checks: list[tuple[int, Any]], example: Any, indent: int, depth: int) -> None:
        """Lines checking the values of dict ``obj`` whose key tuple is the checks' one."""
        if not checks:
            return
        values = [self.var() for _ in checks]
        self.add(indent, f"{', '.join(values)}, = {obj}.values()")
        examples = list(example.values()) if isinstance(example, dict) else [None] * len(checks)
        for value, (kind, target), sample in zip(values, checks, examples, strict=False):
            if kind == _PRIM:
                self.primitive(value, target, indent)
            elif kind == _OBJ:
                self.add(indent, f"if type({value}) is not dict:")
                self.add(indent + 1, "return False")
                self.nested(value, target, sample, indent, depth)
            elif kind == _OBJ_LIST:
                item = self.var()
                self.add(indent, f"if type({value}) is not list or not {value}:")
                self.add(indent + 1, "return False")
                self.add(indent, f"for {item} in {value}:")
                self.add(indent + 1, f"if type({item}) is not dict:")
                self.add(indent + 2, "return False")
                first = sample[0] if isinstance(sample, list) and sample else None
                self.nested(item, target, first, indent + 1, depth)
            elif kind == _PRIM_LIST:
                item = self.var()
                self.add(indent, f"if type({value}) is not list or not {value}:")
                self.add(indent + 1, "return False")
                self.add(indent, f"for {item} in {value}:")
                self.primitive(item, target, indent + 1)
            else:  # _EQUALS
                self.add(indent, f"if type({value}) is not str or {value} != {self.name('E', target)}:")
                self.add(indent + 1, "return False")

    def primitive(self, value: str, target: _Primitive, indent: int) -> None:
        accepted = self.name("A", target.accepted)
        self.add(indent, f"s = {accepted}.get(type({value}))")
        self.add(indent, "if s is None:")
        self.add(indent + 1, "return False")
        self.add(indent, f"if {value} not in s:")
        self.add(indent + 1, f"misses.append(({self.name('P', target)}, {value}, index))")

    def nested(self, value: str, plan: _ClassPlan, example: Any, indent: int, depth: int) -> None:
        keys = self.name("K", plan.keys)
        layout: tuple[str, ...] = tuple(example) if isinstance(example, dict) else ()
        checks = plan.checks.get(layout) if depth < _INLINE_DEPTH and layout else None
        key = self.var()
        self.add(indent, f"{key} = tuple({value})")
        if checks is not None:
            self.add(indent, f"if {key} == {self.name('L', layout)}:")
            self.object(value, checks, example, indent + 1, depth + 1)
            self.add(indent, "else:")
            indent += 1
        self.add(indent, f"f = {keys}.get({key})")
        self.add(indent, f"if f is None or not f({value}, misses, index):")
        self.add(indent + 1, "return False")


def _checker(checks: list[tuple[int, Any]], example: dict[str, Any]) -> Checker:
    """Generated checker of an object's values, one check per value in key order (see
    :class:`_Generator`); ``example`` is the object the layout was learned from."""
    generator = _Generator()
    generator.object("o", checks, example, 1, 0)
    generator.add(1, "return True")
    names = generator.names
    exec(compile("\n".join(generator.lines), "<fhir layout check>", "exec"), names)  # noqa: S102 - from model fields
    checker: Checker = names["check"]
    return checker


class ShapeValidator:
    """Callable like ``validate_resource(resource)``; raises :class:`hub.errors.ValidationFailed`.

    :meth:`validate_all` validates several resources (one message) with batched primitive checks
    and raises for the first invalid one, as validating them one by one in order would.
    ``max_layouts`` bounds the key tuples learned per model class (beyond it, new layouts are
    validated in full every time).
    """

    def __init__(self, full: Callable[[dict[str, Any]], None] = validate_resource, max_layouts: int = 4096) -> None:
        self._full = full
        self._plans: dict[Any, _ClassPlan] = {}
        self._roots: dict[str, _ClassPlan | None] = {}
        self._max = max_layouts
        #: resources checked without a full validation (for tests and statistics)
        self.fast_hits = 0

    def __call__(self, resource: dict[str, Any]) -> None:
        self.validate_all((resource,))

    def validate_all(self, resources: Iterable[dict[str, Any]]) -> None:
        batch = list(resources)
        misses: list[Miss] = []
        fast = [self._check_root(resource, misses, index) for index, resource in enumerate(batch)]
        if misses:
            groups: dict[_Primitive, list[tuple[Any, int]]] = {}
            for primitive, value, index in misses:
                groups.setdefault(primitive, []).append((value, index))
            for primitive, entries in groups.items():
                verdicts = primitive.valid_batch([value for value, _ in entries])
                for (_, index), ok in zip(entries, verdicts, strict=True):
                    if not ok:
                        fast[index] = False
        for resource, ok in zip(batch, fast, strict=True):
            if ok:
                self.fast_hits += 1
                continue
            self._full(resource)  # raises for an invalid resource: nothing is learned
            self._learn_root(resource)

    # -- the fast check -----------------------------------------------------------------------
    def _root_plan(self, resource: dict[str, Any]) -> _ClassPlan | None:
        resource_type = resource.get("resourceType")
        if type(resource_type) is not str:
            return None
        try:
            return self._roots[resource_type]
        except KeyError:
            pass
        plan = None
        if resource_type != "Bundle":
            try:
                plan = self._plan(_model(resource_type))
            except (KeyError, ValueError, LookupError):
                plan = None
        self._roots[resource_type] = plan
        return plan

    def _check_root(self, resource: Any, misses: list[Miss], index: int) -> bool:
        if type(resource) is not dict:
            return False
        plan = self._root_plan(resource)
        if plan is None:
            return False
        check = plan.keys.get(tuple(resource))
        return check is not None and check(resource, misses, index)

    # -- learning from a resource that passed full validation ------------------------------------
    def _plan(self, cls: Any) -> _ClassPlan:
        plan = self._plans.get(cls)
        if plan is None:
            plan = self._plans[cls] = _ClassPlan(cls)
        return plan

    def _field(self, plan: _ClassPlan, key: str) -> tuple[int, Any] | None:
        """How to check values of element ``key`` of the plan's class, or None (never fast)."""
        if key in plan.fields:
            return plan.fields[key]
        found: tuple[int, Any] | None = None
        annotation = _fields(plan.cls).get(key)
        if annotation is not None:
            try:
                found = self._field_check(annotation, plan.cls)
            except (LookupError, TypeError, AttributeError):
                found = None
        plan.fields[key] = found
        return found

    def _field_check(self, annotation: Any, cls: Any) -> tuple[int, Any] | None:
        from fhir_core.types import FhirBase, FhirElementOrResourceBase

        element, is_list = _unwrap(annotation)
        if isinstance(element, type) and issubclass(element, FhirBase):
            if issubclass(element, FhirElementOrResourceBase):
                return None  # contained resources: the class depends on the value
            klass_plan = self._plan(element.get_model_klass())
            return (_OBJ_LIST if is_list else _OBJ), klass_plan
        if typing.get_origin(element) in (typing.Union, types.UnionType, list, typing.List):  # noqa: UP006
            return None
        return (_PRIM_LIST if is_list else _PRIM), _primitive(element, cls)

    def _learn_root(self, resource: dict[str, Any]) -> None:
        plan = self._root_plan(resource)
        if plan is not None:
            self._learn(resource, plan, root=True)

    def _learn(self, obj: dict[str, Any], plan: _ClassPlan, root: bool = False) -> None:
        checks: list[tuple[int, Any]] = []
        complete = True
        for key, value in obj.items():
            if root and key == "resourceType":
                checks.append((_EQUALS, plan.cls.get_resource_type()))
                continue
            check = self._field(plan, key)
            if check is None or value is None:
                complete = False
                continue
            checks.append(check)
            kind, target = check
            if kind == _OBJ and type(value) is dict:
                self._learn(value, target)
            elif kind == _OBJ_LIST and type(value) is list:
                for item in value:
                    if type(item) is dict:
                        self._learn(item, target)
        keys = tuple(obj)
        if complete and keys not in plan.keys and len(plan.keys) < self._max:
            plan.checks[keys] = checks
            plan.keys[keys] = _checker(checks, obj)
