"""What the engine needs from a protocol adapter: source nodes, a path dialect, functions.

The engine is protocol-neutral: it never parses a source path. An adapter supplies a
:class:`Dialect` that compiles the paths written in mapping files (``PID-3.1``,
``ORDER_OBSERVATION/OBX`` for HL7 v2) and a tree of :class:`SourceNode` objects to evaluate them
against, plus named functions (date formats, number parsing...) that mapping rules call with
``transform:``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .conceptmap import ConceptMapStore

__all__ = [
    "ABSENT",
    "NULL",
    "VALUED",
    "Dialect",
    "Function",
    "FunctionContext",
    "SourceNode",
    "is_value_pure",
    "value_pure",
]

ABSENT, NULL, VALUED = "absent", "null", "valued"


@runtime_checkable
class SourceNode(Protocol):
    """One element of a source message (a group, segment, field repetition, component...)."""

    @property
    def location(self) -> str:
        """Where the node is, for explain traces and errors (``OBX[3]-5``); never a value."""
        ...

    def select(self, path: Any) -> Sequence[SourceNode]:
        """Nodes at a compiled ``path`` relative to this node (every repetition)."""
        ...

    def value(self, path: Any) -> str | None:
        """The first primitive value at ``path`` (``None`` = this node), or None when empty."""
        ...

    def presence(self, path: Any) -> str:
        """:data:`ABSENT`, :data:`NULL` (explicitly deleted) or :data:`VALUED`."""
        ...


class FunctionContext(Protocol):
    """What a transform function may use besides its input node."""

    @property
    def concepts(self) -> ConceptMapStore: ...

    def warn(self, message: str) -> None:
        """Record a non-fatal problem (no PHI: name fields, not values)."""
        ...


#: A transform: (input node, context, arguments from the rule) → value (or None for nothing).
Function = Callable[[SourceNode, FunctionContext, Mapping[str, Any]], Any]

# A registry rather than an attribute on the function: compiled (mypyc) functions take none.
_VALUE_PURE: set[Function] = set()


def value_pure(function: Function) -> Function:
    """Mark a transform whose result depends only on the text of the value it is applied to
    (reads relative to the node, the rule's args and ConceptMaps; its only effect a warning):
    datatype maps built from such transforms may be memoised (:mod:`hub.mapping.plan`)."""
    _VALUE_PURE.add(function)
    return function


def is_value_pure(function: Function) -> bool:
    return function in _VALUE_PURE


class Dialect(Protocol):
    """Protocol-specific parts of the engine."""

    name: str

    def compile_path(self, text: str) -> Any:
        """Compile a source path; raise ValueError with a short reason if malformed."""
        ...

    @property
    def functions(self) -> Mapping[str, Function]: ...
