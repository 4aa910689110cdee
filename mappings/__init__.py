"""Mapping files shipped with Meoring Hub (package data): YAML maps per channel, ConceptMaps,
the JSON Schema of the YAML files, sample feeds, and an empty site-override layer.

``directory()`` is the root to hand to a translator (``Hl7v2Translator(mappings_dir=...)``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["directory", "samples", "schema_path", "site_directory"]

_ROOT = Path(__file__).resolve().parent


def directory() -> Path:
    """The shipped mapping root (contains ``hl7v2/``, ``conceptmaps/``, ``schema/``)."""
    return _ROOT


def site_directory() -> Path:
    """The shipped (empty) site-override layer; sites usually point to their own directory."""
    return _ROOT / "site"


def schema_path() -> Path:
    """JSON Schema of the YAML mapping files (for editors and ``meoring mappings validate``)."""
    return _ROOT / "schema" / "mapping.schema.json"


def samples(channel: str = "hl7v2") -> Path:
    """Directory of sample messages the quick start replays."""
    return _ROOT / "samples" / channel
