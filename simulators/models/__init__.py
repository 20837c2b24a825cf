"""Machine models: the simulated physics that both simulator servers serve.

Models are listed here explicitly (no import-time registration).
"""

from simulators.models.base import PHYSICAL_FAULTS, MachineModel, Signal
from simulators.models.cnc import CncMachine

MODELS: dict[str, type[MachineModel]] = {m.kind: m for m in (CncMachine,)}

__all__ = ["MODELS", "PHYSICAL_FAULTS", "MachineModel", "Signal"]
