"""Per-signal detectors: limits, robust baseline, rate of change, flatline, gaps.

Each detector watches every signal of one machine at once (numpy arrays over the signals) and
follows the :class:`Detector` contract: ``learn_one`` during the warm-up, ``score_one`` after,
higher = more anomalous, **normalised so that 1.0 is the limit**. Limits come from the
training scores: the ``quantile`` of what normal running showed, times ``margin`` (the head
room above the worst normal case; 1.5 by default). ``explain()`` describes the last scored row.

A row is a mapping of signal name to value; ``NaN`` (or a missing key) means no good value in
this step. ``t_s`` is the row's time in seconds of the source clock (machine time).

>>> det = RobustBaseline(["flow"], units={"flow": "m³/h"})
>>> for i in range(300):
...     det.learn_one({"flow": 31.5 + (i % 7 - 3) * 0.2}, t_s=float(i))
>>> det.fit()
>>> det.score_one({"flow": 31.6}, t_s=300.0) < 1.0
True
>>> det.score_one({"flow": 24.1}, t_s=301.0) > 1.0
True
>>> det.explain().contributions[0].sentence()
'flow contributes 100 %; observed 24.1 m³/h, expected 31.5 ± 0.505'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from analytics.types import Contribution, Explanation

Row = Mapping[str, float]
F64 = npt.NDArray[np.float64]

#: Head room above the worst normal case, and the quantile that defines it.
DEFAULT_QUANTILE = 0.999
DEFAULT_MARGIN = 1.5


@runtime_checkable
class Detector(Protocol):
    """River's contract, plus an explanation of the last score."""

    name: str

    def learn_one(self, x: Row, *, t_s: float | None = None) -> None: ...

    def score_one(self, x: Row, *, t_s: float | None = None) -> float: ...

    def explain(self) -> Explanation: ...


def _limits(train: F64, quantile: float, margin: float, floor: F64) -> F64:
    """Per-column limit: the training scores' quantile × margin, never below ``floor``."""
    if train.shape[0] == 0:
        return np.maximum(floor, 1e-12)
    finite = np.isfinite(train)
    seen = finite.any(axis=0)  # a signal with no value in training (nanquantile would warn)
    q = np.zeros(train.shape[1])
    q[seen] = np.nanquantile(np.where(finite, train, np.nan)[:, seen], quantile, axis=0)
    q = np.where(np.isfinite(q), q, 0.0)
    return np.maximum(q * margin, np.maximum(floor, 1e-12))


