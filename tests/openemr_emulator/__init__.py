"""A contract-faithful OpenEMR 8.2 emulator for the hub's tests (never product code).

See :mod:`tests.openemr_emulator.server`; every behaviour cites ``shared/reference/openemr.md``.
"""

from tests.openemr_emulator.server import OpenEmrEmulator

__all__ = ["OpenEmrEmulator"]
