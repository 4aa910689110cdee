"""R4 validation with the same verdict as :func:`hub.fhir.validation.validate_resource`, fast for
resources whose *shape* was seen before.

Mapped resources repeat their shape endlessly (every lab Observation of a feed has the same
keys, nesting and list lengths); only the primitive values differ. The fhir.resources models
check two things: the shape (known elements, cardinality, required elements, one value per
choice element, no nulls in lists) and each primitive value against its element's type
(``code``, ``dateTime``, ``id``... - pydantic validators built from the field annotation).
Model validators of fhir_core depend on the shape only (``reject_null_complex_elements``,
``_validate_one_of_many``, ``_validate_required_primitive_elements``), and R4B resources add
none of their own.

So: the first resource of a shape goes through ``validate_resource`` in full; if it passes,
the validators of its primitive elements - the very pydantic validators the model uses, looked
up from the model fields - are recorded for that shape. A later resource of the same shape is
checked value by value with them (values already accepted for an element are remembered). Any
value they reject sends the resource through ``validate_resource`` again, so errors are the
full validator's errors, word for word. Every resource is therefore validated; only the
repeated structural work is skipped.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Hashable
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from hub.fhir.validation import validate_resource

__all__ = ["ShapeValidator"]

Check = Callable[[Any], bool]


def _shape(node: Any, leaves: list[Any]) -> Hashable:
    if isinstance(node, dict):
        return tuple((key, _shape(value, leaves)) for key, value in node.items())
    if isinstance(node, list):
        return ("[", *(_shape(value, leaves) for value in node))
    leaves.append(node)
    tag: Hashable = type(node).__name__
    return tag


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


@cache
def _fields(cls: Any) -> dict[str, Any]:
    """Element name (alias or python name) → field annotation of a model class."""
    out: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        out[name] = info.annotation
        if info.alias:
            out[info.alias] = info.annotation
    return out


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(element annotation, is_list) of ``Optional[List[X]]`` / ``Optional[X]`` / ``X``."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise LookupError("ambiguous union")
        return _unwrap(inner[0])
    if origin in (list, typing.List):  # noqa: UP006 - the models use typing.List
        return args[0], True
    return annotation, False


class _PrimitiveCheck:
    """The pydantic validator of one element type, remembering the values it accepted."""

    __slots__ = ("_accepted", "_adapter")

    def __init__(self, annotation: Any) -> None:
        self._adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        self._accepted: set[Hashable] = set()

    def __call__(self, value: Any) -> bool:
        key = (type(value), value)
        if key in self._accepted:
            return True
        try:
            self._adapter.validate_python(value)
        except ValidationError:
            return False
        if len(self._accepted) < 50_000:
            self._accepted.add(key)
        return True


_CHECKS: dict[Any, _PrimitiveCheck] = {}


def _primitive_check(annotation: Any) -> _PrimitiveCheck:
    check = _CHECKS.get(annotation)
    if check is None:
        check = _CHECKS[annotation] = _PrimitiveCheck(annotation)
    return check


class _Equals:
    __slots__ = ("expected",)

    def __init__(self, expected: Any) -> None:
        self.expected = expected

    def __call__(self, value: Any) -> bool:
        return bool(value == self.expected)


def _always(value: Any) -> bool:
    return True


def _plan(node: Any, cls: Any, checks: list[Check], root: bool) -> None:
    """Append, in :func:`_shape` leaf order, the check of every primitive under ``node``."""
    fields = _fields(cls)
    for key, value in node.items():
        if root and key == "resourceType":
            checks.append(_Equals(value))
            continue
        annotation, is_list = _unwrap(fields[key])
        items = value if is_list else [value]
        if is_list and not isinstance(value, list):
            raise LookupError("list expected")
        klass_getter = getattr(annotation, "get_model_klass", None)
        for item in items:
            if item is None:
                checks.append(_always)
            elif klass_getter is not None:
                if not isinstance(item, dict):
                    raise LookupError("object expected")
                klass = klass_getter()
                if getattr(klass, "__resource_type__", "") in ("Resource", "DomainResource"):
                    raise LookupError("contained resources are not planned")
                _plan(item, klass, checks, False)
            else:
                if isinstance(item, dict | list):
                    raise LookupError("primitive expected")
                checks.append(_primitive_check(annotation))


class ShapeValidator:
    """Callable like ``validate_resource(resource)``; raises :class:`hub.errors.ValidationFailed`.

    ``max_shapes`` bounds memory (shapes beyond it are validated in full every time).
    """

    def __init__(self, full: Callable[[dict[str, Any]], None] = validate_resource, max_shapes: int = 4096) -> None:
        self._full = full
        self._plans: dict[Hashable, tuple[Check, ...] | None] = {}
        self._max = max_shapes

    def __call__(self, resource: dict[str, Any]) -> None:
        leaves: list[Any] = []
        key = _shape(resource, leaves)
        if key not in self._plans:
            self._full(resource)  # raises for an invalid resource: nothing is recorded
            if len(self._plans) < self._max:
                self._plans[key] = self._build(resource)
            return
        plan = self._plans[key]
        if plan is None:  # shape that cannot be planned: always in full
            self._full(resource)
            return
        for value, check in zip(leaves, plan, strict=True):
            if not check(value):
                self._full(resource)
                return

    @staticmethod
    def _build(resource: dict[str, Any]) -> tuple[Check, ...] | None:
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or resource_type == "Bundle":
            return None
        checks: list[Check] = []
        try:
            _plan(resource, _model(resource_type), checks, True)
        except (LookupError, TypeError, AttributeError):
            return None
        return tuple(checks)
