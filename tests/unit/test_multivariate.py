"""Multivariate detectors on synthetic data: the conformance suite every detector passes."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable

import numpy as np
import pytest

from analytics.multivariate import IsolationForestDetector, PcaT2Q, box_limit
from analytics.types import Explanation

COLUMNS = ("flow", "pressure", "current", "temp")
UNITS = {"flow": "m³/h", "pressure": "bar", "current": "A", "temp": "°C"}
TRAIN = 400

Factory = Callable[..., PcaT2Q | IsolationForestDetector]


def make_pca(**kw: object) -> PcaT2Q:
    return PcaT2Q(COLUMNS, units=UNITS, drifting=["temp"], **kw)  # type: ignore[arg-type]


def make_iforest(**kw: object) -> IsolationForestDetector:
    kw.setdefault("n_estimators", 30)
    return IsolationForestDetector(COLUMNS, units=UNITS, drifting=["temp"], **kw)  # type: ignore[arg-type]


DETECTORS = [pytest.param(make_pca, id="pca-t2q"), pytest.param(make_iforest, id="iforest")]


def plant(rows: int = 1000, seed: int = 7) -> np.ndarray:
    """Normal running: pressure and current follow the flow, the temperature drifts slowly."""
    rng = np.random.default_rng(seed)
    flow = 30 + rng.normal(0, 0.5, rows)
    pressure = 2 + 0.05 * (flow - 30) + rng.normal(0, 0.02, rows)
    current = 1.2 + 0.02 * (flow - 30) + rng.normal(0, 0.01, rows)
    temp = 40 + 0.004 * np.arange(rows) + rng.normal(0, 0.05, rows)
    return np.column_stack([flow, pressure, current, temp])


def row(x: np.ndarray) -> dict[str, float]:
    return dict(zip(COLUMNS, x.tolist(), strict=True))


def fitted(factory: Factory, **kw: object) -> tuple[PcaT2Q | IsolationForestDetector, np.ndarray]:
    data = plant()
    det = factory(**kw)
    det.fit(data[:TRAIN])
    return det, data[TRAIN:]


@pytest.mark.parametrize("factory", DETECTORS)
def test_score_before_fit_is_zero(factory: Factory) -> None:
    det = factory()
    assert not det.fitted
    assert det.score_one(row(plant(1)[0])) == 0.0
    assert det.score_many(plant(5)).tolist() == [0.0] * 5
    assert det.explain() == Explanation(det.name, 0.0, (), note="no row scored yet")


@pytest.mark.parametrize("factory", DETECTORS)
def test_deterministic_under_a_seed(factory: Factory) -> None:
    a, test = fitted(factory, seed=3)
    b, _ = fitted(factory, seed=3)
    assert a.version == b.version and len(a.version) == 8
    assert np.array_equal(a.score_many(test), b.score_many(test))


@pytest.mark.parametrize("factory", DETECTORS)
def test_pickle_round_trip_gives_identical_scores(factory: Factory) -> None:
    det, test = fitted(factory)
    det.score_many(test[:50])  # state in the middle of a stream
    copy = pickle.loads(pickle.dumps(det))
    assert np.array_equal(det.score_many(test[50:]), copy.score_many(test[50:]))
    assert copy.explain() == det.explain()


@pytest.mark.parametrize("factory", DETECTORS)
def test_score_many_equals_score_one_row_by_row(factory: Factory) -> None:
    det, test = fitted(factory)
    one = pickle.loads(pickle.dumps(det))
    test = test[:150].copy()
    test[60:90, 0] -= 3.0  # an excursion, so the values are not all near zero
    test[100:103, 1] = np.nan
    batch = det.score_many(test)
    single = np.array([one.score_one(row(x)) for x in test])
    np.testing.assert_allclose(single, batch, rtol=1e-12, atol=1e-12)
    assert one.explain() == det.explain()


@pytest.mark.parametrize("factory", DETECTORS)
def test_normal_data_rarely_reaches_the_limit(factory: Factory) -> None:
    det, test = fitted(factory)
    scores = det.score_many(test)
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)
    assert np.mean(scores >= 1.0) <= 0.02


@pytest.mark.parametrize("factory", DETECTORS)
@pytest.mark.parametrize("kind", ["spike", "step"])
def test_spike_and_step_score_higher_than_baseline(factory: Factory, kind: str) -> None:
    det, test = fitted(factory)
    baseline = det.score_many(test[:200])
    bad = test[200:260].copy()
    if kind == "spike":
        bad[10:14, 0] += 12.0  # a few seconds of a gross flow error
    else:
        bad[10:, 0] -= 2.5  # the flow drops and stays down; pressure and current do not follow
    scores = det.score_many(bad)
    assert scores.max() > 1.0
    assert scores.max() > 2 * np.median(baseline)
    assert det.explain().top(1)[0].signal == "flow" if kind == "step" else True


@pytest.mark.parametrize("factory", DETECTORS)
@pytest.mark.parametrize("signal", ["flow", "pressure", "current"])
def test_top_contribution_is_the_perturbed_signal(factory: Factory, signal: str) -> None:
    det, test = fitted(factory)
    det.score_many(test[:100])
    j = COLUMNS.index(signal)
    spread = plant()[:TRAIN, j].std()
    bad = test[100:130].copy()
    bad[:, j] += 8 * spread
    det.score_many(bad)
    expl = det.explain()
    top = expl.top(1)[0]
    assert expl.score > 1.0
    assert top.signal == signal
    assert math.isclose(sum(c.share for c in expl.contributions), 1.0, rel_tol=1e-9)
    assert top.unit == UNITS[signal]
    assert abs(top.observed - top.expected) > 3 * top.spread  # in the signal's unit


def test_rate_contribution_is_in_unit_per_second() -> None:
    det, test = fitted(make_pca)
    det.score_many(test[:100])
    temp = {c.signal: c for c in det.explain().contributions}["temp"]
    assert temp.unit == "°C/s"
    assert temp.observed == pytest.approx(0.004, abs=0.002)  # the drift, per second


@pytest.mark.parametrize("factory", DETECTORS)
def test_missing_nan_and_unknown_signals(factory: Factory) -> None:
    det, test = fitted(factory)
    det.score_many(test[:50])
    copy = pickle.loads(pickle.dumps(det))
    x = row(test[50])
    assert det.score_one({**x, "vibration": 1e9}) == copy.score_one(x)  # unknown key ignored
    for gap in ({**x, "flow": math.nan}, {k: v for k, v in x.items() if k != "flow"},
                {**x, "flow": math.inf}, {**x, "flow": "bad"}):  # fmt: skip
        s = det.score_one(gap)  # type: ignore[arg-type]
        assert math.isfinite(s) and s < 1.0
    all_missing = [det.score_one({}) for _ in range(20)]  # the window empties: expected values
    assert all(math.isfinite(s) for s in all_missing)
    assert det.explain().score == all_missing[-1]


@pytest.mark.parametrize("factory", DETECTORS)
def test_learn_one_fits_after_the_warmup(factory: Factory) -> None:
    data = plant()
    online = factory(warmup=TRAIN)
    for x in data[:TRAIN]:
        assert online.score_one(row(x)) == 0.0
        online.learn_one(row(x))
    assert online.fitted
    batch = factory()
    batch.fit(data[:TRAIN])
    assert online.version == batch.version
    online.learn_one(row(data[TRAIN]))  # no-op once fitted
    assert np.array_equal(online.score_many(data[TRAIN:]), batch.score_many(data[TRAIN:]))


def test_rows_with_nan_in_training_are_not_fitted() -> None:
    data = plant()
    holed = data[:TRAIN].copy()
    holed[200:210, 1] = np.nan
    det = make_pca()
    det.fit(holed)
    scores = det.score_many(data[TRAIN:])
    assert np.all(np.isfinite(scores)) and np.mean(scores >= 1.0) <= 0.02


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="drifting signals not among the columns"):
        PcaT2Q(COLUMNS, drifting=["nope"])
    with pytest.raises(ValueError, match="folds"):
        PcaT2Q(COLUMNS, folds=1)
    with pytest.raises(ValueError, match="too few complete training rows"):
        make_pca().fit(plant(40))


def test_box_limit_is_the_chi_square_quantile() -> None:
    rng = np.random.default_rng(0)
    lim = box_limit(rng.chisquare(5, size=(50_000, 1)) * 2.0, 0.999)
    assert lim[0] == pytest.approx(2.0 * 20.515, rel=0.03)
    assert box_limit(np.ones((10, 1)), 0.999)[0] == 1.0  # no spread: the value itself


def test_one_wild_signal_does_not_drag_the_others_expected_values() -> None:
    """A pressure reading 200 σ off: the flow and current still read as expected (what they
    are), and the pressure's expected value is what the flow says it should be."""
    det, test = fitted(make_pca)
    det.score_many(test[:100])
    bad = test[100:130].copy()
    bad[:, 1] += 200 * 0.02
    det.score_many(bad)
    by = {c.signal: c for c in det.explain().contributions}
    assert det.explain().top(1)[0].signal == "pressure"
    for name in ("flow", "current"):  # within their normal spread of what was observed
        assert abs(by[name].observed - by[name].expected) < by[name].spread, by[name]
    flow = by["flow"].observed
    assert by["pressure"].expected == pytest.approx(2 + 0.05 * (flow - 30), abs=0.05)
