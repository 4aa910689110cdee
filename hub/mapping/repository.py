"""Loading a mapping directory: YAML maps, ConceptMaps, and the site-override layer.

Layout of a mapping root (``mappings/`` in the distribution)::

    <root>/schema/mapping.schema.json     JSON Schema of the YAML files
    <root>/conceptmaps/*.json|yaml        FHIR R4 ConceptMaps (v2 tables → FHIR codes)
    <root>/<channel>/messages/*.yaml      one per message structure   (kind: message)
    <root>/<channel>/segments/*.yaml      reusable segment maps        (kind: segment)
    <root>/<channel>/datatypes/*.yaml     reusable datatype maps       (kind: datatype)
    <root>/<channel>/identities/*.yaml    reusable resource identities (kind: identity)

A site directory has the same layout. A site file whose ``id`` equals a shipped one replaces
it; site ConceptMaps override shipped ones code by code (:mod:`.conceptmap`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conceptmap import ConceptMapStore
from .model import IdentityDef, MapDef, MessageMap, Problem, ResourceSpec, Rule, ScopeSpec, compile_file
from .schema import check
from .source import Dialect
from .yamlload import YamlError, load_yaml

__all__ = ["MappingRepository", "load_schema"]

SCHEMA_FILE = Path("schema") / "mapping.schema.json"


def load_schema(root: Path) -> dict[str, Any] | None:
    path = root / SCHEMA_FILE
    if not path.is_file():
        return None
    loaded = json.loads(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else None


def _display(path: Path, bases: tuple[Path, ...]) -> str:
    for base in bases:
        try:
            return str(path.relative_to(base.parent))
        except ValueError:
            continue
    return str(path)


@dataclass(slots=True)
class MappingRepository:
    """Every compiled map of one channel, plus ConceptMaps; ``problems`` lists what is wrong."""

    channel: str
    messages: dict[str, MessageMap] = field(default_factory=dict)
    maps: dict[str, MapDef] = field(default_factory=dict)
    identities: dict[str, IdentityDef] = field(default_factory=dict)
    concepts: ConceptMapStore = field(default_factory=ConceptMapStore)
    problems: list[Problem] = field(default_factory=list)
    _index: dict[tuple[str, str], MessageMap] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        root: Path,
        *,
        channel: str,
        dialect: Dialect,
        site_dir: Path | None = None,
    ) -> MappingRepository:
        """Load and compile ``root`` (and ``site_dir`` over it); never raises for bad files:
        read :attr:`problems`."""
        repo = cls(channel=channel)
        schema = load_schema(root)
        bases = (root,) if site_dir is None else (root, site_dir)
        for layer, override in ((root, False), (site_dir, True)):
            if layer is None:
                continue
            for file, problem in repo.concepts.load_dir(layer / "conceptmaps", override=override):
                repo.problems.append(Problem(_display(Path(file), bases), 0, problem))
            channel_dir = layer / channel
            if not channel_dir.is_dir():
                if not override:
                    repo.problems.append(Problem(str(channel_dir), 0, "mapping directory not found"))
                continue
            for path in sorted(channel_dir.rglob("*.y*ml")):
                repo._load_file(path, _display(path, bases), dialect, schema)
        repo._link()
        repo._build_index()
        return repo

    def _load_file(self, path: Path, display: str, dialect: Dialect, schema: dict[str, Any] | None) -> None:
        try:
            document = load_yaml(path)
        except YamlError as exc:
            self.problems.append(Problem(display, exc.line, str(exc)))
            return
        if schema is not None:
            found = check(document, schema)
            if found:
                self.problems.extend(Problem(display, p.line, p.message) for p in found)
                return
        compiled, problems = compile_file(document, display, dialect)
        self.problems.extend(problems)
        if isinstance(compiled, MessageMap):
            self.messages[compiled.id] = compiled
        elif isinstance(compiled, MapDef):
            self.maps[compiled.id] = compiled
        elif isinstance(compiled, IdentityDef):
            self.identities[compiled.id] = compiled

    def _link(self) -> None:
        def link(rules: list[Rule]) -> None:
            for rule in rules:
                file, _, line = rule.where.rpartition(":")
                if rule.map_id:
                    rule.map = self.maps.get(rule.map_id)
                    if rule.map is None:
                        self.problems.append(Problem(file, int(line), f"unknown map {rule.map_id!r}"))
                if rule.vocabulary and rule.vocabulary not in self.concepts:
                    self.problems.append(Problem(file, int(line), f"unknown ConceptMap {rule.vocabulary!r}"))
                if rule.inline:
                    link(rule.inline)

        def walk(items: list[ResourceSpec | ScopeSpec]) -> None:
            for item in items:
                if isinstance(item, ResourceSpec):
                    link(item.rules)
                    if item.identity_ref:
                        identity = self.identities.get(item.identity_ref)
                        if identity is None:
                            file, _, line = item.where.rpartition(":")
                            self.problems.append(Problem(file, int(line), f"unknown identity {item.identity_ref!r}"))
                        else:
                            item.identity = identity.alternatives
                else:
                    walk(item.items)

        for mapdef in self.maps.values():
            link(mapdef.rules)
        for message in self.messages.values():
            walk(message.items)
        self._check_cycles()

    def _check_cycles(self) -> None:
        """A map that (indirectly) applies itself would never end."""

        def uses(rules: list[Rule]) -> set[str]:
            out: set[str] = set()
            for rule in rules:
                if rule.map is not None:
                    out.add(rule.map.id)
                if rule.inline:
                    out |= uses(rule.inline)
            return out

        graph = {map_id: uses(mapdef.rules) for map_id, mapdef in self.maps.items()}
        for start, mapdef in self.maps.items():
            seen: set[str] = set()
            stack = list(graph[start])
            while stack:
                current = stack.pop()
                if current == start:
                    self.problems.append(Problem(mapdef.file, mapdef.line, f"map {start!r} applies itself"))
                    break
                if current not in seen:
                    seen.add(current)
                    stack.extend(graph.get(current, ()))

    def _build_index(self) -> None:
        for message in self.messages.values():
            for structure in message.structures:
                for event in message.events or ("",):
                    self._index[(structure, event)] = message

    def message_for(self, structure: str, event: str) -> MessageMap | None:
        """The message map for a structure and trigger event (event-specific maps win)."""
        return self._index.get((structure, event)) or self._index.get((structure, ""))

    @property
    def structures(self) -> frozenset[str]:
        return frozenset(s for s, _ in self._index)
