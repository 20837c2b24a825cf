"""Detectors: a conformance suite every detector passes, the machine analyzer, episode scoring.

The conformance suite runs over a list of detector factories: the per-signal detectors of
``analytics.signals`` and, when importable, the multivariate ones of ``analytics.multivariate``.
Each detector is trained on the same kind of normal running (flow and pressure follow a slowly
wandering load, temperature is noise), then shown the fault it is meant to catch on ``flow``.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analytics.machine import AnalyzerConfig, MachineAnalyzer, Model, SignalMeta, StepResult
from analytics.scoring import Label, Raised, score
from analytics.signals import Detector, Flatline, Gaps, Limits, RateOfChange, RobustBaseline

try:
    from analytics import multivariate
except ImportError:  # pragma: no cover - scikit-learn missing
    multivariate = None  # type: ignore[assignment]

COLUMNS = ("flow", "pressure", "power", "temp")
UNITS = {"flow": "m³/h", "pressure": "bar", "power": "kW", "temp": "°C"}
RANGES = {"flow": (10.0, 50.0), "pressure": (0.0, 10.0), "power": (20.0, 60.0),
          "temp": (40.0, 80.0)}  # fmt: skip
NORMAL = {"flow": 30.0, "pressure": 5.0, "power": 40.0, "temp": 60.0}
TRAIN, CONT = 600, 600
K = 300  # the fault starts at this row of the continuation
SEED = 1


# -- data -----------------------------------------------------------------------------------------
def normal(seed: int, n: int = TRAIN + CONT) -> np.ndarray:
    """Rows of normal running: flow, pressure and power follow a slowly wandering load (std 1,
    correlation time ~50 s), temperature is noise."""
    rng = np.random.default_rng(seed)
    load = np.convolve(rng.normal(0, 1, n + 49), np.ones(50) / math.sqrt(50), "valid")
    return np.column_stack([
        30 + 2 * load + rng.normal(0, 0.5, n),
        5 + 0.4 * load + rng.normal(0, 0.1, n),
        40 + 3 * load + rng.normal(0, 0.8, n),
        60 + rng.normal(0, 0.3, n),
    ])  # fmt: skip


FAULT_ROWS = {"step": 30, "spike": 1, "freeze": 100, "nan": 60, "range": 5}


def inject(kind: str, cont: np.ndarray) -> np.ndarray:
    """The continuation with a fault on flow at rows K .. K + FAULT_ROWS[kind]."""
    x = cont.copy()
    sl = slice(K, K + FAULT_ROWS[kind])
    if kind in ("step", "spike"):
        x[sl, 0] += 25.0  # about 12 times the normal spread of flow
    elif kind == "freeze":
        x[sl, 0] = x[K, 0]
    elif kind == "nan":
        x[sl, 0] = np.nan
    elif kind == "range":
        x[sl, 0] = 80.0
    else:  # pragma: no cover
        raise ValueError(kind)
    return x


def row(values: Iterable[float]) -> dict[str, float]:
    return dict(zip(COLUMNS, (float(v) for v in values), strict=True))


# -- the detectors under test ---------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], Any]
    fault: str  # what it is meant to catch (see inject)
    multivariate: bool = False  # trained by fit(X), scored without t_s
    trained: bool = True  # False: works from its configuration alone


CASES = [
    Case("baseline", lambda: RobustBaseline(COLUMNS, units=UNITS), "step"),
    Case("rate", lambda: RateOfChange(COLUMNS, units=UNITS), "spike"),
    Case("flatline", lambda: Flatline(COLUMNS, units=UNITS), "freeze"),
    Case("gap", lambda: Gaps(COLUMNS, units=UNITS), "nan"),
    Case("limits", lambda: Limits(COLUMNS, RANGES, units=UNITS), "range", trained=False),
]
if multivariate is not None:
    mv = multivariate
    CASES += [
        Case("pca-t2q", lambda: mv.PcaT2Q(COLUMNS, units=UNITS, seed=3), "step", True),
        # 25 trees instead of the default 100: fast enough for a unit test, same contract.
        Case("iforest", lambda: mv.IsolationForestDetector(COLUMNS, units=UNITS, seed=3,
                                                           n_estimators=25), "step", True),
    ]  # fmt: skip


def cases(test: str, only: Callable[[Case], bool] = lambda c: True) -> list[Any]:
    return [pytest.param(c, id=c.id) for c in CASES if only(c)]


def train(case: Case, x: np.ndarray) -> Any:
    det = case.make()
    if case.multivariate:
        det.fit(x)
    else:
        for i, r in enumerate(x):
            det.learn_one(row(r), t_s=float(i))
        det.fit()
    return det


@cache
def _trained_bytes(case_id: str, seed: int) -> bytes:
    case = next(c for c in CASES if c.id == case_id)
    return pickle.dumps(train(case, normal(seed)[:TRAIN]))


def trained(case: Case, seed: int = SEED) -> Any:
    """A fresh copy of the detector trained on ``normal(seed)[:TRAIN]`` (fitted once)."""
    return pickle.loads(_trained_bytes(case.id, seed))


def score_one(case: Case, det: Any, x: dict[str, float], t: float) -> float:
    return float(det.score_one(x) if case.multivariate else det.score_one(x, t_s=t))


def run(case: Case, det: Any, x: np.ndarray, t0: float = TRAIN) -> np.ndarray:
    """Scores of consecutive rows: ``score_one`` row by row (the multivariate detectors: their
    batch twin ``score_many``, checked against ``score_one`` below; forests are slow per row)."""
    if case.multivariate:
        return np.asarray(det.score_many(x), dtype=float)
    return np.array([score_one(case, det, row(r), t0 + i) for i, r in enumerate(x)])


def continuation(seed: int = SEED) -> np.ndarray:
    return normal(seed)[TRAIN:]


# -- conformance ----------------------------------------------------------------------------------
def test_every_detector_has_its_own_name() -> None:
    names = [c.make().name for c in CASES]
    assert all(names) and len(set(names)) == len(names)


@pytest.mark.parametrize("case", cases("test_follows_the_detector_protocol"))
def test_follows_the_detector_protocol(case: Case) -> None:
    det = case.make()
    assert isinstance(det, Detector)
    assert det.name == case.id


@pytest.mark.parametrize(
    "case", cases("test_score_many_matches_score_one", lambda c: c.multivariate)
)
def test_score_many_matches_score_one(case: Case) -> None:
    faulty = inject(case.fault, continuation())[K - 50 : K + 50]
    one, many = trained(case), trained(case)
    singles = [score_one(case, one, row(r), 0.0) for r in faulty]
    np.testing.assert_allclose(many.score_many(faulty), singles, rtol=1e-9, atol=1e-12)
    assert max(singles) > 0


@pytest.mark.parametrize("case", cases("test_deterministic"))
def test_deterministic(case: Case) -> None:
    data = normal(SEED)
    faulty = inject(case.fault, data[TRAIN:])
    first = run(case, train(case, data[:TRAIN]), faulty)
    second = run(case, train(case, normal(SEED)[:TRAIN]), faulty)
    np.testing.assert_array_equal(first, second)
    assert first.max() > 0  # scores at all: equality of two zero arrays would prove nothing


@pytest.mark.parametrize("case", cases("test_pickle_round_trip_mid_stream"))
def test_pickle_round_trip_mid_stream(case: Case) -> None:
    det = trained(case)
    faulty = inject(case.fault, continuation())
    run(case, det, faulty[: K + 2])  # mid-stream: inside the fault, state is not at rest
    clone = pickle.loads(pickle.dumps(det))
    rest = faulty[K + 2 :]
    expected = run(case, det, rest, TRAIN + K + 2)
    got = run(case, clone, rest, TRAIN + K + 2)
    np.testing.assert_array_equal(got, expected)
    assert clone.explain() == det.explain()


@pytest.mark.parametrize("case", cases("test_fault_scores_above_the_limit_and_the_baseline"))
def test_fault_scores_above_the_limit_and_the_baseline(case: Case) -> None:
    det = trained(case)
    s = run(case, det, inject(case.fault, continuation()))
    baseline = s[:K].max()
    peak = s[K : K + FAULT_ROWS[case.fault] + 30].max()
    assert peak >= 1.0, (baseline, peak)
    assert peak > baseline, (baseline, peak)
    assert peak > 2 * baseline  # not a close call


@pytest.mark.parametrize("case", cases("test_explain_names_the_perturbed_signal"))
def test_explain_names_the_perturbed_signal(case: Case) -> None:
    det = trained(case)
    faulty = inject(case.fault, continuation())
    s = run(case, det, faulty)
    peak = K + int(np.argmax(s[K : K + FAULT_ROWS[case.fault] + 30]))
    det = trained(case)  # replay up to the peak row of the fault, then ask why
    run(case, det, faulty[: peak + 1])
    expl = det.explain()
    assert expl.detector == case.id
    assert expl.score == pytest.approx(s[peak])
    assert expl.top(1)[0].signal == "flow"
    assert expl.sentence().startswith(expl.note or "flow")


@pytest.mark.parametrize("case", cases("test_normal_continuation_stays_below_the_limit"))
def test_normal_continuation_stays_below_the_limit(case: Case) -> None:
    # Three independent trainings and continuations: one lucky or unlucky draw decides nothing.
    below = np.concatenate([run(case, trained(case, seed), continuation(seed)) < 1.0
                            for seed in (SEED, 2, 3)])  # fmt: skip
    assert below.mean() >= 0.98, below.mean()


@pytest.mark.parametrize("case", cases("test_missing_key_and_nan_do_not_raise"))
@pytest.mark.parametrize(
    "bad",
    [
        {k: v for k, v in NORMAL.items() if k != "flow"},
        {**NORMAL, "flow": math.nan},
        {**NORMAL, "flow": math.inf},
        {},
    ],
    ids=["missing", "nan", "inf", "empty"],
)
def test_missing_key_and_nan_do_not_raise(case: Case, bad: dict[str, float]) -> None:
    det = trained(case)
    cont = continuation()
    run(case, det, cont[:50])
    for i in range(5):
        s = score_one(case, det, bad, TRAIN + 50 + i)
        assert isinstance(s, float) and not math.isnan(s)
    det.explain()
    # And the detector carries on: normal rows score normally afterwards (gaps need their time).
    after = run(case, det, cont[100:200], TRAIN + 100)
    assert np.isfinite(after).all()
    assert (after < 1.0).mean() >= 0.95


@pytest.mark.parametrize("case", cases("test_unknown_extra_key_is_ignored"))
def test_unknown_extra_key_is_ignored(case: Case) -> None:
    det = trained(case)
    twin = pickle.loads(pickle.dumps(det))
    t0 = K - 100  # from a while before the fault to a while after it
    faulty = inject(case.fault, continuation())[t0 : K + FAULT_ROWS[case.fault] + 20]
    t = [TRAIN + t0 + i for i in range(len(faulty))]
    plain = np.array([score_one(case, det, row(r), u) for r, u in zip(faulty, t, strict=True)])
    extra = np.array([
        score_one(case, twin, {**row(r), "vibration": 1e9, "flow_setpoint": -1e9}, u)
        for r, u in zip(faulty, t, strict=True)
    ])  # fmt: skip
    assert plain.max() >= 1.0  # the fault is in there: the twin had something to get wrong
    np.testing.assert_array_equal(extra, plain)
    assert twin.explain() == det.explain()


@pytest.mark.parametrize("case", cases("test_score_before_fit_is_zero", lambda c: c.trained))
def test_score_before_fit_is_zero(case: Case) -> None:
    det = case.make()
    x = inject(case.fault, normal(SEED)[: K + 50])
    scores = run(case, det, x, 0.0)
    assert scores.tolist() == [0.0] * len(x)


@pytest.mark.parametrize(
    "case", cases("test_score_of_a_missing_value_before_fit_is_zero", lambda c: c.trained)
)
def test_score_of_a_missing_value_before_fit_is_zero(case: Case) -> None:
    det = case.make()
    run(case, det, normal(SEED)[:20], 0.0)
    assert score_one(case, det, {**NORMAL, "flow": math.nan}, 20.0) == 0.0


def test_limits_need_no_training() -> None:
    det = Limits(COLUMNS, RANGES, units=UNITS)
    assert det.score_one(NORMAL, t_s=0.0) == 0.0
    assert det.score_one(row([50, 10, 60, 80]), t_s=1.0) == 0.0  # the ends are normal
    # Beyond the range by 5 % of the span (40 m³/h) is exactly the limit; 10 % is 2.0.
    assert det.score_one({**NORMAL, "flow": 52.0}, t_s=2.0) == pytest.approx(1.0)
    assert det.score_one({**NORMAL, "temp": 36.0}, t_s=3.0) == pytest.approx(2.0)
    e = det.explain()
    assert e.top(1)[0].signal == "temp"
    assert "below its range" in e.note


# -- MachineAnalyzer ----------------------------------------------------------------------------
S = 1_000_000_000
SIGNALS = {"a": SignalMeta("bar", 0.0, 10.0), "b": SignalMeta("°C", 0.0, 100.0)}


def analyzer(**kw: Any) -> MachineAnalyzer:
    cfg = AnalyzerConfig(**{"warmup_s": 60, "warmup_rows": 60, "multivariate": "none", **kw})
    return MachineAnalyzer("m-1", SIGNALS, cfg)


def wave(t: int) -> dict[str, float]:
    """Smooth normal values: a slow wave (never flat, small steps)."""
    return {"a": 5.0 + 0.5 * math.sin(t / 5), "b": 50.0 + 3.0 * math.cos(t / 7)}


def add_steps(an: MachineAnalyzer, t0: int, t1: int, values: Callable[[int], dict[str, Any]],
              bad: Callable[[int], list[str]] = lambda t: []) -> list[StepResult]:  # fmt: skip
    """One reading per second at t0 .. t1 - 1 (seconds); the completed steps' results."""
    out: list[StepResult] = []
    for t in range(t0, t1):
        out += an.add(t * S, values(t), bad(t))
    return out


