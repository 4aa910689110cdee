"""FHIR target paths of mapping rules, and writing values into resources under construction.

Syntax (after the HL7 v2-to-FHIR IG's ``[n]`` notation, IG "Mapping guidelines"):

* ``a.b``      - set key ``b`` of object ``a`` (objects are created on the way); a later rule
  writing the same key overwrites (rules apply in file order);
* ``a[]``      - append a new element to list ``a`` for every value;
* ``a[k]``     - the element of list ``a`` named ``k`` (a number or word): every rule naming
  ``a[k]`` within one object writes into the same element, e.g. ``name[1].family`` and
  ``name[1].given[]``; elements are listed in the order they are first written;
* ``value[x]`` - a choice element, last step only: the producer returns :class:`Choice`
  (``Choice("Quantity", {...})`` writes ``valueQuantity``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

__all__ = ["APPEND", "CHOICE", "PLAIN", "SLOT", "Choice", "Step", "assign", "compile_target", "merge", "parse_target"]

PLAIN, APPEND, SLOT, CHOICE = 0, 1, 2, 3

_STEP = re.compile(r"^(?P<name>[a-zA-Z][a-zA-Z0-9_]*)(?:\[(?P<index>[A-Za-z0-9_]*)\])?$")


class Choice(NamedTuple):
    """A value for a ``[x]`` element: ``suffix`` is the FHIR type name (``Quantity``...)."""

    suffix: str
    value: Any


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    mode: int
    label: str = ""


def parse_target(text: str) -> tuple[Step, ...]:
    """Parse a target path; raises ValueError naming the bad step."""
    steps: list[Step] = []
    parts = text.strip().split(".")
    for position, part in enumerate(parts):
        match = _STEP.match(part)
        if match is None:
            raise ValueError(f"bad target path step {part!r}")
        index = match["index"]
        if index is None:
            steps.append(Step(match["name"], PLAIN))
        elif index == "":
            steps.append(Step(match["name"], APPEND))
        elif index == "x":
            if position != len(parts) - 1:
                raise ValueError("a choice step [x] must be the last step")
            steps.append(Step(match["name"], CHOICE))
        else:
            steps.append(Step(match["name"], SLOT, index))
    return tuple(steps)


#: Which list element a ``name[label]`` step means, per object under construction:
#: ``(id(obj), name, label) → (index, obj)``. The object is kept so that an id reused by a
#: later object (after the first was dropped) never points at the first one's element.
Slots = dict[tuple[int, str, str], tuple[int, dict[str, Any]]]


def _child_list(obj: dict[str, Any], name: str) -> list[Any]:
    current = obj.get(name)
    if isinstance(current, list):
        return current
    new: list[Any] = [] if current is None else [current]
    obj[name] = new
    return new


def assign(obj: dict[str, Any], steps: tuple[Step, ...], value: Any, slots: Slots, trace: bool = False) -> str:
    """Write ``value`` at ``steps`` under ``obj``; returns the concrete path when ``trace``."""
    path = ""
    last = len(steps) - 1
    for position, step in enumerate(steps):
        name = step.name
        mode = step.mode
        final = position == last
        if mode == PLAIN:
            if final:
                obj[name] = value
                if trace:
                    path += f".{name}" if path else name
                break
            existing = obj.get(name)
            if isinstance(existing, list):
                if not existing:
                    existing.append({})
                existing = existing[-1]
            if isinstance(existing, dict):
                child = existing
            else:
                child = {}
                obj[name] = child
            if trace:
                path += f".{name}" if path else name
            obj = child
        elif mode == APPEND:
            items = _child_list(obj, name)
            if final:
                items.append(value)
            else:
                child = {}
                items.append(child)
            if trace:
                path += f"{'.' if path else ''}{name}[{len(items) - 1}]"
            if final:
                break
            obj = child
        elif mode == SLOT:
            items = _child_list(obj, name)
            key = (id(obj), name, step.label)
            entry = slots.get(key)
            index = entry[0] if entry is not None and entry[1] is obj else None
            if index is None or index >= len(items):
                index = len(items)
                items.append(value if final else {})
                slots[key] = (index, obj)
            elif final:
                items[index] = value
            if trace:
                path += f"{'.' if path else ''}{name}[{index}]"
            if final:
                break
            slot = items[index]
            if isinstance(slot, dict):
                obj = slot
            else:
                obj = {}
                items[index] = obj
        else:  # CHOICE
            if not isinstance(value, Choice):
                raise TypeError(f"element {name}[x] needs a typed (choice) value")
            key_name = name + value.suffix
            obj[key_name] = value.value
            if trace:
                path += f".{key_name}" if path else key_name
    return path


def merge(into: dict[str, Any], data: dict[str, Any]) -> None:
    """Deep-merge ``data`` into ``into``: objects merge, lists extend, scalars overwrite."""
    for key, value in data.items():
        current = into.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merge(current, value)
        elif isinstance(current, list) and isinstance(value, list):
            current.extend(value)
        else:
            into[key] = value


Writer = Callable[[dict[str, Any], Any, Slots], None]


def _child_list_code(name: str) -> list[str]:
    """``items = _child_list(o, name)``, inlined."""
    return [
        f"    items = o.get({name})",
        "    if not isinstance(items, list):",
        "        items = [] if items is None else [items]",
        f"        o[{name}] = items",
    ]


@cache
def compile_target(steps: tuple[Step, ...]) -> Writer:
    """``assign(obj, steps, value, slots)`` for one target path, as generated straight-line code
    (the engine writes hundreds of elements per message; the generic loop costs twice as much)."""
    lines = ["def write(o, value, slots):"]
    last = len(steps) - 1
    for position, step in enumerate(steps):
        name = repr(step.name)
        final = position == last
        if step.mode == PLAIN:
            if final:
                lines.append(f"    o[{name}] = value")
                break
            lines += [
                f"    x = o.get({name})",
                "    if isinstance(x, list):",
                "        if not x:",
                "            x.append({})",
                "        x = x[-1]",
                "    if not isinstance(x, dict):",
                "        x = {}",
                f"        o[{name}] = x",
                "    o = x",
            ]
        elif step.mode == APPEND:
            lines += _child_list_code(name)
            if final:
                lines.append("    items.append(value)")
                break
            lines += ["    x = {}", "    items.append(x)", "    o = x"]
        elif step.mode == SLOT:
            label = repr(step.label)
            lines += _child_list_code(name)
            lines += [
                f"    key = (id(o), {name}, {label})",
                "    entry = slots.get(key)",
                "    index = entry[0] if entry is not None and entry[1] is o else None",
                "    if index is None or index >= len(items):",
                "        index = len(items)",
                f"        items.append({'value' if final else '{}'})",
                "        slots[key] = (index, o)",
            ]
            if final:
                lines += ["    else:", "        items[index] = value"]
                break
            lines += [
                "    x = items[index]",
                "    if not isinstance(x, dict):",
                "        x = {}",
                "        items[index] = x",
                "    o = x",
            ]
        else:  # CHOICE (last step only)
            lines += [
                "    if not isinstance(value, Choice):",
                f"        raise TypeError('element ' + {name} + '[x] needs a typed (choice) value')",
                f"    o[{name} + value.suffix] = value.value",
            ]
    namespace: dict[str, Any] = {"_child_list": _child_list, "Choice": Choice}
    exec(compile("\n".join(lines), "<target " + ".".join(s.name for s in steps) + ">", "exec"), namespace)  # noqa: S102
    writer: Writer = namespace["write"]
    return writer
