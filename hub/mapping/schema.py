"""A small JSON Schema (2020-12) checker for mapping files, reporting YAML line numbers.

Only the keywords the mapping schema uses are implemented: ``type``, ``properties``,
``required``, ``additionalProperties``, ``patternProperties``, ``enum``, ``const``,
``items``, ``minItems``, ``minLength``, ``pattern``, ``oneOf``, ``anyOf``, ``$ref`` (local
``#/$defs/...``) and ``minProperties``. The same schema file is what editors use for
autocompletion (``# yaml-language-server: $schema=...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .yamlload import line_of

__all__ = ["SchemaProblem", "check"]


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    path: str
    line: int
    message: str


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    if not isinstance(node, dict):
        raise KeyError(ref)
    return node


def _check(
    value: Any, schema: dict[str, Any], root: dict[str, Any], path: str, line: int, out: list[SchemaProblem]
) -> None:
    if "$ref" in schema:
        _check(value, _resolve(root, schema["$ref"]), root, path, line, out)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(value, name) for name in names):
            out.append(SchemaProblem(path, line, f"{path or 'document'}: expected {' or '.join(names)}"))
            return
    if "const" in schema and value != schema["const"]:
        out.append(SchemaProblem(path, line, f"{path}: must be {schema['const']!r}"))
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(str(v) for v in schema["enum"])
        out.append(SchemaProblem(path, line, f"{path}: must be one of {allowed}"))
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            out.append(SchemaProblem(path, line, f"{path}: must not be empty"))
        pattern = schema.get("pattern")
        if pattern and not re.search(pattern, value):
            what = f"not a valid {schema['title']}" if "title" in schema else f"does not match pattern {pattern}"
            out.append(SchemaProblem(path, line, f"{path}: {what}"))
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                out.append(SchemaProblem(path, line_of(value) or line, f"{path or 'document'}: missing '{key}'"))
        if len(value) < schema.get("minProperties", 0):
            out.append(SchemaProblem(path, line_of(value) or line, f"{path or 'document'}: must not be empty"))
        props: dict[str, Any] = schema.get("properties", {})
        patterns: dict[str, Any] = schema.get("patternProperties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            key_path = f"{path}.{key}" if path else str(key)
            key_line = line_of(value, str(key)) or line
            if key in props:
                _check(item, props[key], root, key_path, key_line, out)
                continue
            matched = [p for p in patterns if re.search(p, str(key))]
            for pattern in matched:
                _check(item, patterns[pattern], root, key_path, key_line, out)
            if matched:
                continue
            if extra is False:
                known = ", ".join(sorted(props))
                out.append(SchemaProblem(key_path, key_line, f"{key_path}: unknown key (expected one of: {known})"))
            elif isinstance(extra, dict):
                _check(item, extra, root, key_path, key_line, out)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            out.append(SchemaProblem(path, line, f"{path}: needs at least {schema['minItems']} item(s)"))
        items = schema.get("items")
        if isinstance(items, dict):
            for index, item in enumerate(value):
                _check(item, items, root, f"{path}[{index}]", line_of(value, index) or line, out)
    for keyword in ("oneOf", "anyOf"):
        options = schema.get(keyword)
        if not options:
            continue
        results: list[list[SchemaProblem]] = []
        for option in options:
            found: list[SchemaProblem] = []
            _check(value, option, root, path, line, found)
            results.append(found)
        passing = sum(1 for r in results if not r)
        if passing == 0:
            # Report the option that got furthest (fewest problems): usually what was meant.
            best: list[SchemaProblem] = min(results, key=len)
            out.extend(best)
        elif keyword == "oneOf" and passing > 1:
            out.append(SchemaProblem(path, line, f"{path}: matches more than one form"))


def check(document: Any, schema: dict[str, Any]) -> list[SchemaProblem]:
    """Problems of ``document`` (loaded with :func:`load_yaml`) against ``schema``."""
    out: list[SchemaProblem] = []
    _check(document, schema, schema, "", line_of(document), out)
    return out