def state(an: MachineAnalyzer) -> MachineAnalyzer:
    """``an`` again: its state changed since mypy last looked (no stale narrowing)."""
    return an


def warmed(**kw: Any) -> tuple[MachineAnalyzer, int]:
    """An analyzer past its warm-up on the wave; and the next free second."""
    an = analyzer(**kw)
    t = 0
    while an.model is None:
        an.add(t * S, wave(t))
        t += 1
        assert t < 1000
    return an, t


def test_readings_are_folded_into_steps_as_the_mean() -> None:
    an = analyzer(checks=("limits",), step_s=1.0)
    # Step [0, 1 s): a = 8 and 22 -> mean 15 -> 5 beyond the range 0..10 (span 10) -> 10.0.
    assert an.add(0, {"a": 8.0, "b": 50.0}) == []
    assert an.add(S // 2, {"a": 22.0}) == []
    (r,) = an.add(S, {"a": 5.0, "b": 50.0})
    assert r.time_ns == S  # a step is reported at its end
    assert r.components == {"limits": pytest.approx(10.0)}
    assert r.score == pytest.approx(10.0)
    assert r.explanation.top(1)[0].observed == pytest.approx(15.0)


def test_a_longer_step_folds_several_readings() -> None:
    an = analyzer(checks=("limits",), step_s=10.0)
    results = add_steps(an, 0, 25, lambda t: {"a": 11.0 if t < 10 else 5.0, "b": 50.0})
    assert [r.time_ns for r in results] == [10 * S, 20 * S]
    assert results[0].components["limits"] == pytest.approx(2.0)  # mean 11: 1 beyond, 0.5/unit
    assert results[1].components["limits"] == 0.0


def test_non_numeric_and_unknown_fields_are_ignored() -> None:
    an = analyzer(checks=("limits",))
    an.add(0, {"a": 12.0, "b": 50.0, "mode": "auto", "door": True, "x": 99.0, "c": None})
    an.add(S // 2, {"a": True, "b": "n/a"})  # a bool is not a measurement
    (r,) = an.add(S, {"a": 5.0})
    assert r.components["limits"] == pytest.approx(4.0)  # a = 12 alone


def test_a_silent_signal_keeps_its_last_value() -> None:
    an, t = warmed(checks=("limits", "gap"))
    # b reports once out of range (120 in 0..100), then stays silent for 40 s: carried forward.
    add_steps(an, t, t + 1, lambda t: {**wave(t), "b": 120.0})
    results = add_steps(an, t + 1, t + 41, lambda t: {"a": wave(t)["a"]})
    assert all(r.components["limits"] == pytest.approx(4.0) for r in results)  # (120-100)/5
    assert all(r.components["gap"] == 0.0 for r in results)  # a carried value is no gap


def test_a_bad_signal_is_a_gap_not_a_carried_value() -> None:
    an, t = warmed(checks=("limits", "gap"))
    add_steps(an, t, t + 5, wave)
    # From now b is reported bad once, then stays silent: NaN, not its last value.
    results = add_steps(an, t + 5, t + 60, lambda t: {"a": wave(t)["a"]},
                        bad=lambda u: ["b", "unknown"] if u == t + 5 else [])  # fmt: skip
    gap = [r.components["gap"] for r in results]
    assert gap[0] == 0.0
    assert gap == sorted(gap) and gap[-1] >= 4.0  # growing: 10 s is the floor of its limit
    opened = [e for r in results for e in r.events if e.kind == "opened"]
    assert len(opened) == 1
    assert opened[0].episode.detector == "gap"
    assert opened[0].episode.contributions[0].signal == "b"


def test_a_bad_flag_does_not_override_a_good_value_in_the_same_step() -> None:
    an, t = warmed(checks=("limits", "gap"))
    results = add_steps(an, t, t + 40, lambda t: {**wave(t), "b": 50.0 + (t % 2)},
                        bad=lambda t: ["b"])  # fmt: skip
    assert all(r.components["gap"] == 0.0 for r in results)


@pytest.mark.parametrize(("warmup_s", "warmup_rows", "steps"), [(60, 30, 61), (10, 60, 60)])
def test_warmup_ends_after_warmup_s_and_warmup_rows(
    warmup_s: float, warmup_rows: int, steps: int
) -> None:
    an = analyzer(warmup_s=warmup_s, warmup_rows=warmup_rows)
    # The reading at second n + 1 completes step n + 1 (steps end at 1, 2, ... s).
    results = add_steps(an, 0, steps, wave)
    assert len(results) == steps - 1
    assert an.warming_up and an.model is None
    assert 0.9 < an.warmup_progress() < 1.0
    (last,) = add_steps(an, steps, steps + 1, wave)
    assert not state(an).warming_up
    model = state(an).model
    assert model is not None and model.rows == steps
    assert an.warmup_progress() == 1.0
    assert last.explanation.detector == "warm-up"
    (first,) = add_steps(an, steps + 1, steps + 2, wave)
    assert first.explanation.detector != "warm-up"
    assert set(first.components) == {"limits", "baseline", "rate", "flatline", "gap"}


def test_out_of_range_during_warmup_opens_an_episode_and_is_not_learnt() -> None:
    an = analyzer()
    results = add_steps(an, 0, 300, lambda t: {**wave(t), "a": 50.0} if 20 <= t < 25 else wave(t))
    opened = [e for r in results for e in r.events if e.kind == "opened"]
    assert len(opened) == 1
    ep = opened[0].episode
    assert (ep.detector, ep.start_ns) == ("limits", 21 * S)  # step [20, 21) ends at 21 s
    assert ep.contributions[0].signal == "a"
    assert an.model is not None
    # Steps 21..25 are out of range, the next ones are inside the open episode (off-delay):
    # neither counts as training; the model has as many rows as clean steps were needed.
    closed = next(e for r in results for e in r.events if e.kind == "closed")
    assert closed.time_ns == 56 * S  # 30 s (off-delay) after the last bad step at 25 s
    lost = 56 - 21  # steps 21 .. 55 s
    assert an.model.trained_from_ns == S
    assert an.model.rows == an.model.trained_to_ns // S - lost


def test_out_of_range_rows_do_not_train_the_per_signal_detectors() -> None:
    clean, _ = warmed()
    dirty = analyzer()
    add_steps(dirty, 0, 300, lambda t: {**wave(t), "a": 50.0} if 20 <= t < 25 else wave(t))
    assert dirty.model is not None and clean.model is not None
    limit = {d.name: d.limit for d in clean.model.detectors}
    for det in dirty.model.detectors:
        if det.name in ("rate", "baseline"):
            assert det.limit[0] < 3 * limit[det.name][0], (det.name, det.limit, limit[det.name])


def test_model_save_and_load_restore_identical_scoring(tmp_path: Path) -> None:
    an, t = warmed()
    model = an.model
    assert model is not None
    path = model.save(tmp_path)
    assert path == tmp_path / "m-1.pkl"
    assert not list(tmp_path.glob("*.tmp"))
    meta = json.loads((tmp_path / "m-1.json").read_text())
    assert meta["machine"] == "m-1" and meta["features"] == ["a", "b"]
    assert meta["detectors"] == ["limits", "baseline", "rate", "flatline", "gap"]
    assert (meta["version"], meta["rows"]) == (model.version, model.rows)

    loaded = Model.load(path)
    assert (loaded.version, loaded.columns, loaded.rows) == (model.version, model.columns,
                                                             model.rows)  # fmt: skip
    for det in model.detectors:  # what load does: the running state starts afresh
        det.reset()
    a = MachineAnalyzer("m-1", SIGNALS, an.config, model=model)
    b = MachineAnalyzer("m-1", SIGNALS, an.config, model=loaded)
    assert not b.warming_up and b.alarm.model_version == model.version

    def values(u: int) -> dict[str, float]:
        return {**wave(u), "a": 9.0} if t + 50 <= u < t + 55 else wave(u)

    ra = add_steps(a, t, t + 120, values)
    rb = add_steps(b, t, t + 120, values)
    assert [r.components for r in rb] == [r.components for r in ra]
    assert max(r.score for r in rb) >= 1.0  # the jump to 9.0 is scored, not only zeros
    assert [(e.kind, e.time_ns) for r in rb for e in r.events] == [
        (e.kind, e.time_ns) for r in ra for e in r.events
    ]


def test_load_rejects_a_foreign_pickle(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"not": "a model"}))
    with pytest.raises(TypeError, match="not a factory-agent model"):
        Model.load(path)


