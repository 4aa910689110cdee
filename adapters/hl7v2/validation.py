"""``validate_mappings`` for HL7 v2 mapping directories (full check with the HL7 v2 dialect)."""

from __future__ import annotations

from pathlib import Path

from hub.mapping import Problem
from hub.mapping import validate_mappings as _validate

from .functions import FUNCTIONS
from .source import Hl7Dialect

__all__ = ["validate_mappings"]


def validate_mappings(directory: Path | str, *, site_dir: Path | str | None = None) -> list[Problem]:
    """Every problem of an HL7 v2 mapping root (``file:line: message``); [] when all is well.

    This is what ``meoring mappings validate`` runs.
    """
    return _validate(directory, channel="hl7v2", dialect=Hl7Dialect(FUNCTIONS), site_dir=site_dir)
