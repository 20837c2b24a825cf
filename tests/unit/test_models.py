"""The machine models' contract, checked for every model in MODELS.

Each physical fault is run twice through the plant engine, once with the fault and once
without, with the same seed: sensor noise draws are identical between the runs, so any
difference between their values is the fault's doing. A listed signal must move clearly, an
unlisted one not at all, and everything must be back on the clean run once the settle time has
passed.
"""

from __future__ import annotations

import random
import re
from functools import cache

import pytest

from simulators.engine import Plant
from simulators.models import MODELS, PHYSICAL_FAULTS, MachineModel
from simulators.scenario import Scenario

KINDS = sorted(MODELS)
FAULT_CASES = [(kind, fault) for kind in KINDS for fault in MODELS[kind].fault_effects]


SEED = 7
START_S = 20 * 60.0  # faults start after 20 min of normal running

Trace = tuple[tuple[float, tuple[float | None, ...]], ...]


def scenario(
    kind: str,
    duration_s: float,
    faults: tuple[tuple[str, float, float, float], ...] = (),
    *,
    seed: int = SEED,
    speed: float = 60,
    rate_hz: float = 1,
) -> Scenario:
    return Scenario.model_validate({
        "name": "models",
        "seed": seed,
        "speed": speed,
        "rate_hz": rate_hz,
        "duration": duration_s,
        "start": "2026-01-05T06:00:00Z",
        "machines": [{"name": "m1", "kind": kind}],
        "faults": [
            {"machine": "m1", "type": t, "start": s, "duration": d, "severity": sev}
            for t, s, d, sev in faults
        ],
    })  # fmt: skip


@cache
def run(
    kind: str,
    duration_s: float,
    faults: tuple[tuple[str, float, float, float], ...] = (),
    *,
    seed: int = SEED,
    speed: float = 60,
    rate_hz: float = 1,
) -> Trace:
    """(machine time, measured values) for every tick of an unpaced run."""
    plant = Plant(scenario(kind, duration_s, faults, seed=seed, speed=speed, rate_hz=rate_hz))
    machine = plant.machines[0]
    rows = [(plant.elapsed_s, tuple(machine.values))]
    while plant.elapsed_s < duration_s:
        plant.step()
        rows.append((plant.elapsed_s, tuple(machine.values)))
    return tuple(rows)


def diffs(faulty: Trace, clean: Trace, i: int) -> list[tuple[float, float]]:
    """(time, |faulty - clean|) of signal ``i``."""
    out = []
    for (t, a), (_, b) in zip(faulty, clean, strict=True):
        x, y = a[i], b[i]
        assert x is not None
        assert y is not None
        out.append((t, abs(x - y)))
    return out


# -- static contract -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_signals_are_well_formed(kind: str) -> None:
    model = MODELS[kind]
    names = model.signal_names()
    assert 5 <= len(names) <= 10
    assert len(set(names)) == len(names)
    for s in model.signals:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", s.name), s.name
        assert s.unit
        assert s.description
        assert s.low < s.high
        assert s.noise > 0
        # the scaled int16 copy holds the whole range, finely enough for the noise
        assert max(abs(s.low), abs(s.high)) / s.resolution < 32767, s.name
        assert s.resolution <= s.noise / 2, s.name


@pytest.mark.parametrize("kind", KINDS)
def test_fault_effects_name_physical_faults_and_own_signals(kind: str) -> None:
    model = MODELS[kind]
    assert len(model.fault_effects) >= 3
    names = set(model.signal_names())
    for fault, affected in model.fault_effects.items():
        assert fault in PHYSICAL_FAULTS
        assert affected, fault
        assert len(set(affected)) == len(affected)
        assert set(affected) <= names, fault
    assert model.settle_s > 0


def test_leak_is_simulated_on_at_least_two_kinds() -> None:
    assert sum("leak" in m.fault_effects for m in MODELS.values()) >= 2


# -- normal running ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("speed", "duration_s"), [(1, 300.0), (60, 4 * 3600.0)], ids=["5min-at-1s", "4h-at-1min"]
)
@pytest.mark.parametrize("kind", KINDS)
def test_normal_values_stay_within_their_range(kind: str, speed: float, duration_s: float) -> None:
    rows = run(kind, duration_s, speed=speed)
    for i, s in enumerate(MODELS[kind].signals):
        values = [v[i] for _, v in rows]
        seen = [x for x in values if x is not None]
        inside = sum(1 for x in seen if s.low <= x <= s.high)
        assert inside >= 0.95 * len(values), (
            f"{s.name}: {inside}/{len(values)} within {s.low}..{s.high},"
            f" seen {min(seen):g}..{max(seen):g}"
        )


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_values_other_seed_other_values(kind: str) -> None:
    a = run(kind, 3600.0)
    assert run.__wrapped__(kind, 3600.0) == a
    b = run(kind, 3600.0, seed=SEED + 1)
    for i, name in enumerate(MODELS[kind].signal_names()):
        assert [v[i] for _, v in a] != [v[i] for _, v in b], name


