"""Oil-injected screw air compressor with load/unload control, feeding a plant air network.

Normal running: the plant's air demand wanders between 35 and 80 % of the compressor's
10 m³/min (a new level every 2-10 min). The compressor loads at 6.5 bar and unloads at 7.5 bar,
so the discharge pressure saws between the two; the loaded share of each cycle equals demand
over capacity, and the cycle is shortest at half load.

Couplings: electrical power is about 57 kW loaded (a little more at higher pressure) and 16 kW
unloaded, with a few seconds' transition; motor current is the magnetising current plus the
active current of that power. The delivered air flow (header flow meter after the receiver) is
the network's consumption, which rises with pressure. Three quarters of the power ends up in the
injected oil; a wax thermostat (opening 75-85 °C) holds the oil temperature while the cooler
has reserve and lets it rise once the cooler is fully used; the oil temperature lags with 300 s,
the slowest state. The airend discharge temperature sits above the oil temperature by the
compression heating (large loaded, small unloaded; 20 s). The airend bearing temperature follows
the oil, the load and the bearing's own friction (60 s). Vibration is higher loaded, the more so
the higher the pressure (gas pulsation), and grows with bearing wear.

Faults: ``leak`` is extra consumption in the network (the compressor stays loaded longer, power,
current and flow rise, the oil runs warmer; when demand plus leak exceeds the capacity the
pressure sags below the band). ``overheating`` is a fouled oil cooler (oil, discharge and
bearing temperatures rise). ``bearing_wear`` is an airend bearing (vibration and bearing
temperature rise; its friction, a few hundred watts, is neglected in the power).

Simplification: the load/unload cycle runs on a clock set by the normal demand, and a leak only
changes the loaded share of each cycle. A real relay's cycle period also changes with a leak,
which would leave a lasting phase shift after the leak is fixed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from simulators.models.base import MachineModel, Signal, clamp, lag

_TAU_OIL_S = 300.0
_TAU_DISCHARGE_S = 20.0
_TAU_BEARING_S = 60.0
_TAU_DEMAND_S = 30.0
_TAU_POWER_S = 3.0
_TAU_NETWORK_S = 60.0

_CAPACITY = 10.0  # m³/min free air delivery
_P_LOAD = 6.5  # bar(g): compressor loads
_P_UNLOAD = 7.5  # bar(g): compressor unloads
_POWER_UNLOADED_KW = 16.0
_U_KV = 0.4
_I_MAG_A = 35.0
_T_AMBIENT = 25.0
_COOLER_UA = 0.8  # kW/K with the thermostat fully open
_THERMOSTAT_OPEN = 75.0
_THERMOSTAT_BAND = 10.0


def _oil_equilibrium(heat_kw: float, ua: float) -> float:
    """Oil temperature where the cooler, behind the thermostat, removes ``heat_kw``."""
    full = _T_AMBIENT + heat_kw / ua  # thermostat fully open
    if full >= _THERMOSTAT_OPEN + _THERMOSTAT_BAND:
        return full
    # Proportional thermostat: heat = ua * (T - open) / band * (T - ambient); solve for T.
    a, b = _THERMOSTAT_OPEN, _T_AMBIENT
    return 0.5 * (a + b + math.sqrt((a - b) ** 2 + 4.0 * _THERMOSTAT_BAND * heat_kw / ua))


class ScrewCompressor(MachineModel):
    kind = "compressor"
    title = "Screw air compressor"
    signals = (
        Signal(
            "discharge_pressure",
            "bar",
            6.3,
            7.7,
            0.01,
            0.001,
            "discharge pressure after the receiver, gauge",
        ),
        Signal(
            "air_flow",
            "m³/min",
            0.0,
            12.0,
            0.05,
            0.001,
            "air delivered to the plant network, free air",
        ),
        Signal("power", "kW", 0.0, 70.0, 0.2, 0.01, "electrical power drawn"),
        Signal("motor_current", "A", 0.0, 120.0, 0.4, 0.01, "motor current, rated 100 A"),
        Signal("oil_temperature", "°C", 70.0, 95.0, 0.2, 0.01, "injected oil temperature"),
        Signal(
            "discharge_temperature",
            "°C",
            70.0,
            105.0,
            0.3,
            0.01,
            "airend discharge (element outlet) temperature",
        ),
        Signal(
            "bearing_temperature",
            "°C",
            70.0,
            100.0,
            0.2,
            0.01,
            "airend discharge-side bearing temperature",
        ),
        Signal(
            "vibration_rms",
            "mm/s",
            0.0,
            4.5,
            0.04,
            0.001,
            "airend vibration velocity, RMS (ISO 10816)",
        ),
    )
    fault_effects = {
        "leak": ("discharge_pressure", "air_flow", "power", "motor_current", "oil_temperature",
                 "discharge_temperature", "bearing_temperature", "vibration_rms"),
        "overheating": ("oil_temperature", "discharge_temperature", "bearing_temperature"),
        "bearing_wear": ("bearing_temperature", "vibration_rms"),
    }  # fmt: skip
    settle_s = 7 * _TAU_OIL_S

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.demand = 6.0  # m³/min at 7 bar
        self.demand_set = 6.0
        self.event_left = 0.0
        self.phase = 0.0  # position in the load/unload cycle, 0..1
        self.sag = 0.0  # bar below the band when demand exceeds capacity
        self.power = 40.0
        self.oil_t = 81.0
        self.discharge_t = 87.0
        self.bearing_t = 88.0

    def _next_demand(self) -> None:
        # Two draws per demand change, whatever the faults: keeps runs comparable.
        a, b = self.rng.random(), self.rng.random()
        self.event_left = 120.0 + 480.0 * a
        self.demand_set = 3.5 + 4.5 * b

    def step(self, dt: float, faults: Mapping[str, float]) -> list[float]:
        self.event_left -= dt
        while self.event_left <= 0.0:
            carry = self.event_left
            self._next_demand()
            self.event_left += carry
        leak = faults.get("leak", 0.0)
        fouling = faults.get("overheating", 0.0)
        wear = faults.get("bearing_wear", 0.0)
        self.demand = lag(self.demand, self.demand_set, dt, _TAU_DEMAND_S)

        # The cycle clock: period from the normal demand, shortest (90 s) at half load.
        normal = clamp(self.demand / _CAPACITY, 0.05, 0.95)
        self.phase = (self.phase + dt * 4.0 * normal * (1.0 - normal) / 90.0) % 1.0
        duty = (self.demand + 4.0 * leak) / _CAPACITY  # share of time loaded to keep up
        share = min(duty, 1.0)
        loaded = self.phase < share or duty >= 1.0
        band = _P_UNLOAD - _P_LOAD
        if self.phase < share:
            saw = band * self.phase / share
        else:
            saw = band * (1.0 - (self.phase - share) / (1.0 - share))
        # Near full duty the swings shrink (the compressor hardly unloads); beyond it the
        # network pressure sags until consumption, which falls with pressure, meets capacity.
        swing = clamp((1.0 - duty) / 0.15, 0.0, 1.0)
        sag_target = (_P_LOAD + 1.0) * (1.0 - 1.0 / duty) if duty > 1.0 else 0.0
        self.sag = lag(self.sag, sag_target, dt, _TAU_NETWORK_S)
        pressure = _P_LOAD + swing * saw - self.sag

        power_target = 46.0 + 1.5 * pressure if loaded else _POWER_UNLOADED_KW
        self.power = lag(self.power, power_target, dt, _TAU_POWER_S)
        active = self.power / (math.sqrt(3.0) * _U_KV)
        current = math.sqrt(_I_MAG_A * _I_MAG_A + active * active)
        flow = (self.demand + 4.0 * leak) * (pressure + 1.0) / 8.0
        load = (self.power - _POWER_UNLOADED_KW) / 41.0  # 0 unloaded .. ~1 loaded

        ua = _COOLER_UA * (1.0 - 0.3 * fouling)
        self.oil_t = lag(self.oil_t, _oil_equilibrium(0.75 * self.power, ua), dt, _TAU_OIL_S)
        compression = 3.0 + 6.0 * load + 1.5 * (pressure - 7.0) * load
        self.discharge_t = lag(self.discharge_t, self.oil_t + compression, dt, _TAU_DISCHARGE_S)
        bearing_target = self.oil_t + 5.0 + 3.0 * load + 20.0 * wear
        self.bearing_t = lag(self.bearing_t, bearing_target, dt, _TAU_BEARING_S)
        # Gas pulsation grows with the pressure ratio while loaded.
        vibration = 1.4 + load * (0.4 + 0.6 * (pressure - 6.0)) + 3.0 * wear
        return [
            pressure,
            flow,
            self.power,
            current,
            self.oil_t,
            self.discharge_t,
            self.bearing_t,
            vibration,
        ]
