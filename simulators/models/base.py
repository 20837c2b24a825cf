"""The contract every simulated machine follows.

A :class:`MachineModel` owns the physics of one machine: its state variables, their couplings and
the process variation of normal running (programmes, duty cycles, demand). It advances by
:meth:`MachineModel.step` and returns the *true* value of every signal; the sensor layer
(:mod:`simulators.sensors`) adds measurement noise and sensor faults on top.

Determinism rule: a model draws from its own ``rng`` only for process variation, and the number
of draws never depends on the faults that are active. So a run with a fault and the same run
without it differ only where the fault acts, which is what the ground-truth labels promise.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from connectors.types import SignalInfo


@dataclass(frozen=True, slots=True)
class Signal:
    """One measured quantity of a machine.

    ``low``..``high`` is the normal engineering range (OPC UA ``EURange``); ``noise`` is the
    sensor's standard deviation in the signal's unit; ``resolution`` is the value of one count in
    the scaled int16 Modbus copy (chosen so the whole range fits in -32768..32767).
    """

    name: str
    unit: str
    low: float
    high: float
    noise: float
    resolution: float
    description: str

    def info(self) -> SignalInfo:
        return SignalInfo(self.name, self.unit, self.low, self.high, self.description)


#: Physical faults a model may support. Sensor faults and communication loss apply to every
#: model and live in the sensor layer and the engine.
PHYSICAL_FAULTS = ("bearing_wear", "overheating", "overload", "leak")


class MachineModel(ABC):
    """Physics of one machine kind. Subclasses fill the class variables and :meth:`step`."""

    kind: ClassVar[str]
    title: ClassVar[str]
    signals: ClassVar[tuple[Signal, ...]]
    #: physical fault -> the signals it perturbs (the ground-truth "affected signals").
    fault_effects: ClassVar[Mapping[str, tuple[str, ...]]]
    #: seconds after a physical fault ends until its effects have decayed below the noise
    #: (about seven of the slowest thermal time constants).
    settle_s: ClassVar[float]

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    @abstractmethod
    def step(self, dt: float, faults: Mapping[str, float]) -> list[float]:
        """Advance ``dt`` seconds of machine time and return true values in ``signals`` order.

        ``faults`` maps each active physical fault to its intensity in 0..1 (absent = 0).
        """

    @classmethod
    def signal_names(cls) -> tuple[str, ...]:
        return tuple(s.name for s in cls.signals)


def lag(value: float, target: float, dt: float, tau: float) -> float:
    """Exact first-order lag: move ``value`` toward ``target`` with time constant ``tau``.

    >>> round(lag(20.0, 80.0, 60.0, 60.0), 3)  # one time constant covers 63.2 %
    57.927
    """
    return target + (value - target) * math.exp(-dt / tau)


def clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value
