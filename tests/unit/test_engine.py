"""The plant engine: determinism, clock, labels, sensor faults and communication loss."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from simulators.engine import Plant
from simulators.scenario import load_scenario
from simulators.sensors import BAD_NO_COMMUNICATION, BAD_SENSOR_FAILURE, GOOD
from tests.conftest import CONFIGS, make_scenario


def trace(plant: Plant, ticks: int) -> list[list[list[float | None]]]:
    out = []
    for _ in range(ticks):
        plant.step()
        out.append([list(m.values) for m in plant.machines])
    return out


def test_same_seed_same_values() -> None:
    scn = load_scenario(CONFIGS / "scenarios" / "demo.yaml")
    a, b = Plant(scn), Plant(scn)
    assert trace(a, 300) == trace(b, 300)


def test_other_seed_other_values() -> None:
    scn = load_scenario(CONFIGS / "scenarios" / "demo.yaml")
    other = scn.model_copy(update={"seed": scn.seed + 1})
    assert trace(Plant(scn), 50) != trace(Plant(other), 50)


def test_clock_advances_speed_over_rate_machine_seconds_per_tick() -> None:
    scn = make_scenario(speed=60, rate_hz=4)
    plant = Plant(scn)
    t0 = plant.time_ns
    for _ in range(8):
        plant.step()
    assert plant.elapsed_s == pytest.approx(120.0)
    assert plant.time_ns - t0 == 120 * 10**9
    assert t0 == 1_767_592_800 * 10**9  # 2026-01-05T06:00:00Z, the scenario's start


def test_labels_are_emitted_when_a_fault_starts() -> None:
    scn = make_scenario(
        faults=[
            {"machine": "cnc-01", "type": "overload", "start": "10m", "duration": "5m"},
            {"machine": "cnc-01", "type": "drift", "signal": "coolant_flow", "start": "2m",
             "duration": "1m", "severity": 0.3},
        ]
    )  # fmt: skip
    plant = Plant(scn)
    labels: list[dict[str, Any]] = []
    plant.on_label = labels.append
    for _ in range(5):
        plant.step()
    assert [lb["fault"] for lb in labels] == ["drift"]
    for _ in range(10):
        plant.step()
    assert [lb["fault"] for lb in labels] == ["drift", "overload"]
    overload = labels[1]
    assert overload["machine"] == "cnc-01"
    assert overload["start"] == "2026-01-05T06:10:00.000+00:00"
    assert overload["end"] == "2026-01-05T06:15:00.000+00:00"
    assert overload["effects_until_s"] > overload["end_s"]
    assert "spindle_load" in overload["signals"]
    assert labels[0]["signals"] == ["coolant_flow"]
    assert labels[0]["effects_until_s"] == labels[0]["end_s"]


def run_pair(fault: dict[str, Any], ticks: int = 60) -> tuple[Plant, list[Any], list[Any]]:
    """The same scenario with and without ``fault``: per-tick (t, values, status, online)."""
    runs = []
    for faults in ([fault], []):
        plant = Plant(make_scenario(faults=faults))
        rows = []
        for _ in range(ticks):
            plant.step()
            m = plant.machines[0]
            rows.append((plant.elapsed_s, list(m.values), list(m.status), m.online))
        runs.append(rows)
    return plant, runs[0], runs[1]


SENSOR = {"machine": "cnc-01", "signal": "coolant_temperature", "start": "20m", "duration": "10m"}


def split(faulty: list[Any], clean: list[Any], idx: int) -> tuple[list[Any], list[Any]]:
    """(inside, outside) lists of (faulty_value, clean_value, status) for signal ``idx``."""
    inside, outside = [], []
    for (t, fv, fs, _), (_, cv, _, _) in zip(faulty, clean, strict=True):
        row = (fv[idx], cv[idx], fs[idx])
        (inside if 1200 <= t < 1800 else outside).append(row)
    return inside, outside


def assert_only_target_changed(faulty: list[Any], clean: list[Any], idx: int) -> None:
    for (_, fv, _, _), (_, cv, _, _) in zip(faulty, clean, strict=True):
        assert [v for i, v in enumerate(fv) if i != idx] == [
            v for i, v in enumerate(cv) if i != idx
        ]
    _, outside = split(faulty, clean, idx)
    assert all(f == c for f, c, _ in outside)


IDX = 5  # coolant_temperature in the CNC model
SPAN = 32.0 - 18.0


def test_spike_signature_only_inside_its_window() -> None:
    _, faulty, clean = run_pair({**SENSOR, "type": "spike", "severity": 0.5})
    inside, _ = split(faulty, clean, IDX)
    assert max(abs(f - c) for f, c, _ in inside) >= 0.5 * 0.6 * SPAN
    assert_only_target_changed(faulty, clean, IDX)


def test_stuck_sensor_flatlines() -> None:
    _, faulty, clean = run_pair({**SENSOR, "type": "stuck"})
    inside, _ = split(faulty, clean, IDX)
    assert len({f for f, _, _ in inside}) == 1
    assert len({c for _, c, _ in inside}) == len(inside)
    assert_only_target_changed(faulty, clean, IDX)


def test_drift_grows_through_the_window() -> None:
    _, faulty, clean = run_pair({**SENSOR, "type": "drift", "severity": 0.4})
    inside, _ = split(faulty, clean, IDX)
    offsets = [f - c for f, c, _ in inside]
    assert offsets == sorted(offsets)
    assert offsets[-1] == pytest.approx(0.5 * 0.4 * SPAN * 9 / 10, rel=0.01)
    assert_only_target_changed(faulty, clean, IDX)


def test_noise_burst_multiplies_the_noise() -> None:
    _, faulty, clean = run_pair({**SENSOR, "type": "noise_burst", "severity": 0.5})
    inside, _ = split(faulty, clean, IDX)
    extra = [abs(f - c) for f, c, _ in inside]
    assert max(extra) > 5 * 0.1  # the coolant sensor's sigma is 0.1 °C
    assert_only_target_changed(faulty, clean, IDX)


def test_sensor_failure_is_bad_status_not_a_made_up_value() -> None:
    _, faulty, clean = run_pair({**SENSOR, "type": "sensor_failure"})
    inside, outside = split(faulty, clean, IDX)
    assert all(f is None and s == BAD_SENSOR_FAILURE for f, _, s in inside)
    assert all(s == GOOD for _, _, s in outside)
    assert_only_target_changed(faulty, clean, IDX)


def test_comm_loss_marks_every_signal_and_only_in_its_window() -> None:
    fault = {"machine": "cnc-01", "type": "comm_loss", "start": "20m", "duration": "10m"}
    _, faulty, clean = run_pair(fault)
    for (t, fv, fs, online), (_, cv, _, _) in zip(faulty, clean, strict=True):
        lost = 1200 <= t < 1800
        assert online is not lost
        assert all((s == BAD_NO_COMMUNICATION) is lost for s in fs)
        assert fv == cv  # the machine keeps running; only its link is down


def test_plant_state_is_picklable_for_checkpoints() -> None:
    plant = Plant(make_scenario())
    plant.step()
    clone = pickle.loads(pickle.dumps(plant))
    assert trace(clone, 10) == trace(plant, 10)
