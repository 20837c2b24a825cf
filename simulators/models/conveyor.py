"""Belt conveyor: direct-on-line induction motor, gearbox, drive pulley and a belt weigher.

Normal running is a varying material feed (250-750 t/h from a reclaimer or crusher, changing
every 1-6 min, with occasional empty-belt spells) onto a belt driven at about 2.5 m/s.

Couplings: the belt load (kg/m, from the belt weigher) is the feed rate over the belt speed. The
resisting force is the empty belt's friction plus a term proportional to the load (friction and
lift of the material); motor power is that force times the drive speed, and the motor current
is its magnetising current plus the active current of that power. The drive speed drops slightly
with load (motor slip) and the belt creeps a little on the drive pulley. The motor winding
temperature follows its copper losses (current squared) with a thermal time constant of 600 s;
the gearbox oil temperature follows the gearbox's losses (a share of the transmitted power plus
bearing friction) with 900 s, the slowest state. Vibration grows with load, with a jam's
stick-slip and with bearing wear.

Faults: ``overload`` is a jam (a seized idler set or a blocked transfer chute): a large extra
resisting force, the current surges, the belt slips on the drive pulley so its speed drops and
material piles up on it, motor and gearbox heat up. ``overheating`` is a failed motor fan (the
winding runs hotter for the same current). ``bearing_wear`` is a gearbox bearing: vibration rises
and its friction heats the gearbox; that friction, some hundred watts, is neglected against the
drive's tens of kilowatts, so the motor's current does not show it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from simulators.models.base import MachineModel, Signal, lag

_TAU_MOTOR_S = 600.0
_TAU_GEARBOX_S = 900.0
_TAU_FEED_S = 20.0

_V_NOMINAL = 2.5  # m/s at no load
_F_EMPTY_KN = 5.6  # empty belt and idler friction
_K_MATERIAL = 0.2  # kN per kg/m of material on the belt
_F_RATED_KN = 30.0  # 75 kW at 2.5 m/s
_EFFICIENCY = 0.94
_U_KV = 0.4
_I_MAG_A = 40.0
_I_RATED_A = 135.0
_T_AMBIENT = 20.0


class Conveyor(MachineModel):
    kind = "conveyor"
    title = "Belt conveyor"
    signals = (
        Signal("belt_speed", "m/s", 2.3, 2.6, 0.005, 0.001, "belt speed at the tail pulley"),
        Signal("belt_load", "kg/m", 0.0, 100.0, 0.5, 0.01, "material on the belt (belt weigher)"),
        Signal("motor_current", "A", 0.0, 135.0, 0.3, 0.01, "drive motor current, rated 135 A"),
        Signal("motor_temperature", "°C", 20.0, 80.0, 0.2, 0.01, "motor winding temperature"),
        Signal("gearbox_temperature", "°C", 20.0, 70.0, 0.2, 0.01, "gearbox oil sump temperature"),
        Signal(
            "vibration_rms",
            "mm/s",
            0.0,
            2.8,
            0.04,
            0.001,
            "gearbox input bearing vibration velocity, RMS (ISO 10816)",
        ),
    )
    fault_effects = {
        "overload": ("belt_speed", "belt_load", "motor_current", "motor_temperature",
                     "gearbox_temperature", "vibration_rms"),
        "overheating": ("motor_temperature",),
        "bearing_wear": ("gearbox_temperature", "vibration_rms"),
    }  # fmt: skip
    settle_s = 7 * _TAU_GEARBOX_S

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.feed = 500.0  # t/h
        self.feed_set = 500.0
        self.event_left = 0.0
        self.motor_t = 55.0
        self.gearbox_t = 45.0

    def _next_feed(self) -> None:
        # Three draws per feed change, whatever the faults: keeps runs comparable.
        a, b, c = self.rng.random(), self.rng.random(), self.rng.random()
        self.event_left = 60.0 + 300.0 * a
        self.feed_set = 0.0 if c < 0.12 else 250.0 + 500.0 * b

    def step(self, dt: float, faults: Mapping[str, float]) -> list[float]:
        self.event_left -= dt
        while self.event_left <= 0.0:
            carry = self.event_left
            self._next_feed()
            self.event_left += carry
        jam = faults.get("overload", 0.0)
        fan_loss = faults.get("overheating", 0.0)
        wear = faults.get("bearing_wear", 0.0)
        self.feed = lag(self.feed, self.feed_set, dt, _TAU_FEED_S)

        # Speed and load depend on each other through the slip; one fixed-point pass is plenty.
        v_belt = _V_NOMINAL
        load = 0.0
        force = 0.0
        v_drive = _V_NOMINAL
        for _ in range(2):
            load = self.feed / (3.6 * v_belt)
            force = _F_EMPTY_KN + _K_MATERIAL * load + 0.6 * _F_RATED_KN * jam
            v_drive = _V_NOMINAL * (1.0 - 0.015 * force / _F_RATED_KN)
            # Elastic creep on the drive pulley, and gross slip when a jam holds the belt back.
            v_belt = v_drive * (1.0 - 0.004 * force / _F_RATED_KN) * (1.0 - 0.25 * jam)
        power = force * v_drive / _EFFICIENCY  # kW electrical
        active = power / (math.sqrt(3.0) * _U_KV)
        current = math.sqrt(_I_MAG_A * _I_MAG_A + active * active)

        ratio = current / _I_RATED_A
        motor_rise = (15.0 + 45.0 * ratio * ratio) * (1.0 + 0.6 * fan_loss)
        self.motor_t = lag(self.motor_t, _T_AMBIENT + motor_rise, dt, _TAU_MOTOR_S)
        gearbox_heat = 0.02 * force * v_drive + 0.5 * wear  # kW: gear losses, bearing friction
        self.gearbox_t = lag(
            self.gearbox_t, _T_AMBIENT + 6.0 + 15.0 * gearbox_heat, dt, _TAU_GEARBOX_S
        )
        vibration = 0.9 + 0.4 * force / _F_RATED_KN + 1.2 * jam + 3.5 * wear
        return [v_belt, load, current, self.motor_t, self.gearbox_t, vibration]