def test_a_model_with_different_columns_is_not_used() -> None:
    an, _ = warmed()
    other = {**SIGNALS, "c": SignalMeta("rpm", 0, 3000)}
    fresh = MachineAnalyzer("m-1", other, an.config, model=an.model)
    assert fresh.model is None and fresh.warming_up
    reordered = MachineAnalyzer("m-1", dict(reversed(SIGNALS.items())), an.config,
                                model=an.model)  # fmt: skip
    assert reordered.model is None
    same = MachineAnalyzer("m-1", SIGNALS, an.config, model=an.model)
    assert same.model is an.model


def test_flush_closes_the_current_step() -> None:
    an = analyzer(checks=("limits",))
    assert an.flush() == []
    an.add(0, {"a": 12.0})
    (r,) = an.flush()
    assert r.time_ns == S and r.score == pytest.approx(4.0)
    assert an.flush() == []


# -- scoring --------------------------------------------------------------------------------------
LABELS = [
    Label("cnc-01", "bearing_wear", 600.0, 2400.0),
    Label("cnc-01", "bearing_wear", 5000.0, 5600.0),
    Label("imm-01", "heater_fault", 1000.0, 1300.0),
    Label("imm-01", "sensor_drift", 3000.0, 3100.0, detectable=False),
]


def test_score_recall_per_type_false_alarms_and_delays() -> None:
    eps = [
        Raised("cnc-01", 630.0),  # bearing 1, delay 30
        Raised("cnc-01", 700.0),  # bearing 1 again: not a false alarm, delay stays 30
        Raised("imm-01", 1010.0),  # heater, delay 10
        Raised("cnc-01", 1000.0 + 3000.0, "rate", "spindle"),  # nothing there: false alarm
        Raised("imm-01", 650.0),  # bearing's time but the other machine: false alarm
    ]
    r = score(LABELS, eps, machines=2, hours=2.0)
    assert r["recall"] == {"bearing_wear": 0.5, "heater_fault": 1.0}
    assert r["recall_all"] == pytest.approx(2 / 3)
    assert (r["detected"], r["detectable"]) == (2, 3)
    assert r["false_alarms"] == 2
    assert r["fa_episodes_per_machine_per_hour"] == 0.5
    assert r["fa_episodes_per_machine_per_shift"] == 4.0
    assert r["median_delay_s"] == 20.0
    assert r["p90_delay_s"] == pytest.approx(28.0)
    assert [f["delay_s"] for f in r["faults"]] == [30.0, None, 10.0, None]
    assert r["false_alarm_list"] == [  # in time order
        {"machine": "imm-01", "raised_s": 650.0, "detector": "", "top_signal": ""},
        {"machine": "cnc-01", "raised_s": 4000.0, "detector": "rate", "top_signal": "spindle"},
    ]


