"""One machine's analytics: readings → steps → scores → episodes.

Readings arrive whenever the device sends them (a poll, a data change); the analyzer folds them
into **steps** of ``step_s`` seconds of the source clock (the mean of the good values in the
step; a signal that did not report keeps its last value, as OPC UA reports only changes). Each
step is scored by every detector, normalised to 1.0 = its limit, and the machine's score is the
largest; the explanation comes from the detector that gave it. The alarm logic turns scores
into episodes.

Warm-up: the first ``warmup_s`` of normal running (and at least ``warmup_rows`` steps) train
the detectors; steps while an episode is open (a signal outside its range) are never used for
training. The fitted detectors are a :class:`Model`, saved with its metadata and reloaded at
restart.

>>> an = MachineAnalyzer("pump-1", {"flow": SignalMeta("m³/h", 0, 40)},
...                      AnalyzerConfig(warmup_s=60, warmup_rows=60, multivariate="none"))
>>> S = 1_000_000_000
>>> for t in range(120):
...     _ = an.add(t * S, {"flow": 31.5 + (t % 5) * 0.1})
>>> an.model is not None
True
>>> events = [e for t in range(120, 200) for r in an.add(t * S, {"flow": 45.0})
...           for e in r.events]
>>> [(e.kind, e.episode.detector) for e in events]
[('opened', 'baseline')]
>>> events[0].episode.contributions[0].sentence()
'flow contributes 100 %; observed 45.0 m³/h, expected 31.7 ± 0.183'
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from analytics.alarm import AlarmConfig, AlarmEvent, AlarmLogic
from analytics.signals import Flatline, Gaps, Limits, RateOfChange, RobustBaseline
from analytics.types import Explanation

NS = 1_000_000_000
MODEL_FORMAT = 1

Multivariate = Literal["pca-t2q", "iforest", "none"]
Check = Literal["limits", "baseline", "rate", "flatline", "gap"]
ALL_CHECKS: tuple[Check, ...] = ("limits", "baseline", "rate", "flatline", "gap")
TEMPERATURE_UNITS = frozenset({"°C", "°F", "K", "degC", "degF", "C", "F"})


@dataclass(frozen=True, slots=True)
class SignalMeta:
    """What the analytics know of a signal: unit and engineering range (NaN: none given)."""

    unit: str = ""
    low: float = math.nan
    high: float = math.nan


@dataclass(frozen=True)
class AnalyzerConfig:
    step_s: float = 1.0
    warmup_s: float = 1800.0
    warmup_rows: int = 300
    multivariate: Multivariate = "pca-t2q"
    checks: tuple[Check, ...] = ALL_CHECKS
    quantile: float = 0.999
    margin: float = 1.5
    seed: int = 0
    alarm: AlarmConfig = field(default_factory=AlarmConfig)
    #: after the warm-up, keep learning: refit the multivariate model each time the normal
    #: running seen doubles, up to this many times the warm-up's rows (1: never)
    relearn_factor: int = 1


@dataclass
class Model:
    """Fitted detectors of one machine, with what they were trained on."""

    machine: str
    columns: tuple[str, ...]
    detectors: list[Any]
    version: str
    trained_from_ns: int
    trained_to_ns: int
    rows: int
    created_ns: int
    settings: dict[str, Any]

    def metadata(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "machine": self.machine,
            "features": list(self.columns),
            "detectors": [d.name for d in self.detectors],
            "version": self.version,
            "trained_from_ns": self.trained_from_ns,
            "trained_to_ns": self.trained_to_ns,
            "rows": self.rows,
            "created_ns": self.created_ns,
            "settings": self.settings,
        }

    def save(self, directory: Path) -> Path:
        """Write ``<machine>.pkl`` and ``<machine>.json`` (metadata) atomically."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.machine}.pkl"
        tmp = path.with_suffix(".pkl.tmp")
        tmp.write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        tmp.replace(path)
        meta = directory / f"{self.machine}.json"
        tmp = meta.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.metadata(), indent=2) + "\n")
        tmp.replace(meta)
        return path

    @staticmethod
    def load(path: Path) -> Model:
        """Read a model written by :meth:`save` (our own file: the agent's data directory)."""
        model = pickle.loads(path.read_bytes())  # noqa: S301 (written by this agent only)
        if not isinstance(model, Model):
            raise TypeError(f"{path}: not a factory-agent model")
        for det in model.detectors:
            reset = getattr(det, "reset", None)
            if callable(reset):
                reset()
        return model


