"""Hoist of a ship-to-shore container crane: drive motor, gearbox, ropes and spreader.

Normal running is a chain of moves of 60-115 s: lower the empty spreader onto a container, lock
it, hoist it while the trolley starts travelling, hold it for the rest of the way, lower it,
unlock, hoist the empty spreader and travel back. Containers weigh 10-40 t; the spreader and
headblock add 11 t; the rated load is 41 t under the spreader.

Couplings: the drive lifts lighter loads faster (speed ∝ 1/√load: 1.5 m/s with the rated load,
up to 3 m/s with the empty spreader) and ramps at 0.7 m/s². Mechanical power is the hanging
weight times the speed (motoring while hoisting, regenerating while lowering), plus the drive's
losses; the motor current follows the torque, times the field-weakening factor above base speed.
The drive holds a hanging container at zero speed while the trolley travels; the brakes hold the
empty spreader. The motor winding temperature follows the copper losses (current squared) with a
thermal time constant of 900 s; the gearbox oil temperature follows the gear losses, a share of
the transmitted power, with 900 s (together the slowest states). Gearbox vibration grows with
speed, with the torque through the gear mesh and with bearing wear.

Faults: ``overload`` is a container beyond the rating (a mis-declared weight): the load is
higher, the hoist slower, and current, power, temperatures and gear mesh vibration higher.
``bearing_wear`` is a gearbox bearing: vibration and gear losses, and so the gearbox
temperature, rise. ``overheating`` is a failed motor cooling fan: the winding runs hotter for
the same current.

Simplification: the driver's rhythm sets each move's timing, so an overload slows the hoist but
does not shift the later moves (the distance covered is not tracked).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from simulators.models.base import MachineModel, Signal, clamp, lag

_TAU_MOTOR_S = 900.0
_TAU_GEARBOX_S = 900.0

_G = 9.81
_SPREADER_T = 11.0
_RATED_T = 41.0  # container, under the spreader
_F_RATED_KN = (_SPREADER_T + _RATED_T) * _G
_V_BASE = 1.5  # m/s with the rated load
_V_MAX = 3.0  # m/s, empty spreader
_ACCEL = 0.7  # m/s²
_I_RATED_A = 780.0
_I_MAG_A = 90.0
_EFFICIENCY = 0.93
_T_AMBIENT = 25.0

# (name, shortest duration s, extra s at the slowest pace or longest travel, motion, loaded).
# The trolley travels during much of the loaded hoisting and lowering (combined motion); the
# hoist stands still only for the rest of the way.
_PHASES = (
    ("lower_empty", 6.0, 4.0, -1, False),
    ("lock", 3.0, 2.0, 0, False),
    ("hoist_loaded", 16.0, 10.0, 1, True),
    ("travel", 5.0, 10.0, 0, True),
    ("lower_loaded", 16.0, 8.0, -1, True),
    ("unlock", 3.0, 2.0, 0, False),
    ("hoist_empty", 8.0, 4.0, 1, False),
    ("travel_back", 5.0, 10.0, 0, False),
)


class CraneHoist(MachineModel):
    kind = "crane_hoist"
    title = "Container crane hoist"
    signals = (
        Signal("hoist_speed", "m/s", -3.2, 3.2, 0.01, 0.001, "hoist rope speed, up positive"),
        Signal("load", "t", 0.0, 45.0, 0.1, 0.01, "container weight under the spreader"),
        Signal("motor_current", "A", 0.0, 1000.0, 2.0, 0.1, "hoist motor current, rated 780 A"),
        Signal(
            "motor_power",
            "kW",
            -800.0,
            1000.0,
            2.0,
            0.1,
            "hoist drive power, negative when regenerating",
        ),
        Signal("motor_temperature", "°C", 30.0, 90.0, 0.3, 0.01, "hoist motor winding temperature"),
        Signal("gearbox_temperature", "°C", 25.0, 80.0, 0.1, 0.01, "hoist gearbox oil temperature"),
        Signal(
            "gearbox_vibration",
            "mm/s",
            0.0,
            7.1,
            0.05,
            0.001,
            "hoist gearbox vibration velocity, RMS (ISO 10816)",
        ),
    )
    fault_effects = {
        "overload": ("hoist_speed", "load", "motor_current", "motor_power", "motor_temperature",
                     "gearbox_temperature", "gearbox_vibration"),
        "bearing_wear": ("gearbox_temperature", "gearbox_vibration"),
        "overheating": ("motor_temperature",),
    }  # fmt: skip
    settle_s = 7 * max(_TAU_MOTOR_S, _TAU_GEARBOX_S)

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.phase = len(_PHASES) - 1
        self.phase_left = 0.0
        self.mass = 0.0  # this move's container, as declared
        self.extra = 0.0  # weight beyond the declaration (overload), latched at the pick
        self.pace = 0.5
        self.distance = 0.5
        self.speed = 0.0
        self.motor_t = 55.0
        self.gearbox_t = 50.0

    def _next_move(self) -> None:
        # Three draws per move, whatever the faults: keeps runs comparable.
        a, b, c = self.rng.random(), self.rng.random(), self.rng.random()
        self.mass = 10.0 + 30.0 * a
        self.pace = b
        self.distance = c

    def _enter_next_phase(self, overload: float) -> None:
        self.phase = (self.phase + 1) % len(_PHASES)
        if self.phase == 0:
            self._next_move()
        name, shortest, extra, _, _ = _PHASES[self.phase]
        share = self.distance if name.startswith("travel") else self.pace
        self.phase_left += shortest + extra * share
        if name == "hoist_loaded":
            self.extra = 18.0 * overload

    def step(self, dt: float, faults: Mapping[str, float]) -> list[float]:
        overload = faults.get("overload", 0.0)
        wear = faults.get("bearing_wear", 0.0)
        fan_loss = faults.get("overheating", 0.0)
        self.phase_left -= dt
        while self.phase_left <= 0.0:
            self._enter_next_phase(overload)
        _, _, _, motion, loaded = _PHASES[self.phase]

        container = self.mass + self.extra if loaded else 0.0
        force = (_SPREADER_T + container) * _G  # kN
        rel = force / _F_RATED_KN
        # Lighter loads are hoisted faster, heavier ones (beyond the rating too) slower.
        cruise = min(_V_MAX, _V_BASE / math.sqrt(rel))
        # Cruise, then brake to stand still by the end of the phase.
        stopping = abs(self.speed) / _ACCEL >= self.phase_left
        target = 0.0 if stopping else motion * cruise
        self.speed += clamp(target - self.speed, -_ACCEL * dt, _ACCEL * dt)

        # The drive holds a hanging container at zero speed; otherwise the brakes hold.
        driving = motion != 0 or self.speed != 0.0 or loaded
        mech = force * self.speed  # kW, positive hoisting
        power = mech / _EFFICIENCY if mech >= 0.0 else mech * _EFFICIENCY
        if driving:
            # Current follows torque, times the field-weakening factor above base speed.
            torque = _I_RATED_A * rel * max(abs(self.speed), _V_BASE) / _V_BASE
            current = math.sqrt(_I_MAG_A * _I_MAG_A + torque * torque)
            power += 24.0 * (current / _I_RATED_A) ** 2  # drive and copper losses
        else:
            current = 0.0

        ratio = current / _I_RATED_A
        motor_rise = (8.0 + 70.0 * ratio * ratio) / (1.0 - 0.4 * fan_loss)
        self.motor_t = lag(self.motor_t, _T_AMBIENT + motor_rise, dt, _TAU_MOTOR_S)
        gear_heat = (0.03 + 0.01 * wear) * abs(mech) + 0.8 * abs(self.speed)  # kW
        self.gearbox_t = lag(self.gearbox_t, _T_AMBIENT + 4.0 + 3.0 * gear_heat, dt, _TAU_GEARBOX_S)
        vibration = (
            0.3
            + 0.25 * abs(self.speed)
            + 1.2 * rel * rel * min(1.0, abs(self.speed) / 0.5)  # gear mesh, grows with torque
            + 1.6 * wear * abs(self.speed)
        )
        return [
            self.speed,
            container,
            current,
            power,
            self.motor_t,
            self.gearbox_t,
            vibration,
        ]
