"""Meoring Hub core: configuration, durable store, FHIR client, pipeline and CLI.

The hub knows FHIR and its own store; every foreign protocol lives in ``adapters/``.
"""

from hub import accel as _accel

__version__ = "0.1.0"

# Before anything imports the modules it may replace with their compiled build (hub.accel).
_accel.install()