class _PerSignal:
    """Shared plumbing: columns, row → array, training buffer, normalised scores."""

    name = "signal"

    def __init__(
        self,
        columns: Sequence[str],
        *,
        units: Mapping[str, str] | None = None,
        quantile: float = DEFAULT_QUANTILE,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        self.columns = tuple(columns)
        self.units = dict(units or {})
        self.quantile = quantile
        self.margin = margin
        self.index = {c: i for i, c in enumerate(self.columns)}
        n = len(self.columns)
        self.limit: F64 = np.full(n, np.inf)
        self.fitted = False
        self._train: list[F64] = []
        self._last_scores: F64 = np.zeros(n)
        self._last_x: F64 = np.full(n, np.nan)
        self.burn_in = 0  # training rows ignored while the state settles
        self.reset()

    def reset(self) -> None:
        """Forget the running state (levels, timers), keep the limits: after a restart."""

    def _vector(self, x: Row) -> F64:
        v = np.full(len(self.columns), np.nan)
        for k, val in x.items():
            i = self.index.get(k)
            if i is not None and val is not None:
                v[i] = float(val)
        return v

    def _raw(self, v: F64, t_s: float | None) -> F64:
        """Per-signal raw scores of this row; updates the state."""
        raise NotImplementedError

    def _floor(self) -> F64:
        return np.zeros(len(self.columns))

    def learn_one(self, x: Row, *, t_s: float | None = None) -> None:
        raw = self._raw(self._vector(x), t_s)
        self._train.append(raw)

    def observe(self, x: Row, *, t_s: float | None = None) -> None:
        """Advance the running state without learning from ``x`` (an anomalous row)."""
        self._raw(self._vector(x), t_s)

    def fit(self) -> None:
        """Set the limits from the training scores gathered so far."""
        rows = self._train[min(self.burn_in, len(self._train) // 5) :]
        train = np.array(rows) if rows else np.zeros((0, len(self.columns)))
        self.limit = _limits(train, self.quantile, self.margin, self._floor())
        self._train = []
        self.fitted = True

    def scores(self, x: Row | F64, *, t_s: float | None = None) -> F64:
        """Normalised score of every signal (1.0 = its limit); ``x`` may also be the values
        already in :attr:`columns` order (a caller scoring several detectors builds it once)."""
        v = x if isinstance(x, np.ndarray) else self._vector(x)
        raw = self._raw(v, t_s)
        self._last_x = v
        s = np.where(np.isfinite(raw), raw / self.limit, 0.0) if self.fitted else np.zeros_like(raw)
        self._last_scores = s
        return s

    def score_one(self, x: Row | F64, *, t_s: float | None = None) -> float:
        s = self.scores(x, t_s=t_s)
        return float(s.max()) if s.size else 0.0

    def explain(self) -> Explanation:
        s = self._last_scores
        if not s.size or not s.max() > 0:
            return Explanation(self.name, 0.0)
        i = int(np.argmax(s))
        return Explanation(self.name, float(s[i]), (self._contribution(i),), self._note(i))

    def _contribution(self, i: int) -> Contribution:
        return Contribution(self.columns[i], 1.0, float(self._last_x[i]), math.nan, math.nan,
                            self.units.get(self.columns[i], ""))  # fmt: skip

    def _note(self, i: int) -> str:
        return ""


class Limits(_PerSignal):
    """Engineering range (config or OPC UA ``EURange``): outside it is anomalous at once.

    An engineering range (``EURange``) is where the value normally is, and normal running
    touches its ends: the limit is ``tolerance`` (5 %) of the span beyond it. The score is
    ``excess / (tolerance × span)``, ``excess`` being how far the value is beyond the nearer
    end: 0 inside, 1.0 at the limit, 2.0 at 10 % of the span beyond. Continuous, so the
    alarm's hysteresis works. No training: the range is given.
    """

    name = "limits"

    def __init__(
        self,
        columns: Sequence[str],
        ranges: Mapping[str, tuple[float, float]],
        *,
        units: Mapping[str, str] | None = None,
        tolerance: float = 0.05,
    ) -> None:
        super().__init__(columns, units=units)
        self.low = np.array([ranges.get(c, (-np.inf, np.inf))[0] for c in self.columns], float)
        self.high = np.array([ranges.get(c, (-np.inf, np.inf))[1] for c in self.columns], float)
        span = self.high - self.low
        self.span = np.where(np.isfinite(span) & (span > 0), span, 1.0)
        self.tolerance = tolerance
        self.limit = np.ones(len(self.columns))
        self.fitted = True

    def _raw(self, v: F64, t_s: float | None) -> F64:
        excess = np.maximum(v - self.high, self.low - v)
        with np.errstate(invalid="ignore"):
            out = np.maximum(excess / (self.tolerance * self.span), 0.0)
        return np.where(np.isfinite(out), out, 0.0)

    def fit(self) -> None:
        self._train = []

    def _contribution(self, i: int) -> Contribution:
        lo, hi = self.low[i], self.high[i]
        return Contribution(self.columns[i], 1.0, float(self._last_x[i]), float((lo + hi) / 2),
                            float((hi - lo) / 2), self.units.get(self.columns[i], ""))  # fmt: skip

    def _note(self, i: int) -> str:
        unit = self.units.get(self.columns[i], "")
        side = "above" if self._last_x[i] > self.high[i] else "below"
        return (f"{self.columns[i]} {self._last_x[i]:.4g} {unit} is {side} its range "
                f"{self.low[i]:g}..{self.high[i]:g}").replace("  ", " ")  # fmt: skip


class RobustBaseline(_PerSignal):
    """Distance from an EWMA level in units of an EWMA of absolute deviations (MAD-like).

    ``halflife_s`` sets how fast the level follows the signal: slow changes are absorbed, a
    step or a spike stands out until the level has caught up.
    """

    name = "baseline"

    def __init__(
        self,
        columns: Sequence[str],
        *,
        units: Mapping[str, str] | None = None,
        halflife_s: float = 60.0,
        quantile: float = DEFAULT_QUANTILE,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        super().__init__(columns, units=units, quantile=quantile, margin=margin)
        self.halflife_s = halflife_s
        self.burn_in = 10
        self.scale_floor: F64 = np.zeros(len(self.columns))
        self._scales: list[F64] = []

    def fit(self) -> None:
        # A signal that sits still (a stuck sensor) must not make the scale collapse to 0 and
        # every later wiggle look enormous: the scale never drops below a quarter of normal.
        if self._scales:
            scales = np.array(self._scales)
            seen = np.isfinite(scales).any(axis=0)  # nanmedian warns on a never-seen signal
            median = np.zeros(len(self.columns))
            median[seen] = np.nanmedian(scales[:, seen], axis=0)
            self.scale_floor = 0.25 * median
        self._scales = []
        super().fit()

    def reset(self) -> None:
        n = len(self.columns)
        self.level: F64 = np.full(n, np.nan)
        self.dev: F64 = np.full(n, np.nan)
        self._t: float | None = None
        self._frozen_level: F64 = np.full(n, np.nan)
        self._frozen_dev: F64 = np.full(n, np.nan)
        self._n: F64 = np.zeros(n)

    def _raw(self, v: F64, t_s: float | None) -> F64:
        dt = 1.0 if t_s is None or self._t is None else max(t_s - self._t, 1e-3)
        if t_s is not None:
            self._t = t_s
        ok = np.isfinite(v)
        # A plain running mean until the EWMA's own weight takes over: no start-up transient.
        self._n = self._n + ok
        a = np.maximum(1.0 - 0.5 ** (dt / self.halflife_s), 1.0 / np.maximum(self._n, 1.0))
        new = np.isnan(self.level) & ok
        self.level = np.where(new, v, self.level)
        self.dev = np.where(new & np.isnan(self.dev), 0.0, self.dev)
        scale = np.maximum(1.4826 * self.dev, self.scale_floor) + 1e-9 + 1e-6 * np.abs(self.level)
        with np.errstate(invalid="ignore"):
            z = np.abs(v - self.level) / scale
        self._frozen_level, self._frozen_dev = self.level.copy(), scale
        if not self.fitted:
            self._scales.append(scale)
        # An outlier moves the level and the scale by a bounded amount (huberised update).
        bound = np.where(self._n > 10, 4 * scale, np.inf)
        delta = np.clip(v - self.level, -bound, bound)
        self.level = np.where(ok, self.level + a * delta, self.level)
        self.dev = np.where(ok, self.dev + a * (np.abs(delta) - self.dev), self.dev)
        return np.where(ok, z, np.nan)

    def _contribution(self, i: int) -> Contribution:
        return Contribution(self.columns[i], 1.0, float(self._last_x[i]),
                            float(self._frozen_level[i]), float(self._frozen_dev[i]),
                            self.units.get(self.columns[i], ""))  # fmt: skip


class RateOfChange(_PerSignal):
    """How fast a signal moves (unit per second), against the fastest normal movement."""

    name = "rate"

    def __init__(self, columns: Sequence[str], **kw: object) -> None:
        super().__init__(columns, **kw)  # type: ignore[arg-type]

    def reset(self) -> None:
        self._prev: F64 = np.full(len(self.columns), np.nan)
        self._t: float | None = None
        self._rate: F64 = np.full(len(self.columns), np.nan)

    def _raw(self, v: F64, t_s: float | None) -> F64:
        dt = 1.0 if t_s is None or self._t is None else max(t_s - self._t, 1e-3)
        if t_s is not None:
            self._t = t_s
        with np.errstate(invalid="ignore"):
            rate = np.abs(v - self._prev) / dt
        self._rate = rate
        self._prev = np.where(np.isfinite(v), v, self._prev)
        return rate

    def _note(self, i: int) -> str:
        unit = self.units.get(self.columns[i], "")
        per_s = f"{unit}/s" if unit else "per s"
        return (f"{self.columns[i]} changing at {self._rate[i]:.3g} {per_s}, "
                f"limit {self.limit[i]:.3g}")  # fmt: skip


class _Duration(_PerSignal):
    """A per-signal time (seconds) against the longest seen in training × ``margin``.

    ``min_s`` floors the limit, for signals that showed no such time in training.
    """

    default_min_s = 10.0

    def __init__(
        self,
        columns: Sequence[str],
        *,
        units: Mapping[str, str] | None = None,
        min_s: float | None = None,
        margin: float = 3.0,
    ) -> None:
        super().__init__(columns, units=units, quantile=1.0, margin=margin)
        self.min_s = self.default_min_s if min_s is None else min_s

    def _floor(self) -> F64:
        return np.full(len(self.columns), self.min_s)


class Flatline(_Duration):
    """How long a signal has not changed at all, against the longest normal flat run."""

    name = "flatline"
    default_min_s = 20.0

    def reset(self) -> None:
        n = len(self.columns)
        self._prev: F64 = np.full(n, np.nan)
        self._since: F64 = np.full(n, np.nan)
        self._flat: F64 = np.zeros(n)

    def _raw(self, v: F64, t_s: float | None) -> F64:
        t = 0.0 if t_s is None else t_s
        same = v == self._prev
        self._since = np.where(same, self._since, np.where(np.isfinite(v), t, np.nan))
        self._prev = np.where(np.isfinite(v), v, self._prev)
        self._flat = np.where(np.isfinite(self._since), t - self._since, 0.0)
        return self._flat

    def _note(self, i: int) -> str:
        return f"{self.columns[i]} unchanged for {self._flat[i]:.0f} s"


class Gaps(_Duration):
    """How long a signal has had no good value, against the longest normal gap."""

    name = "gap"

    def reset(self) -> None:
        n = len(self.columns)
        self._good_at: F64 = np.full(n, np.nan)
        self._gap: F64 = np.zeros(n)

    def _raw(self, v: F64, t_s: float | None) -> F64:
        t = 0.0 if t_s is None else t_s
        ok = np.isfinite(v)
        self._good_at = np.where(ok | np.isnan(self._good_at), t, self._good_at)
        self._gap = t - self._good_at
        return self._gap

    def _note(self, i: int) -> str:
        return f"no good value of {self.columns[i]} for {self._gap[i]:.0f} s"
