"""CNC machining centre: spindle, its motor and bearings, and the coolant circuit.

Normal running is a part programme: cutting operations of 40-240 s, each with its own spindle
speed and cutting load, separated by 8-15 s tool changes with the spindle stopped.

Couplings: spindle load = cutting torque plus bearing friction; motor current follows load; the
bearing temperature follows the dissipated power (friction and motor losses) through a thermal
time constant of 180 s, cooled by the coolant; vibration grows with speed squared (imbalance),
with bearing wear, and with an overload.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from simulators.models.base import MachineModel, Signal, clamp, lag

_TAU_BEARING_S = 180.0
_TAU_COOLANT_S = 240.0
_TAU_SPEED_S = 1.5


class CncMachine(MachineModel):
    kind = "cnc"
    title = "CNC machining centre"
    signals = (
        Signal(
            "spindle_speed", "rpm", 0.0, 12000.0, 15.0, 0.5, "spindle speed, 0 during tool changes"
        ),
        Signal("spindle_load", "%", 0.0, 100.0, 0.8, 0.01, "spindle load, % of rated torque"),
        Signal("motor_current", "A", 0.0, 60.0, 0.3, 0.01, "spindle motor current"),
        Signal(
            "bearing_temperature", "°C", 20.0, 70.0, 0.15, 0.01, "front spindle bearing temperature"
        ),
        Signal(
            "vibration_rms",
            "mm/s",
            0.0,
            4.5,
            0.05,
            0.001,
            "spindle housing vibration velocity, RMS (ISO 10816)",
        ),
        Signal("coolant_temperature", "°C", 18.0, 32.0, 0.1, 0.01, "coolant supply temperature"),
        Signal("coolant_flow", "l/min", 0.0, 40.0, 0.4, 0.01, "coolant flow rate"),
    )
    fault_effects = {
        "bearing_wear": ("spindle_load", "motor_current", "bearing_temperature", "vibration_rms"),
        "overheating": ("bearing_temperature", "coolant_temperature", "coolant_flow"),
        "overload": (
            "spindle_speed",
            "spindle_load",
            "motor_current",
            "bearing_temperature",
            "vibration_rms",
            "coolant_temperature",
        ),
    }
    # The coolant lag feeds the bearing lag; with time constants this close the chain needs
    # about 8.5 coolant time constants to settle below a tenth of the noise.
    settle_s = 9 * _TAU_COOLANT_S

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.ambient = 24.0
        self.speed = 0.0
        self.bearing_t = 32.0
        self.coolant_t = 22.0
        self.op_left = 0.0
        self.cutting = False
        self.speed_set = 0.0
        self.cut_load = 0.0

    def _next_operation(self) -> None:
        # Two draws per operation boundary, whatever the faults: keeps runs comparable.
        a, b = self.rng.random(), self.rng.random()
        self.cutting = not self.cutting
        if self.cutting:
            self.op_left = 40.0 + 200.0 * a
            self.speed_set = 6000.0 + 4000.0 * b
            self.cut_load = 35.0 + 30.0 * a
        else:
            self.op_left = 8.0 + 7.0 * b
            self.speed_set = 0.0
            self.cut_load = 0.0

    def step(self, dt: float, faults: Mapping[str, float]) -> list[float]:
        self.op_left -= dt
        while self.op_left <= 0.0:
            carry = self.op_left
            self._next_operation()
            self.op_left += carry
        wear = faults.get("bearing_wear", 0.0)
        cooling_loss = faults.get("overheating", 0.0)
        jam = faults.get("overload", 0.0)

        # A jam loads the spindle and pulls its speed down (the drive is torque-limited).
        speed_target = self.speed_set * (1.0 - 0.25 * jam)
        self.speed = lag(self.speed, speed_target, dt, _TAU_SPEED_S)
        running = self.speed / 10000.0
        friction = (4.0 + 18.0 * wear) * running
        load = clamp(self.cut_load * (1.0 + 0.9 * jam) + friction, 0.0, 100.0)
        current = 4.5 + 0.42 * load + 1.5 * running

        coolant_flow = (28.0 if self.speed_set > 0.0 else 18.0) * (1.0 - 0.85 * cooling_loss)
        # Coolant carries the cutting heat (not the bearing's friction, which stays in the
        # spindle); it heats up when its flow (and chiller) is lost.
        cutting = self.cut_load * (1.0 + 0.9 * jam)
        coolant_target = self.ambient - 2.0 + (0.04 * cutting) * (1.0 + 8.0 * cooling_loss)
        self.coolant_t = lag(self.coolant_t, coolant_target, dt, _TAU_COOLANT_S)
        # Bearing losses: friction (wear) plus a share of the motor's copper losses.
        power_loss = 0.35 * friction + 0.004 * current * current
        cooling = 1.0 - 0.7 * cooling_loss
        bearing_target = self.coolant_t + 6.0 + power_loss * 1.6 / cooling
        self.bearing_t = lag(self.bearing_t, bearing_target, dt, _TAU_BEARING_S)

        vibration = (
            0.35
            + 1.1 * running * running
            + 3.0 * wear * math.sqrt(max(running, 0.0))
            + 1.4 * jam * running
        )
        return [
            self.speed,
            load,
            current,
            self.bearing_t,
            vibration,
            self.coolant_t,
            coolant_flow,
        ]