@dataclass(frozen=True, slots=True)
class StepResult:
    """The score of one step and what the alarm logic made of it."""

    time_ns: int
    score: float
    components: dict[str, float]
    explanation: Explanation
    events: list[AlarmEvent]


class MachineAnalyzer:
    """Analytics of one machine; :meth:`add` every reading of it."""

    def __init__(
        self,
        machine: str,
        signals: Mapping[str, SignalMeta],
        config: AnalyzerConfig | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        model: Model | None = None,
    ) -> None:
        self.machine = machine
        self.config = config or AnalyzerConfig()
        self.signals = dict(signals)
        self.columns = tuple(signals)
        self.alarm = AlarmLogic(machine, self.config.alarm, tags=dict(tags or {}))
        self.model: Model | None = None
        self._checks: list[Any] = []
        self._train_rows: list[list[float]] = []
        self._normal: list[list[float]] = []  # normal rows since the model (relearning)
        self._relearn_at = self._relearn_cap = 0
        self.note = ""  # why the model lacks something (e.g. a signal with no values)
        self._train_from: int | None = None
        self._train_to = 0
        self._step_end: int | None = None
        self._sum = dict.fromkeys(self.columns, 0.0)
        self._count = dict.fromkeys(self.columns, 0)
        self._rows: list[tuple[float, ...]] = []  # this step's readings on the fast path
        self._all_floats = (float,) * len(self.columns)
        self._last: dict[str, float] = {}
        self._bad: set[str] = set()
        self.steps = 0
        if model is not None and model.columns == self.columns:
            self.use(model)
        else:
            self._checks = self._new_checks()

    # -- detectors -----------------------------------------------------------------------------
    def _new_checks(self) -> list[Any]:
        c = self.config
        cols = self.columns
        units = {k: m.unit for k, m in self.signals.items()}
        ranges = {k: (m.low, m.high) for k, m in self.signals.items()
                  if math.isfinite(m.low) and math.isfinite(m.high)}  # fmt: skip
        kw: dict[str, Any] = {"units": units, "quantile": c.quantile, "margin": c.margin}
        made: dict[str, Any] = {
            "limits": lambda: Limits(cols, ranges, units=units),
            "baseline": lambda: RobustBaseline(cols, **kw),
            "rate": lambda: RateOfChange(cols, **kw),
            "flatline": lambda: Flatline(cols, units=units),
            "gap": lambda: Gaps(cols, units=units),
        }
        return [made[name]() for name in c.checks]

    def _new_multivariate(self, columns: Sequence[str]) -> Any:
        kind = self.config.multivariate
        if kind == "none":
            return None
        from analytics import multivariate  # noqa: PLC0415 (scikit-learn is slow to import)

        units = {k: self.signals[k].unit for k in columns}
        # Temperatures wander with ambient and load over hours: a warm-up cannot have seen
        # them all, so they are modelled through their rate of change.
        drifting = [k for k in columns if self.signals[k].unit in TEMPERATURE_UNITS]
        if kind == "iforest":
            return multivariate.IsolationForestDetector(
                columns, units=units, drifting=drifting, seed=self.config.seed
            )
        return multivariate.PcaT2Q(columns, units=units, drifting=drifting, seed=self.config.seed)

    def _fit_multivariate(self, data: Any) -> Any:
        """The multivariate model fitted on ``data``, or ``None`` when it cannot be (said in
        :attr:`note`): a signal with no value in most training rows (a dead sensor; the gap
        check reports it) is left out of it, and too few complete rows leave the machine to
        the per-signal checks rather than stop its analysis."""
        self.note = ""
        if self.config.multivariate == "none" or len(data) == 0:
            return None
        present = np.isfinite(data).mean(axis=0) >= 0.5
        columns = [c for c, ok in zip(self.columns, present, strict=True) if ok]
        missing = [c for c, ok in zip(self.columns, present, strict=True) if not ok]
        if missing:
            self.note = f"left out of the {self.config.multivariate} model (no values): "
            self.note += ", ".join(missing)
        if len(columns) < 2:
            self.note = f"no {self.config.multivariate} model: fewer than 2 signals with values"
            return None
        mv = self._new_multivariate(columns)
        try:
            mv.fit(data[:, present])
        except ValueError as exc:  # e.g. too few complete rows for the rate windows
            self.note = f"no {self.config.multivariate} model: {exc}"
            return None
        return mv

    def use(self, model: Model) -> None:
        """Score with ``model`` from now on (loaded, or retrained elsewhere)."""
        self.model = model
        self._checks = list(model.detectors)
        self.alarm.model_version = model.version

    @property
    def warming_up(self) -> bool:
        return self.model is None

    def warmup_progress(self) -> float:
        """0..1: how much of the warm-up is done."""
        if self.model is not None:
            return 1.0
        c = self.config
        rows = len(self._train_rows) / max(c.warmup_rows, 1)
        span = 0.0
        if self._train_from is not None:
            span = (self._train_to - self._train_from) / NS / max(c.warmup_s, 1e-9)
        return min(1.0, rows, span)

    def fit(self, rows: Sequence[Sequence[float]] | None = None) -> Model:
        """Fit on the warm-up rows gathered so far (or on ``rows``) and start scoring."""
        data = np.array(rows if rows is not None else self._train_rows, dtype=float)
        if rows is not None:  # a fresh pass of the per-signal detectors over the given rows
            self._checks = self._new_checks()
            for i, r in enumerate(data):
                x = dict(zip(self.columns, r, strict=True))
                for det in self._checks:
                    det.learn_one(x, t_s=float(i) * self.config.step_s)
        detectors = list(self._checks)
        for det in detectors:
            det.fit()
        mv = self._fit_multivariate(data.reshape(-1, len(self.columns)))
        if mv is not None:
            detectors.append(mv)
        settings = {k: v for k, v in asdict(self.config).items() if k != "alarm"}
        model = self._model(detectors, len(data), self._train_from or 0, self._train_to,
                            settings, salt=settings)  # fmt: skip
        self._normal = [list(r) for r in data] if rows is None else []
        self._relearn_at = 2 * len(data)
        self._relearn_cap = self.config.relearn_factor * len(data)
        self._train_rows = []
        self.use(model)
        return model

    def _model(
        self,
        detectors: list[Any],
        rows: int,
        trained_from_ns: int,
        trained_to_ns: int,
        settings: dict[str, Any],
        *,
        salt: object,
    ) -> Model:
        """A new model version: ``<detector>-<UTC time>-<digest of what it was fitted on>``."""
        digest = hashlib.sha256(pickle.dumps([self.columns, rows, salt])).hexdigest()
        now = time.time_ns()
        created = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now / NS))
        return Model(
            machine=self.machine, columns=self.columns, detectors=detectors,
            version=f"{self.config.multivariate}-{created}-{digest[:6]}",
            trained_from_ns=trained_from_ns, trained_to_ns=trained_to_ns, rows=rows,
            created_ns=now, settings=settings,
        )  # fmt: skip

    def _relearn(self, row: dict[str, float], t_ns: int) -> None:
        """Keep a normal row; refit the multivariate model when the normal running doubled."""
        c, model = self.config, self.model
        if model is None or c.relearn_factor <= 1 or self._relearn_at == 0:
            return
        if self._relearn_at > self._relearn_cap:
            return
        self._normal.append([row[k] for k in self.columns])
        if len(self._normal) < self._relearn_at:
            return
        data = np.array(self._normal, dtype=float)
        mv = self._fit_multivariate(data)
        if mv is None:
            self._relearn_at = 0
            return
        detectors = [d for d in model.detectors if d.name in ALL_CHECKS] + [mv]
        self.model = self._model(detectors, len(data), model.trained_from_ns, t_ns,
                                 model.settings, salt=model.version)  # fmt: skip
        self._checks = list(detectors)
        self.alarm.model_version = self.model.version
        self._relearn_at = 2 * len(data)

    # -- steps ---------------------------------------------------------------------------------
    def add(
        self,
        time_ns: int,
        fields: Mapping[str, Any],
        bad: Sequence[str] = (),
    ) -> list[StepResult]:
        """Fold one reading in; return the results of the steps it completed (0 or 1)."""
        step = int(self.config.step_s * NS)
        out: list[StepResult] = []
        if self._step_end is None:
            self._step_end = (time_ns // step + 1) * step
        elif time_ns >= self._step_end:
            out.append(self._close_step(self._step_end))
            self._step_end = (time_ns // step + 1) * step
        values = fields.values()
        # The common case, a reading of every signal in model order, all finite floats: kept
        # as a tuple and summed per column when the step closes (one loop a step, not a value).
        # A NaN or ±Inf anywhere makes the sum non-finite (checked in C).
        if (
            not bad
            and tuple(fields) == self.columns
            and tuple(map(type, values)) == self._all_floats
            and math.isfinite(sum(values))
        ):
            self._rows.append(tuple(values))
            return out
        if self._rows:
            self._fold()  # sums in arrival order: the same floats as adding one at a time
        sums, counts, isfinite = self._sum, self._count, math.isfinite
        for k, v in fields.items():
            # float is the common case; ints count too, booleans and text do not
            if (type(v) is float or (type(v) is int)) and k in sums and isfinite(v):
                sums[k] += v
                counts[k] += 1
        if bad:
            self._bad.update(b for b in bad if b in sums)
        return out

    def _fold(self) -> None:
        """Add the fast path's readings to the sums, column by column, in arrival order."""
        n = len(self._rows)
        sums, counts = self._sum, self._count
        for k, column in zip(self.columns, zip(*self._rows, strict=True), strict=True):
            sums[k] = functools.reduce(operator.add, column, sums[k])
            counts[k] += n
        self._rows.clear()

    def _row(self) -> dict[str, float]:
        if self._rows:
            self._fold()
        row: dict[str, float] = {}
        for k in self.columns:
            n = self._count[k]
            if n:
                row[k] = self._last[k] = self._sum[k] / n
            elif k in self._bad:
                row[k] = math.nan
                self._last.pop(k, None)
            else:
                row[k] = self._last.get(k, math.nan)
            self._sum[k] = 0.0
            self._count[k] = 0
        self._bad.clear()
        return row

    def _close_step(self, t_ns: int) -> StepResult:
        row = self._row()
        t_s = t_ns / NS
        self.steps += 1
        if self.model is None:
            return self._learn(t_ns, t_s, row)
        return self._score(t_ns, t_s, row)

    def _learn(self, t_ns: int, t_s: float, row: dict[str, float]) -> StepResult:
        # Range checks work from the first step; nothing is learnt while an episode is open.
        components: dict[str, float] = {}
        best, best_expl = 0.0, Explanation("warm-up", 0.0, note="warming up")
        for det in self._checks:
            if det.name == "limits":
                s = det.score_one(row, t_s=t_s)
                components[det.name] = s
                if s > best:
                    best, best_expl = s, det.explain()
        events = self.alarm.update(t_ns, best, best_expl)
        clean = not self.alarm.active and best < 1.0
        for det in self._checks:
            if det.name != "limits":
                if clean:
                    det.learn_one(row, t_s=t_s)
                else:  # keep the running state (levels, timers) current, learn nothing
                    det.observe(row, t_s=t_s)
        if clean:
            if self._train_from is None:
                self._train_from = t_ns
            self._train_to = t_ns
            self._train_rows.append([row[k] for k in self.columns])
            if self.warmup_progress() >= 1.0:
                self.fit()
        return StepResult(t_ns, best, components, best_expl, events)

    def _score(self, t_ns: int, t_s: float, row: dict[str, float]) -> StepResult:
        components: dict[str, float] = {}
        best, best_det = -1.0, None
        values = np.array([row[k] for k in self.columns])  # once for all per-signal checks
        for det in self._checks:
            # Per-signal checks keep time (gaps, rates); the multivariate models are per row.
            s = det.score_one(values, t_s=t_s) if det.name in ALL_CHECKS else det.score_one(row)
            if not math.isfinite(s):
                s = 0.0
            components[det.name] = s
            if s > best:
                best, best_det = s, det
        expl = best_det.explain() if best_det is not None else Explanation("none", 0.0)
        best = max(best, 0.0)
        events = self.alarm.update(t_ns, best, expl)
        if best < 1.0 and not self.alarm.active:
            self._relearn(row, t_ns)
        return StepResult(t_ns, best, components, expl, events)

    def flush(self) -> list[StepResult]:
        """Close the current step (at shutdown)."""
        if self._step_end is None or not any(self._count.values()):
            return []
        return [self._close_step(self._step_end)]