def test_score_excludes_invisible_labels_from_recall() -> None:
    r = score(LABELS, [Raised("imm-01", 3050.0)], machines=2, hours=1.0)
    assert "sensor_drift" not in r["recall"]
    assert r["detected"] == 0 and r["detectable"] == 3
    assert r["false_alarms"] == 0  # it did catch something real
    assert r["faults"][3]["detected"] is True
    assert math.isnan(r["median_delay_s"])  # invisible detections give no delay


@pytest.mark.parametrize(
    ("raised_s", "hit"),
    [(599.9, False), (600.0, True), (2400.0 + 60.0, True), (2400.0 + 60.1, False)],
)
def test_score_grace_window(raised_s: float, hit: bool) -> None:
    r = score(LABELS[:1], [Raised("cnc-01", raised_s)], machines=1, hours=1.0)
    assert r["detected"] == int(hit)
    assert r["false_alarms"] == int(not hit)
    r = score(LABELS[:1], [Raised("cnc-01", 2400.0 + 90.0)], machines=1, hours=1.0,
              grace_s=120.0)  # fmt: skip
    assert r["detected"] == 1


def test_score_delay_is_from_the_first_episode_in_time() -> None:
    eps = [Raised("cnc-01", 900.0), Raised("cnc-01", 650.0)]  # out of order
    r = score(LABELS[:1], eps, machines=1, hours=1.0)
    assert r["median_delay_s"] == 50.0


