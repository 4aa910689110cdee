"""Meoring Hub core: configuration, durable store, FHIR client, pipeline and CLI.

The hub knows FHIR and its own store; every foreign protocol lives in ``adapters/``.
"""

__version__ = "0.1.0"
