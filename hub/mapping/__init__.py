"""The protocol-neutral mapping engine: declarative YAML maps + FHIR ConceptMaps → FHIR R4.

An adapter supplies a :class:`~.source.Dialect` (source path syntax and transform functions)
and a tree of :class:`~.source.SourceNode`; this package loads and checks mapping directories
(:class:`MappingRepository`, :func:`validate_mappings`), evaluates message maps
(:class:`MappingEngine`) with deterministic ids (:func:`make_id`), and assembles transaction
Bundles and Provenance (:func:`transaction`, :func:`provenance`). It never imports adapters.
"""

from __future__ import annotations

from .bundle import provenance, transaction
from .conceptmap import Coding, ConceptMapStore, Lookup
from .engine import Built, EngineResult, MappingEngine, TraceEntry
from .identity import make_id
from .model import MapDef, MessageMap, Problem
from .repository import MappingRepository
from .source import Dialect, Function, FunctionContext, SourceNode
from .target import Choice
from .validate import validate_mappings

__all__ = [
    "Built",
    "Choice",
    "Coding",
    "ConceptMapStore",
    "Dialect",
    "EngineResult",
    "Function",
    "FunctionContext",
    "Lookup",
    "MapDef",
    "MappingEngine",
    "MappingRepository",
    "MessageMap",
    "Problem",
    "SourceNode",
    "TraceEntry",
    "make_id",
    "provenance",
    "transaction",
    "validate_mappings",
]
