"""Machine models: the simulated physics that both simulator servers serve.

Models are listed here explicitly (no import-time registration).
"""

from simulators.models.base import PHYSICAL_FAULTS, MachineModel, Signal
from simulators.models.cnc import CncMachine
from simulators.models.compressor import ScrewCompressor
from simulators.models.conveyor import Conveyor
from simulators.models.crane import CraneHoist
from simulators.models.injection import InjectionMouldingMachine

MODELS: dict[str, type[MachineModel]] = {
    m.kind: m for m in (CncMachine, InjectionMouldingMachine, Conveyor, ScrewCompressor, CraneHoist)
}

__all__ = ["MODELS", "PHYSICAL_FAULTS", "MachineModel", "Signal"]