def test_score_with_nothing() -> None:
    r = score([], [], machines=0, hours=0.0)
    assert r["recall"] == {} and r["false_alarms"] == 0
    assert math.isnan(r["recall_all"]) and math.isnan(r["fa_episodes_per_machine_per_hour"])


def test_relearning_refits_when_the_normal_running_doubles_then_stops() -> None:
    an, t = warmed(multivariate="pca-t2q", warmup_s=100, warmup_rows=100, relearn_factor=4)
    first = state(an).model
    assert first is not None
    n = first.rows
    add_steps(an, t, t + n - 5, wave)
    assert state(an).model is first  # not yet twice the normal running
    add_steps(an, t + n - 5, t + n + 5, wave)
    second = state(an).model
    assert second is not None and second is not first and second.rows == 2 * n
    assert second.version != first.version and an.alarm.model_version == second.version
    assert second.trained_from_ns == first.trained_from_ns
    # an open episode: its rows are not learnt
    t += n + 5
    add_steps(an, t, t + 100, lambda t: {**wave(t), "a": 30.0})
    add_steps(an, t + 100, t + 250, wave)
    assert state(an).model is second
    assert len(an._normal) <= 2 * n + 150 - 30  # not the 100 abnormal rows nor the off-delay
    t += 250
    add_steps(an, t, t + 2 * n + 200, wave)
    third = state(an).model
    assert third is not None and third is not second and third.rows == 4 * n
    add_steps(an, t + 2 * n + 200, t + 12 * n, wave)
    assert state(an).model is third  # 4 times the warm-up: the model is grown up


def test_relearning_is_off_by_factor_one() -> None:
    an, t = warmed(multivariate="pca-t2q", warmup_s=100, warmup_rows=100)
    first = state(an).model
    add_steps(an, t, t + 800, wave)
    assert state(an).model is first
