"""Hydraulic injection moulding machine: barrel heaters, mould, hydraulic power unit.

Normal running is a chain of shots of about 30 s: mould close, injection, holding pressure, then
cooling (while the screw recovers and plasticises the next shot) and mould open. Peak injection
pressure and cycle time are per-shot values that scatter slightly from shot to shot: the first
updates when a shot's injection ends, the second when the shot completes.

Couplings: each barrel zone (setpoints 210/225/235 °C) is held by a proportional heater
controller around the heat the zone needs (losses plus melting the pellets during screw
recovery), so zone temperature dips while heater power rises when the material takes more heat;
zone temperatures lag with 90 s. Peak injection pressure follows melt viscosity (melt
temperature from the front zone), the mould temperature and the hydraulic pressure available.
The mould temperature follows the heat brought in by the melt against the temperature control
unit's cooling (240 s); the cooling time, and so the cycle time, grows as the mould runs hotter
(the part needs longer to reach its ejection temperature). The hydraulic oil temperature follows
the heat from the pump, leakage throttling and pump-bearing friction through the oil cooler
(600 s, the slowest state). Pump vibration is higher while the pump delivers injection and
holding pressure, and grows with bearing wear.

Faults: ``overheating`` is a mould cooling loss (mould hotter, longer cooling, slightly lower
injection pressure); ``leak`` a hydraulic leak (less injection pressure, slower movements, oil
heated by the throttled leakage); ``overload`` cold or wrong material (more heat taken in the
feed and compression zones, colder and stiffer melt: injection pressure up); ``bearing_wear``
the hydraulic pump's bearing (vibration and oil temperature up).

Simplification: shots complete on the nominal cycle clock, so a fault lengthens the reported
cycle time without shifting the later shots; a fault therefore leaves no lasting phase shift.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from simulators.models.base import MachineModel, Signal, lag

_TAU_ZONE_S = 90.0
_TAU_MOULD_S = 240.0
_TAU_OIL_S = 600.0

_SETPOINTS = (210.0, 225.0, 235.0)
_ZONE_LOSS_KW = (0.8, 0.9, 1.0)
#: share of the heaters' melting heat taken by each zone (feed, compression, metering)
_MELT_SHARE = (0.5, 0.35, 0.15)
_MELT_KW = 3.6  # heater share of melting heat while the screw recovers
_KP_KW_PER_K = 0.25  # heater controller gain

# Phases within a shot, seconds from its start: mould close and injection, holding pressure,
# then cooling with screw recovery, mould opening and ejection until the shot's end.
_INJECT_END_S = 3.0
_HOLD_END_S = 9.0
_RECOVER_START_S = 9.5
_RECOVER_S = 7.5

_CYCLE_S = 30.0
_COOL_S = 14.0  # nominal cooling time at the nominal mould temperature
_T_MELT = 230.0
_T_EJECT = 95.0
_T_MOULD_NOM = 50.0
_T_WATER = 45.0  # temperature control unit setpoint
_T_COOLING_WATER = 25.0  # oil cooler water
_OIL_UA_KW_PER_K = 0.2
_PUMP_HEAT_KW = 4.0
_PRESSURE_BAR = 1100.0


def _cooling_log(t_mould: float) -> float:
    """Cooling time is proportional to ln((melt - mould) / (ejection - mould))."""
    t = min(t_mould, _T_EJECT - 10.0)
    return math.log((_T_MELT - t) / (_T_EJECT - t))


_COOL_LOG_NOM = _cooling_log(_T_MOULD_NOM)


class InjectionMouldingMachine(MachineModel):
    kind = "injection_moulding"
    title = "Hydraulic injection moulding machine"
    signals = (
        Signal(
            "barrel_zone1_temperature",
            "°C",
            195.0,
            225.0,
            0.1,
            0.01,
            "barrel feed zone temperature, setpoint 210 °C",
        ),
        Signal(
            "barrel_zone2_temperature",
            "°C",
            210.0,
            240.0,
            0.1,
            0.01,
            "barrel compression zone temperature, setpoint 225 °C",
        ),
        Signal(
            "barrel_zone3_temperature",
            "°C",
            220.0,
            250.0,
            0.1,
            0.01,
            "barrel metering (front) zone temperature, setpoint 235 °C",
        ),
        Signal(
            "mould_temperature", "°C", 35.0, 65.0, 0.2, 0.01, "mould temperature near the cavity"
        ),
        Signal(
            "injection_pressure",
            "bar",
            900.0,
            1300.0,
            3.0,
            0.1,
            "peak specific injection pressure of the last shot",
        ),
        Signal("cycle_time", "s", 25.0, 35.0, 0.05, 0.01, "duration of the last shot"),
        Signal("oil_temperature", "°C", 35.0, 55.0, 0.2, 0.01, "hydraulic oil tank temperature"),
        Signal("heater_power", "kW", 0.0, 10.0, 0.05, 0.001, "barrel heater power, all zones"),
        Signal(
            "pump_vibration",
            "mm/s",
            0.0,
            4.5,
            0.05,
            0.001,
            "hydraulic pump vibration velocity, RMS",
        ),
    )
    fault_effects = {
        "overheating": ("mould_temperature", "injection_pressure", "cycle_time"),
        "leak": ("injection_pressure", "cycle_time", "oil_temperature"),
        "overload": ("barrel_zone1_temperature", "barrel_zone2_temperature",
                     "injection_pressure", "heater_power"),
        "bearing_wear": ("oil_temperature", "pump_vibration"),
    }  # fmt: skip
    settle_s = 7 * _TAU_OIL_S

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.zone_t = list(_SETPOINTS)
        self.mould_t = _T_MOULD_NOM
        self.oil_t = _T_COOLING_WATER + _PUMP_HEAT_KW / _OIL_UA_KW_PER_K
        self.shot_t = 0.0  # seconds into the current shot
        self.shot_len = 0.0  # nominal duration of the current shot; 0 starts the first one
        self.scatter = 0.0  # this shot's pressure scatter, relative
        self.cycle_time = _CYCLE_S
        self.pressure = _PRESSURE_BAR

    def _next_shot(self) -> None:
        # Two draws per shot, whatever the faults: keeps runs comparable.
        a, b = self.rng.random(), self.rng.random()
        self.shot_len = _CYCLE_S + 0.4 * (a - 0.5)
        self.scatter = 0.02 * (b - 0.5)

    def _complete_shot(self, leak: float) -> None:
        """Record the finished shot's cycle time and peak injection pressure."""
        cooling_extra = _COOL_S * (_cooling_log(self.mould_t) / _COOL_LOG_NOM - 1.0)
        # A leak slows the clamp and injection movements: the pump's flow is partly lost.
        self.cycle_time = self.shot_len + cooling_extra + 5.0 * leak

    def step(self, dt: float, faults: Mapping[str, float]) -> list[float]:
        wear = faults.get("bearing_wear", 0.0)
        cooling_loss = faults.get("overheating", 0.0)
        cold = faults.get("overload", 0.0)
        leak = faults.get("leak", 0.0)

        self.shot_t += dt
        while self.shot_t >= self.shot_len:
            self.shot_t -= self.shot_len
            if self.shot_len > 0.0:
                self._complete_shot(leak)
            self._next_shot()
        t = self.shot_t
        pressing = t < _HOLD_END_S
        recovering = _RECOVER_START_S <= t < _RECOVER_START_S + _RECOVER_S
        melting = _MELT_KW if recovering else 0.0
        melting_avg = _MELT_KW * _RECOVER_S / _CYCLE_S

        # Barrel zones under proportional control: offset from setpoint = extra heat / gain.
        heater = 0.0
        for i in range(3):
            extra = 0.8 * cold if i < 2 else 0.0  # cold pellets melt in the feed/compression zones
            need = _ZONE_LOSS_KW[i] + _MELT_SHARE[i] * melting * (1.0 + extra)
            nominal = _ZONE_LOSS_KW[i] + _MELT_SHARE[i] * melting_avg
            target = _SETPOINTS[i] - (need - nominal) / _KP_KW_PER_K
            self.zone_t[i] = lag(self.zone_t[i], target, dt, _TAU_ZONE_S)
            heater += nominal + _KP_KW_PER_K * (_SETPOINTS[i] - self.zone_t[i])

        # Mould: melt heat in (mostly while injecting and holding) against the TCU's cooling; a
        # cooling loss lets the TCU water warm up and weakens the heat transfer.
        heat_in = 2.0 if pressing else 0.6
        rise = 5.0 * heat_in / (1.0 - 0.6 * cooling_loss)
        self.mould_t = lag(self.mould_t, _T_WATER + rise + 15.0 * cooling_loss, dt, _TAU_MOULD_S)

        # Peak injection pressure, taken at the end of the shot's injection phase.
        if t - dt < _INJECT_END_S <= t:
            melt_t = self.zone_t[2] - 12.0 * cold  # cold material leaves the barrel colder
            self.pressure = (
                _PRESSURE_BAR
                * math.exp(-0.015 * (melt_t - _SETPOINTS[2]))
                * math.exp(-0.004 * (self.mould_t - _T_MOULD_NOM))
                * (1.0 - 0.3 * leak)
                * (1.0 + self.scatter)
            )

        oil_heat = _PUMP_HEAT_KW + 2.0 * leak + 1.0 * wear
        self.oil_t = lag(self.oil_t, _T_COOLING_WATER + oil_heat / _OIL_UA_KW_PER_K, dt, _TAU_OIL_S)
        vibration = (1.5 if pressing else 1.1) + 3.5 * wear
        return [
            self.zone_t[0],
            self.zone_t[1],
            self.zone_t[2],
            self.mould_t,
            self.pressure,
            self.cycle_time,
            self.oil_t,
            heater,
            vibration,
        ]
