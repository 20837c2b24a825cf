"""The sensor layer: measurement noise and sensor faults on top of a model's true values.

Each signal draws exactly one standard-normal number per tick from the machine's sensor stream,
whatever is happening; fault-specific randomness (spike timing) comes from each fault's own
stream. So the same seed yields the same values, and a fault changes only its own signal.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from simulators.models.base import Signal

#: OPC UA status codes the simulators use (also stated in Modbus status registers).
GOOD = 0
BAD_SENSOR_FAILURE = 0x808C0000
BAD_NO_COMMUNICATION = 0x80310000


@dataclass(slots=True)
class SensorFault:
    """A scheduled fault on one signal, in machine seconds since the scenario start."""

    type: str
    start: float
    end: float
    severity: float
    rng: random.Random
    frozen: float | None = None

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def progress(self, t: float) -> float:
        return (t - self.start) / (self.end - self.start)


@dataclass(slots=True)
class Sensor:
    """Turns the true value of one signal into what the instrument reports."""

    signal: Signal
    faults: list[SensorFault] = field(default_factory=list)
    last: float = 0.0

    def measure(self, true: float, z: float, t: float, dt: float) -> tuple[float | None, int]:
        """Return (value, status) at machine time ``t``; ``z`` is this tick's N(0,1) draw."""
        sig = self.signal
        noise = sig.noise * z
        span = sig.high - sig.low
        offset = 0.0
        for f in self.faults:
            if not f.active(t):
                f.frozen = None
                continue
            if f.type == "sensor_failure":
                return None, BAD_SENSOR_FAILURE
            if f.type == "stuck":
                if f.frozen is None:
                    f.frozen = self.last
                return f.frozen, GOOD
            if f.type == "noise_burst":
                noise *= 1.0 + 20.0 * f.severity
            elif f.type == "drift":
                offset += 0.5 * f.severity * span * f.progress(t)
            elif f.type == "spike":
                first = t - dt < f.start
                u, size, sign = f.rng.random(), f.rng.random(), f.rng.random()
                if first or u < 1.0 - math.exp(-dt / 10.0):
                    offset += (1.0 if sign < 0.5 else -1.0) * f.severity * span * (0.6 + 0.4 * size)
        value = true + noise + offset
        if sig.low >= 0.0 and value < 0.0:
            value = 0.0  # a speed or flow transmitter does not read negative
        self.last = value
        return value, GOOD
