"""Vocabulary translation through FHIR R4 ConceptMap resources, with a site-override layer.

Each ConceptMap (``group[].element[].target[]``, R4 ConceptMap) maps codes of one source code
system (a v2 table) to a target system. ``group.unmapped`` follows R4: ``provided`` passes the
source code through, ``fixed`` uses ``unmapped.code``. A site ConceptMap with the same ``id``
overrides the shipped one code by code (and its ``unmapped``, when given), so a site changes
what it needs and inherits the rest.

Lookups are exact first, then case-insensitive; targets whose equivalence is ``unmatched``
or ``disjoint`` do not count as mappings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Coding", "ConceptMapStore", "Lookup", "TableMap", "index_conceptmap"]

_NO_MATCH = frozenset({"unmatched", "disjoint"})


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out


@dataclass(frozen=True, slots=True)
class Lookup:
    """Result of a translation: ``coding`` is None when nothing can be produced.

    ``mapped`` is False when the code was not in the map (passed through or fixed-unmapped).
    """

    coding: Coding | None
    mapped: bool


@dataclass(slots=True)
class TableMap:
    """One ConceptMap, indexed for lookups."""

    id: str
    url: str
    source_system: str
    codes: dict[str, Coding] = field(default_factory=dict)
    upper: dict[str, Coding] = field(default_factory=dict)
    unmapped_mode: str | None = None
    unmapped: Coding | None = None
    file: str = ""

    def lookup(self, code: str) -> Lookup:
        found = self.codes.get(code) or self.upper.get(code.upper())
        if found is not None:
            return Lookup(found, True)
        if self.unmapped_mode == "fixed" and self.unmapped is not None:
            return Lookup(self.unmapped, False)
        if self.unmapped_mode == "provided":
            return Lookup(Coding(self.source_system, code), False)
        return Lookup(None, False)

    def passthrough(self, code: str) -> Coding:
        """The source code in its own (v2 table) system: what "pass through" means."""
        return Coding(self.source_system, code)


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


def index_conceptmap(resource: dict[str, Any], file: str = "", base: TableMap | None = None) -> TableMap:
    """Index a ConceptMap resource; with ``base`` the resource overrides it code by code."""
    map_id = str(resource.get("id") or "")
    url = str(resource.get("url") or (base.url if base else ""))
    table = TableMap(
        id=map_id,
        url=url,
        source_system=base.source_system if base else "",
        codes=dict(base.codes) if base else {},
        unmapped_mode=base.unmapped_mode if base else None,
        unmapped=base.unmapped if base else None,
        file=file,
    )
    for group in resource.get("group") or []:
        source = str(group.get("source") or "")
        target_system = str(group.get("target") or "")
        if source and not table.source_system:
            table.source_system = source
        for element in group.get("element") or []:
            code = element.get("code")
            if not code:
                continue
            for target in element.get("target") or []:
                if target.get("equivalence") in _NO_MATCH or not target.get("code"):
                    continue
                table.codes[str(code)] = Coding(target_system, str(target["code"]), target.get("display"))
                break
            else:
                table.codes.pop(str(code), None)  # a site may remove a mapping
        unmapped = group.get("unmapped")
        if unmapped:
            table.unmapped_mode = unmapped.get("mode")
            if unmapped.get("code"):
                table.unmapped = Coding(target_system, str(unmapped["code"]), unmapped.get("display"))
    table.upper = {code.upper(): coding for code, coding in table.codes.items()}
    return table


class ConceptMapStore:
    """All ConceptMaps of a mapping directory (plus site overrides), by ``id`` and by ``url``."""

    def __init__(self) -> None:
        self._maps: dict[str, TableMap] = {}
        self.resources: dict[str, tuple[dict[str, Any], str]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._maps

    def __len__(self) -> int:
        return len({id(m) for m in self._maps.values()})

    def get(self, key: str) -> TableMap | None:
        return self._maps.get(key)

    def add(self, resource: dict[str, Any], file: str = "", override: bool = False) -> TableMap:
        map_id = str(resource.get("id") or "")
        base = self._maps.get(map_id) if override else None
        table = index_conceptmap(resource, file, base)
        self._maps[map_id] = table
        if table.url:
            self._maps[table.url] = table
        self.resources[map_id] = (resource, file)
        return table

    def load_dir(self, directory: Path, override: bool = False) -> list[tuple[str, str]]:
        """Load every ``*.json``/``*.yaml`` ConceptMap in ``directory``; returns (file, problem)s."""
        problems: list[tuple[str, str]] = []
        if not directory.is_dir():
            return problems
        for path in sorted(directory.iterdir()):
            if path.suffix not in (".json", ".yaml", ".yml"):
                continue
            try:
                resource = _read(path)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                problems.append((str(path), f"cannot load ConceptMap: {exc.__class__.__name__}"))
                continue
            if not isinstance(resource, dict) or resource.get("resourceType") != "ConceptMap":
                problems.append((str(path), "not a ConceptMap resource"))
                continue
            if not resource.get("id"):
                problems.append((str(path), "ConceptMap has no id"))
                continue
            self.add(resource, str(path), override=override)
        return problems

    def translate(self, key: str, code: str) -> Lookup:
        table = self._maps.get(key)
        if table is None:
            return Lookup(None, False)
        return table.lookup(code)
