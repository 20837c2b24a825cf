"""Multivariate detectors for one machine: PCA T²/Q and an isolation forest, online-capable.

Both share one causal preprocessing, inside the detector, so that the same object scores one row
a second in the agent and a whole file in a batch (rows are ``period_s`` apart):

- **smoothing**: each signal is averaged over the last ``smoothing_s`` (a moving window, not an
  EWMA: its memory is finite, so after the process recovers the score falls back within one
  window whatever the size of the excursion, and the alarm clears on time); missing or
  non-finite values are left out of the average, and a window with no value at all is imputed
  with the expected value;
- **rate of change for drifting signals**: signals named in ``drifting`` (thermal ones, whose
  level wanders by degrees between runs while the process is normal) enter by their rate,
  ``(window mean now − window mean rate_s ago) / rate_s`` in unit/s; the others by their level;
- **robust scaling**: centred on the training median, divided by the training IQR/1.349.

Limits come from held-out scores: the training window is cut into ``folds`` contiguous blocks,
each scored by a model fitted on the others. Held-out blocks show the drift and autocorrelation
that in-sample scores hide (in-sample limits flag half of SKAB's normal rows). Scores are
normalised: 1.0 is the limit. A key the detector does not know is ignored.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from analytics.types import Contribution, Explanation

if TYPE_CHECKING:  # scikit-learn (and SciPy) cost ~85 MB of RSS: loaded only for the forest
    from sklearn.ensemble import IsolationForest

Array = NDArray[np.float64]


def box_limit(scores: Array, tail: float) -> Array:
    """Per column, the ``tail`` quantile of g·χ²_h fitted to the scores by their mean and variance.

    The Box (1954) approximation that Nomikos & MacGregor (1995) use for Q limits; the χ²
    quantile by Wilson–Hilferty. It extrapolates a far tail (0.999) more steadily than the
    largest of a few hundred autocorrelated scores would.

    >>> rng = np.random.default_rng(1)
    >>> lim = box_limit(rng.chisquare(3, size=(20000, 1)), 0.99)
    >>> round(float(lim[0]), 1)  # the exact χ²₃ 0.99 quantile is 11.34
    11.4
    """
    m, v = scores.mean(axis=0), scores.var(axis=0)
    h = np.divide(2 * m * m, v, out=np.full_like(m, np.inf), where=v > 0)
    c = np.divide(2.0, 9.0 * h, out=np.zeros_like(m), where=np.isfinite(h) & (h > 0))
    z = NormalDist().inv_cdf(tail)
    return np.asarray(m * np.maximum(1 - c + z * np.sqrt(c), 0.0) ** 3, dtype=np.float64)


class _Multivariate:
    """Preprocessing, fitting, held-out limits and explanations; subclasses add the model."""

    name = "multivariate"

    def __init__(
        self,
        columns: Sequence[str],
        *,
        units: Mapping[str, str] | None = None,
        drifting: Collection[str] = (),
        smoothing_s: float = 8.0,
        rate_s: float = 60.0,
        period_s: float = 1.0,
        quantile: float = 0.999,
        folds: int = 4,
        warmup: int = 400,
        seed: int = 0,
    ) -> None:
        unknown = set(drifting) - set(columns)
        if unknown:
            raise ValueError(f"drifting signals not among the columns: {sorted(unknown)}")
        if folds < 2:
            raise ValueError(f"folds must be at least 2 (held-out limits), got {folds}")
        self.columns = tuple(columns)
        self.units = dict(units or {})
        self.drifting = tuple(c for c in self.columns if c in set(drifting))
        self.smoothing_s, self.rate_s, self.period_s = smoothing_s, rate_s, period_s
        self.quantile, self.folds, self.warmup, self.seed = quantile, folds, warmup, seed
        self.fitted = False
        self.version = ""
        self._buffer: list[list[float]] = []
        self._level = [i for i, c in enumerate(self.columns) if c not in self.drifting]
        self._rate = [i for i, c in enumerate(self.columns) if c in self.drifting]
        self._n = max(1, round(smoothing_s / period_s))  # rows per window
        self._lag = max(1, round(rate_s / period_s))  # rows between the two windows of a rate
        self._m = self._n - 1 + (self._lag if self._rate else 0)  # rows of history kept
        self._hist = np.full((self._m, len(self.columns)), np.nan)
        self._center = np.zeros(0)
        self._scale = np.ones(0)
        self._last: tuple[float, Array, Array] | None = None  # score, features, scaled

    # -- preprocessing -----------------------------------------------------------------------
    def _features(self, x: Array) -> Array:
        """Rows of raw values → rows of features (levels, then rates); advances the history.

        Only the windows the new rows need are summed (the current one and, for rates, the one
        ``rate_s`` before), by adding ``n`` shifted slices in a fixed order: a row gets the
        same bits whether it comes alone or in a batch, and one row costs a few µs.
        """
        k, d, n = len(x), len(self.columns), self._n
        full = np.concatenate([self._hist, x])
        valid = np.isfinite(full)
        both = np.concatenate([np.where(valid, full, 0.0), valid.astype(np.float64)], axis=1)
        offsets = (self._m - n + 1, 0) if self._rate else (self._m - n + 1,)
        seg = np.stack([both[o : o + k + n - 1] for o in offsets])
        acc = seg[:, 0:k].copy()
        for j in range(1, n):
            acc += seg[:, j : j + k]
        total, count = acc[..., :d], acc[..., d:]
        means = np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)
        out = [means[0][:, self._level]]
        if self._rate:
            rise = means[0][:, self._rate] - means[1][:, self._rate]
            out.append(rise / (self._lag * self.period_s))
        self._hist = full[len(full) - self._m :].copy()
        return np.hstack(out)

    def _feature_labels(self) -> list[tuple[str, str]]:
        """(signal, unit) of each feature, in feature order; rates are in unit/s."""
        lv = [(self.columns[i], self.units.get(self.columns[i], "")) for i in self._level]
        rt = [(self.columns[i], f"{self.units.get(self.columns[i], '')}/s") for i in self._rate]
        return lv + rt

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, rows: NDArray[Any]) -> None:
        """Fit on a training window (rows × columns of raw values, in time order).

        Rows with a missing value, and the first rows whose windows are not yet full, are not
        fitted. Afterwards the history holds the end of the window, so scoring continues
        seamlessly with the row after it.
        """
        x = np.asarray(rows, dtype=np.float64).reshape(-1, len(self.columns))
        x = np.where(np.isfinite(x), x, np.nan)
        self._hist = np.full((self._m, len(self.columns)), np.nan)
        feats = self._features(x)
        keep = np.asarray(np.isfinite(x).all(axis=1) & np.isfinite(feats).all(axis=1))
        keep[: self._m] = False
        f = feats[keep]
        if len(f) < max(20, 2 * f.shape[1]):
            raise ValueError(f"too few complete training rows: {len(f)}")
        held = self._held_out(f)
        self._center, self._scale = self._robust(f)
        self._fit_model((f - self._center) / self._scale)
        self._set_limits(held)
        self.fitted = True
        self._last = None
        self.version = self._digest()

    @staticmethod
    def _robust(f: Array) -> tuple[Array, Array]:
        center = np.median(f, axis=0)
        q75, q25 = np.percentile(f, [75, 25], axis=0)
        scale = np.where(q75 > q25, (q75 - q25) / 1.349, f.std(axis=0))
        return center, np.maximum(scale, 1e-9 * np.maximum(np.abs(center), 1.0))

    def _held_out(self, f: Array) -> Array:
        """Raw scores of each contiguous block from a model fitted on the other blocks."""
        out = []
        for k, idx in enumerate(np.array_split(np.arange(len(f)), self.folds)):
            rest = np.setdiff1d(np.arange(len(f)), idx)
            center, scale = self._robust(f[rest])
            self._fit_model((f[rest] - center) / scale, fold=k)
            out.append(self._raw((f[idx] - center) / scale))
        return np.vstack(out)

    def learn_one(self, x: Mapping[str, float], *, t_s: float | None = None) -> None:
        """Buffer rows until ``warmup`` rows, then fit once; a fitted detector ignores rows.

        ``t_s`` is accepted for the common detector contract; rows are taken as ``period_s``
        apart.
        """
        if self.fitted:
            return
        self._buffer.append(self._row(x))
        if len(self._buffer) >= self.warmup:
            self.fit(np.array(self._buffer))
            self._buffer = []

    # -- scoring -----------------------------------------------------------------------------
    def _row(self, x: Mapping[str, float]) -> list[float]:
        out = []
        for c in self.columns:
            try:
                v = float(x.get(c, math.nan))
            except (TypeError, ValueError):
                v = math.nan
            out.append(v if math.isfinite(v) else math.nan)
        return out

    def score_one(self, x: Mapping[str, float], *, t_s: float | None = None) -> float:
        """Normalised score of one row (1.0 = the limit); 0.0 before the detector is fitted."""
        if not self.fitted:
            return 0.0
        return float(self.score_many(np.array([self._row(x)]))[0])

    def score_many(self, rows: NDArray[Any]) -> Array:
        """Scores of consecutive rows (columns in :attr:`columns` order), the same values as
        :meth:`score_one` row by row from the same state; 0.0 before the detector is fitted."""
        x = np.asarray(rows, dtype=np.float64).reshape(-1, len(self.columns))
        if not self.fitted:
            return np.zeros(len(x))
        f = self._features(np.where(np.isfinite(x), x, np.nan))
        z = (f - self._center) / self._scale
        z = np.where(np.isfinite(z), z, 0.0)  # no data in the window: the expected value
        scores = self._normalise(self._raw(z))
        if len(x):
            self._last = (float(scores[-1]), f[-1], z[-1])
        return scores

    def explain(self) -> Explanation:
        """The last scored row: per-signal shares, observed vs expected ± the training spread.

        Observed is what the model saw (the window mean, or the rate in unit/s).
        """
        if self._last is None:
            return Explanation(self.name, 0.0, (), note="no row scored yet")
        score, f, z = self._last
        z_hat = self._expected(z)
        dev = (z - z_hat) ** 2
        total = float(dev.sum())
        shares = dev / total if total > 0 else np.full(len(dev), 1.0 / len(dev))
        expected = self._center + self._scale * z_hat
        return Explanation(
            self.name,
            score,
            tuple(
                Contribution(
                    s,
                    float(shares[j]),
                    float(f[j]),
                    float(expected[j]),
                    float(self._scale[j]),
                    unit,
                )
                for j, (s, unit) in enumerate(self._feature_labels())
            ),
        )

    def _digest(self) -> str:
        h = hashlib.sha1(usedforsecurity=False)
        h.update(repr((self.name, self.columns, self.drifting, self._n, self._lag)).encode())
        for a in (self._center, self._scale, self._limits()):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return h.hexdigest()[:8]

    # -- model hooks -------------------------------------------------------------------------
    def _fit_model(self, z: Array, fold: int = -1) -> None:
        raise NotImplementedError

    def _raw(self, z: Array) -> Array:
        """Raw scores of scaled feature rows: shape (rows, statistics)."""
        raise NotImplementedError

    def _set_limits(self, held: Array) -> None:
        raise NotImplementedError

    def _limits(self) -> Array:
        raise NotImplementedError

    def _normalise(self, raw: Array) -> Array:
        raise NotImplementedError

    def _expected(self, z: Array) -> Array:
        """The nearest row the model calls normal, in scaled units."""
        raise NotImplementedError


class PcaT2Q(_Multivariate):
    """PCA on the preprocessed signals; score = max(T²/T²_limit, Q/Q_limit).

    T² (Hotelling) measures how far a row lies inside the principal subspace, Q (squared
    prediction error) how far off it. The components keep ``variance`` of the scaled training
    variance (at least one, at most one fewer than the features, so that Q exists). Each limit
    is the ``quantile`` (tail probability) of a scaled χ² fitted to the held-out training scores
    (:func:`box_limit`). The max of the two normalised statistics flags a row beyond either.

    ``explain()`` compares each feature with the nearest normal point, the PCA reconstruction
    pulled inside the T² limit; shares are the squared scaled deviations from it.

    >>> rng = np.random.default_rng(0)
    >>> t = np.arange(700.0)
    >>> temp = 40 + 0.01 * t + rng.normal(0, 0.05, 700)  # drifts by 7 °C
    >>> X = np.column_stack([rng.normal(5, 0.1, 700), rng.normal(2, 0.1, 700), temp])
    >>> det = PcaT2Q(["flow", "pressure", "temp"], drifting=["temp"], units={"flow": "m³/h"})
    >>> det.fit(X[:400])
    >>> float(np.mean(det.score_many(X[400:]) >= 1.0)) < 0.02  # temp drifts: its rate is normal
    True
    >>> for _ in range(10):
    ...     s = det.score_one({"flow": 4.5, "pressure": 2.0, "temp": 47.0})
    >>> s > 1.0, det.explain().top(1)[0].signal
    (True, 'flow')
    """

    name = "pca-t2q"

    def __init__(self, columns: Sequence[str], *, variance: float = 0.9, **common: Any) -> None:
        super().__init__(columns, **common)
        self.variance = variance
        self._p = np.zeros((0, 0))
        self._lam = np.ones(0)
        self._lim = np.ones(2)

    def _fit_model(self, z: Array, fold: int = -1) -> None:
        lam, vec = np.linalg.eigh(z.T @ z / len(z))  # PCA about the median
        order = np.argsort(lam)[::-1]
        lam, vec = np.maximum(lam[order], 1e-12), vec[:, order]
        k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), self.variance) + 1)
        k = min(k, max(z.shape[1] - 1, 1))
        self._p, self._lam = vec[:, :k], lam[:k]

    def _raw(self, z: Array) -> Array:
        t = z @ self._p
        t2 = (t**2 / self._lam).sum(axis=1)
        q = ((z - t @ self._p.T) ** 2).sum(axis=1)
        return np.column_stack([t2, q])

    def _set_limits(self, held: Array) -> None:
        self._lim = np.maximum(box_limit(held, self.quantile), 1e-12)

    def _limits(self) -> Array:
        return self._lim

    def _normalise(self, raw: Array) -> Array:
        return np.asarray(np.max(raw / self._lim, axis=1), dtype=np.float64)

    def _expected(self, z: Array) -> Array:
        """The reconstruction from the features that still agree with the model.

        A plain projection lets one wild feature drag every other feature's expected value
        (a belt slipping 130 σ made the belt load "expected" at three times its range). So the
        scores are fitted by least squares on the features kept, and while those are beyond the
        Q limit, the feature whose absence leaves the smallest residual is left out, one at a
        time (reconstruction-based, after Alcala & Qin 2009: the largest residual of a plain
        projection often points at the wrong feature); then pulled inside the T² limit.
        """
        k = self._p.shape[1]
        keep = np.ones(len(z), dtype=bool)
        t = z @ self._p
        while float(((z - t @ self._p.T)[keep] ** 2).sum()) > self._lim[1] and keep.sum() > k:
            best: tuple[float, int, Array] | None = None
            for j in np.flatnonzero(keep):  # leave out the feature whose absence fits best
                rest = keep.copy()
                rest[j] = False
                tj = np.asarray(np.linalg.lstsq(self._p[rest], z[rest], rcond=None)[0], np.float64)
                q = float(((z - tj @ self._p.T)[rest] ** 2).sum())
                if best is None or q < best[0]:
                    best = (q, int(j), tj)
            assert best is not None
            keep[best[1]] = False
            t = best[2]
        t2 = float((t**2 / self._lam).sum())
        if t2 > self._lim[0]:
            t = t * math.sqrt(self._lim[0] / t2)
        return np.asarray(t @ self._p.T, dtype=np.float64)


class IsolationForestDetector(_Multivariate):
    """Isolation forest on the preprocessed signals, with a guard for rows beyond the range.

    Two statistics, like T² and Q, each normalised by its held-out limit, and the larger wins:

    - the forest's anomaly score ``s`` (0..1, higher = easier to isolate), normalised as
      ``(s − median) / (limit − median)`` and clipped at 0, with the median and the
      ``quantile`` of the held-out scores (empirical: they are bounded, not χ²-like): 0 is a
      typical row, 1.0 the limit;
    - the range guard ``max_j z_j²`` (largest squared robust z-score), over the ``quantile``
      of its :func:`box_limit`. A forest cannot rank rows beyond the training range: a split
      value is drawn between the node's smallest and largest training value, so a row far
      outside follows the most extreme training rows and scores like them (on SKAB a 20-σ drop
      of the flow scored no higher than normal rows). The guard grows with the distance.

    A forest has no expected value of its own: ``explain()`` takes the training median of each
    feature as expected and shares the score by the squared robust z-scores (deviation from the
    median over the IQR-based spread), the quantities both the splits and the guard act on.

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal([5.0, 2.0], 0.1, size=(500, 2))
    >>> det = IsolationForestDetector(["flow", "pressure"], smoothing_s=1, seed=1)
    >>> det.fit(X[:400])
    >>> s = det.score_one({"flow": 3.0, "pressure": 2.0})
    >>> s > 1.0, det.explain().top(1)[0].signal
    (True, 'flow')
    """

    name = "iforest"

    def __init__(
        self,
        columns: Sequence[str],
        *,
        n_estimators: int = 100,
        **common: Any,
    ) -> None:
        super().__init__(columns, **common)
        self.n_estimators = n_estimators
        self._forest: IsolationForest | None = None
        self._lim = np.array([0.0, 1.0, 1.0])  # forest median, forest limit, guard limit

    def _fit_model(self, z: Array, fold: int = -1) -> None:
        from sklearn.ensemble import IsolationForest  # noqa: PLC0415 (see the imports)

        self._forest = IsolationForest(
            n_estimators=self.n_estimators, random_state=self.seed * 1000 + fold + 1
        ).fit(z)

    def _raw(self, z: Array) -> Array:
        assert self._forest is not None
        s = -np.asarray(self._forest.score_samples(z), dtype=np.float64)
        return np.column_stack([s, (z**2).max(axis=1)])

    def _set_limits(self, held: Array) -> None:
        base, lim = np.quantile(held[:, 0], [0.5, self.quantile])
        guard = box_limit(held[:, 1:], self.quantile)[0]
        self._lim = np.array([base, max(lim, base + 1e-9), max(guard, 1e-12)])

    def _limits(self) -> Array:
        return self._lim

    def _normalise(self, raw: Array) -> Array:
        base, lim, guard = self._lim
        forest = np.maximum((raw[:, 0] - base) / (lim - base), 0.0)
        return np.asarray(np.maximum(forest, raw[:, 1] / guard), dtype=np.float64)

    def _expected(self, z: Array) -> Array:
        return np.zeros_like(z)
