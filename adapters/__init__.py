"""Adapters: each subpackage turns one foreign protocol into FHIR and back, and nothing else."""

import hub as _hub  # noqa: F401 - installs the compiled accelerators before any adapter module loads
