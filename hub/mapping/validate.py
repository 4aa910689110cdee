"""``validate_mappings``: every problem of a mapping directory, as ``file:line: message``.

Checks, in order: YAML syntax; the JSON Schema (``schema/mapping.schema.json``); paths, targets,
conditions and transforms (with the channel's dialect); references between files (maps,
identities, ConceptMaps); map cycles; ConceptMaps as valid R4 resources.
"""

from __future__ import annotations

from pathlib import Path

from hub.errors import ValidationFailed
from hub.fhir.validation import validate_resource

from .model import Problem
from .repository import MappingRepository
from .source import Dialect

__all__ = ["validate_mappings"]


class _PermissiveDialect:
    """Accepts every path and transform: used when no channel dialect is given (structure-only check)."""

    name = "any"

    def compile_path(self, text: str) -> str:
        if not str(text).strip():
            raise ValueError("empty path")
        return text

    @property
    def functions(self) -> dict[str, object]:
        return _AnyFunctions()


class _AnyFunctions(dict[str, object]):
    def get(self, key: str, default: object = None) -> object:
        return lambda *args: None


def validate_mappings(
    directory: Path | str,
    *,
    channel: str = "hl7v2",
    dialect: Dialect | None = None,
    site_dir: Path | str | None = None,
) -> list[Problem]:
    """All problems of the mapping root ``directory`` (and ``site_dir`` over it); [] when valid.

    Without ``dialect`` source paths and transform names are not checked (use the adapter's
    ``validate_mappings``, e.g. :func:`adapters.hl7v2.validate_mappings`, for a full check).
    """
    root = Path(directory)
    repo = MappingRepository.load(
        root,
        channel=channel,
        dialect=dialect or _PermissiveDialect(),  # type: ignore[arg-type]
        site_dir=Path(site_dir) if site_dir is not None else None,
    )
    problems = list(repo.problems)
    for resource, file in repo.concepts.resources.values():
        try:
            validate_resource(resource)
        except ValidationFailed as exc:
            problems.append(Problem(file, 0, f"ConceptMap is not valid R4: {exc}"))
    return problems