class CountingRandom(random.Random):
    """Records every draw, so draw sequences of two runs can be compared."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.draws: list[float] = []

    def random(self) -> float:
        x = super().random()
        self.draws.append(x)
        return x


def model_run(model_cls: type[MachineModel], faults: dict[str, float], steps: int) -> list[float]:
    rng = CountingRandom(3)
    model = model_cls(rng)
    model.step(0.0, {})
    for _ in range(steps):
        model.step(1.0, faults)
    return rng.draws


def model_trace(model_cls: type[MachineModel], fault: str | None, steps: int) -> list[list[float]]:
    """True values every second; ``fault`` at 0.8 from 10 min to 30 min (a ramp for wear)."""
    model = model_cls(random.Random(5))
    out = [model.step(0.0, {})]
    for k in range(1, steps + 1):
        active = fault is not None and 600 <= k < 1800
        level = 0.8 * ((k - 600) / 1200 if fault == "bearing_wear" else 1.0)
        out.append(model.step(1.0, {fault: level} if active and fault else {}))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_random_draws_do_not_depend_on_faults(kind: str) -> None:
    model = MODELS[kind]
    clean = model_run(model, {}, 1800)
    assert clean, "a model with no process variation is not realistic"
    every_fault = dict.fromkeys(model.fault_effects, 1.0)
    assert model_run(model, every_fault, 1800) == clean


@pytest.mark.parametrize(("kind", "fault"), FAULT_CASES)
def test_unlisted_signals_are_untouched_every_second(kind: str, fault: str) -> None:
    """The same check as below on the model alone, at every second rather than every minute."""
    model = MODELS[kind]
    clean = model_trace(model, None, 2400)
    faulty = model_trace(model, fault, 2400)
    for i, name in enumerate(model.signal_names()):
        if name not in model.fault_effects[fault]:
            assert [v[i] for v in faulty] == [v[i] for v in clean], name


# -- physical faults -----------------------------------------------------------------------------
def fault_run(kind: str, fault: str, severity: float, duration_s: float) -> tuple[Trace, Trace]:
    """(faulty, clean) traces, from 20 min before the fault to 10 min past its settle time."""
    total = START_S + duration_s + MODELS[kind].settle_s + 600.0
    faulty = run(kind, total, ((fault, START_S, duration_s, severity),))
    return faulty, run(kind, total)


def moving_duration(fault: str) -> float:
    return 1800.0 if fault == "bearing_wear" else 600.0  # bearing wear ramps up over the fault


@pytest.mark.parametrize(("kind", "fault"), FAULT_CASES)
def test_fault_moves_every_listed_signal(kind: str, fault: str) -> None:
    """A fault of severity 0.6 over 10 min (a 30-min ramp for bearing wear) moves each listed
    signal by more than four times its noise."""
    model = MODELS[kind]
    duration = moving_duration(fault)
    faulty, clean = fault_run(kind, fault, 0.6, duration)
    end = START_S + duration
    for name in model.fault_effects[fault]:
        i = model.signal_names().index(name)
        s = model.signals[i]
        moved = max(d for t, d in diffs(faulty, clean, i) if START_S < t <= end)
        assert moved > 4 * s.noise, f"{name} moved only {moved:.4g} {s.unit}"


@pytest.mark.parametrize("severity", [0.6, 1.0])
@pytest.mark.parametrize(("kind", "fault"), FAULT_CASES)
def test_fault_leaves_other_signals_alone_and_settles(
    kind: str, fault: str, severity: float
) -> None:
    """Unlisted signals are identical to the clean run; all are back on it by end + settle_s.

    Severity 1.0 held for an hour is the worst case for settling."""
    model = MODELS[kind]
    duration = moving_duration(fault) if severity < 1.0 else 3600.0
    faulty, clean = fault_run(kind, fault, severity, duration)
    settled = START_S + duration + model.settle_s
    listed = model.fault_effects[fault]
    problems: list[str] = []
    for i, s in enumerate(model.signals):
        d = diffs(faulty, clean, i)
        if s.name not in listed and any(x != 0.0 for _, x in d):
            problems.append(f"{s.name} is not listed but moved by {max(x for _, x in d):.3g}")
        late = max(x for t, x in d if t >= settled)
        if late > 0.1 * s.noise:
            problems.append(f"{s.name} still {late:.3g} {s.unit} off after settle_s")
    assert not problems, problems
