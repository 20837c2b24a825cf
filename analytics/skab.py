"""SKAB (Skoltech Anomaly Benchmark): load the experiment files and score predictions.

The protocol is the one in the data folder's README (our spec): the first 400 rows of each file
train, the rest is the test part; predictions are binary, one per test row. Every scoring
function here takes the **test part only** (rows ``400:``), one array per file, and sums over
files before dividing. Three views of a detector:

- the outlier score: point-wise F1 / FAR % / MAR % over all test rows (:func:`outlier_score`);
- the NAB-style changepoint score, three profiles (:func:`changepoint_scores`);
- the operator's view: false-alarm episodes per hour of normal running and detection delays.

Where the official implementation (waico/SKAB ``core/metrics.py``, from the ``tsad`` library)
and the README differ, the README wins; :func:`changepoint_score` lists the differences.

An alarm that rises on a changepoint and clears 90 s later, rows 30 s apart: the rising edge
sits at the start of the window [60 s, 120 s] (A_tp = 1), the falling edge at 150 s is outside
every window and costs A_fp, so S = 1 − 0.11 against S_null = −1 and S_perfect = 1:

>>> t = np.arange(10) * 30.0
>>> cp = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
>>> alarm = np.array([0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
>>> {k: round(v, 2) for k, v in changepoint_scores([(t, cp, alarm)]).items()}
{'standard': 94.5, 'lowfp': 89.0, 'lowfn': 96.33}
>>> anomaly = np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
>>> outlier_score([anomaly], [alarm])
OutlierScore(f1=0.86, far=0.0, mar=25.0, tp=3, fp=0, fn=1, tn=6)
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

TRAIN_ROWS = 400
WINDOW_S = 60.0
LABELS = ("anomaly", "changepoint")
PROFILES: Mapping[str, tuple[float, float, float]] = {  # (A_tp, A_fp, A_fn)
    "standard": (1.0, -0.11, -1.0),
    "lowfp": (1.0, -0.22, -1.0),
    "lowfn": (1.0, -0.11, -2.0),
}

FloatArray = npt.NDArray[np.float64]
Int8Array = npt.NDArray[np.int8]
_A = TypeVar("_A", bound=npt.NDArray[Any])
CpFile = tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]  # (time_s, true changepoint, pred)


# ---------------------------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class Experiment:
    """One labelled SKAB file; arrays are read-only, one row per sample (1 Hz)."""

    name: str  # path relative to the data root, e.g. "valve1/3.csv"
    time_s: FloatArray  # seconds since the epoch, timestamps read as UTC
    columns: tuple[str, ...]  # the signal columns, in file order
    values: FloatArray  # shape (rows, len(columns))
    anomaly: Int8Array
    changepoint: Int8Array

    def train(self) -> slice:
        """The rows a detector may learn from (the first 400, possibly contaminated)."""
        return slice(0, TRAIN_ROWS)

    def test(self) -> slice:
        """The rows a detector is scored on (everything after the training part)."""
        return slice(TRAIN_ROWS, None)


def _readonly(a: _A) -> _A:
    a.setflags(write=False)
    return a


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f, delimiter=";"), [])


def load_experiment(path: Path, root: Path) -> Experiment:
    """Read one ``;``-separated SKAB file; missing label columns read as all zeros."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    header = rows[0] if rows else []
    if "datetime" not in header:
        raise ValueError(f"{path}: no 'datetime' column in the header")
    body = rows[1:]
    for n, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise ValueError(f"{path}:{n}: {len(r)} fields, the header has {len(header)}")
    cols = {name: [r[i] for r in body] for i, name in enumerate(header)}
    signals = tuple(c for c in header if c != "datetime" and c not in LABELS)
    try:
        time_s = np.array(cols["datetime"], dtype="datetime64[s]").astype(np.float64)
        values = (
            np.array([cols[c] for c in signals], dtype=np.float64)
            .reshape(len(signals), len(body))
            .T
        )
        labels = {
            k: (np.array(cols[k], dtype=np.float64) != 0).astype(np.int8)
            if k in cols
            else np.zeros(len(body), dtype=np.int8)
            for k in LABELS
        }
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return Experiment(
        name=path.relative_to(root).as_posix(),
        time_s=_readonly(time_s),
        columns=signals,
        values=_readonly(np.ascontiguousarray(values)),
        anomaly=_readonly(labels["anomaly"]),
        changepoint=_readonly(labels["changepoint"]),
    )


def _natural(name: str) -> tuple[str | int, ...]:
    """Sort key: digit runs compare as numbers, so valve1/2.csv comes before valve1/10.csv."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name)))


def find_experiments(root: Path) -> list[Experiment]:
    """Every ``*.csv`` under ``root`` with both label columns, in natural order of name."""
    paths = [p for p in root.rglob("*.csv") if set(LABELS) <= set(_header(p))]
    paths.sort(key=lambda p: _natural(p.relative_to(root).as_posix()))
    return [load_experiment(p, root) for p in paths]


def load_anomaly_free(root: Path) -> Experiment | None:
    """``anomaly-free/anomaly-free.csv`` (labels all zero), or None when the file is absent."""
    path = root / "anomaly-free" / "anomaly-free.csv"
    return load_experiment(path, root) if path.is_file() else None


def always_anomaly(experiments: Sequence[Experiment]) -> list[Int8Array]:
    """The trivial baseline: an alarm on every test row of every file."""
    return [np.ones(len(e.time_s[e.test()]), dtype=np.int8) for e in experiments]


# ---------------------------------------------------------------------------- outlier score


def _binary(a: npt.ArrayLike, what: str) -> npt.NDArray[np.bool_]:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{what}: values must be 0 or 1")
    return arr.astype(bool)


def _pairs(
    truths: Sequence[npt.ArrayLike], preds: Sequence[npt.ArrayLike]
) -> list[tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]]:
    if len(truths) != len(preds):
        raise ValueError(f"{len(truths)} truth arrays but {len(preds)} predictions")
    out = []
    for i, (t, p) in enumerate(zip(truths, preds, strict=True)):
        tb, pb = _binary(t, f"truth[{i}]"), _binary(p, f"pred[{i}]")
        if tb.shape != pb.shape:
            raise ValueError(f"file {i}: {tb.size} truth rows but {pb.size} predictions")
        out.append((tb, pb))
    return out


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True)
class OutlierScore:
    """Point-wise scores over all test rows (rates rounded to 2 decimals; NaN when 0/0)."""

    f1: float
    far: float  # % of normal rows flagged
    mar: float  # % of anomalous rows missed
    tp: int
    fp: int
    fn: int
    tn: int


def outlier_score(truths: Sequence[npt.ArrayLike], preds: Sequence[npt.ArrayLike]) -> OutlierScore:
    """One confusion matrix summed over all files (not a per-file mean); no tolerance."""
    tp = fp = fn = tn = 0
    for t, p in _pairs(truths, preds):
        tp += int(np.sum(t & p))
        fp += int(np.sum(~t & p))
        fn += int(np.sum(t & ~p))
        tn += int(np.sum(~t & ~p))
    return OutlierScore(
        f1=round(_ratio(2 * tp, 2 * tp + fp + fn), 2),
        far=round(_ratio(fp, fp + tn) * 100, 2),
        mar=round(_ratio(fn, fn + tp) * 100, 2),
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
    )


# ------------------------------------------------------------------------- changepoint score


def predicted_changepoints(pred: npt.ArrayLike) -> Int8Array:
    """|diff| of a binary prediction, the first element being the first prediction itself."""
    p = _binary(pred, "pred").astype(np.int8)
    return np.abs(np.diff(p, prepend=np.int8(0))).astype(np.int8)


def changepoint_windows(
    time_s: npt.ArrayLike, changepoint: npt.ArrayLike, window_s: float = WINDOW_S
) -> list[tuple[float, float]]:
    """[t, t + window_s] for each true changepoint t; a later overlapping window starts where
    the previous one ends (touching windows share that instant)."""
    t = np.asarray(time_s, dtype=np.float64)
    starts = t[_binary(changepoint, "changepoint")]
    windows: list[tuple[float, float]] = []
    for s in starts.tolist():
        start = max(s, windows[-1][1]) if windows else s
        windows.append((start, s + window_s))
    return windows


def _scale(frac: float, a_tp: float, a_fp: float) -> float:
    """The README's scoring curve: A_tp at the window start (frac 0), A_fp at its end (1)."""
    x = -math.pi / 2 + math.pi * frac
    half = (a_tp - a_fp) / 2
    return half * (-math.tanh(x) / math.tanh(math.pi / 2)) + half + a_fp


def _file_score(windows: list[tuple[float, float]], edges: FloatArray, profile: str) -> float:
    """S of one file: each window's first edge on the curve or A_fn, A_fp per edge outside."""
    a_tp, a_fp, a_fn = PROFILES[profile]
    score = 0.0
    inside = np.zeros(edges.size, dtype=bool)
    for start, end in windows:
        hit = (edges >= start) & (edges <= end)
        inside |= hit
        if not hit.any():
            score += a_fn
            continue
        first = float(edges[hit][0])  # only the first prediction in a window counts
        frac = (first - start) / (end - start) if end > start else 0.0
        score += _scale(frac, a_tp, a_fp)
    return score + a_fp * int(np.sum(~inside))


def _profile(name: str) -> str:
    key = name.lower()
    if key not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return key


def changepoint_score(files: Sequence[CpFile], profile: str = "standard") -> float:
    """NAB-style score, 100·(S − S_null)/(S_perfect − S_null) summed over files; NaN if no
    file has a changepoint. 100 is perfect, 0 is doing nothing, below 0 is worse than nothing.

    Each file is ``(time_s, true_changepoint, pred)`` with ``pred`` the binary prediction:
    its changepoints are its rising and falling edges (:func:`predicted_changepoints`), so an
    alarm that clears outside every window costs A_fp for its falling edge. An edge on a window
    border is inside it; on the instant shared by a window and the cut one after it, it counts
    for both.

    Differences from the official code (waico/SKAB ``core/metrics.py``, ``chp_score`` with
    ``window_width='60s'``, ``anomaly_window_destination='righter'``; the README is followed):

    - the official curve is sampled at 1000 points (x index ``int(1000·frac)``, capped at 999,
      over ``linspace(−π/2, π/2, 1000)``); here x = −π/2 + π·frac exactly as the README
      writes it; the two agree at both ends and differ by at most 0.0012 per window;
    - the official score is rounded to 2 decimals; this one is not;
    - a zero-width window (two changepoints at one instant) divides by zero there; here a
      prediction in it scores A_tp.
    """
    key = _profile(profile)
    a_tp, _, a_fn = PROFILES[key]
    s = s_null = s_perfect = 0.0
    for i, (time, cp, pred) in enumerate(files):
        t = np.asarray(time, dtype=np.float64)
        edges_mask = predicted_changepoints(pred).astype(bool)
        if not (t.shape == edges_mask.shape == np.shape(cp)):
            raise ValueError(f"file {i}: time_s, changepoint and pred lengths differ")
        if t.size > 1 and np.any(np.diff(t) < 0):
            raise ValueError(f"file {i}: time_s is not sorted")
        windows = changepoint_windows(t, cp)
        s += _file_score(windows, t[edges_mask], key)
        s_null += len(windows) * a_fn
        s_perfect += len(windows) * a_tp
    if s_perfect == s_null:
        return math.nan
    return 100 * (s - s_null) / (s_perfect - s_null)


def changepoint_scores(files: Sequence[CpFile]) -> dict[str, float]:
    """:func:`changepoint_score` for every profile, keyed as in :data:`PROFILES`."""
    return {p: changepoint_score(files, p) for p in PROFILES}


# ---------------------------------------------------------------------------- operator view


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Maximal runs of True as (first row, row after the last)."""
    d = np.diff(mask.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def false_alarm_episodes_per_hour(
    time_s_list: Sequence[npt.ArrayLike],
    truths: Sequence[npt.ArrayLike],
    preds: Sequence[npt.ArrayLike],
) -> float:
    """Alarm episodes (maximal runs of pred = 1) touching no anomalous row, per hour of normal
    running (rows with truth = 0 × the file's median sampling interval); NaN if no such hour."""
    episodes = 0
    normal_s = 0.0
    for (truth, pred), time in zip(_pairs(truths, preds), time_s_list, strict=True):
        episodes += sum(not truth[a:b].any() for a, b in _runs(pred))
        t = np.asarray(time, dtype=np.float64)
        if t.size > 1:
            normal_s += float(np.sum(~truth)) * float(np.median(np.diff(t)))
    return _ratio(episodes, normal_s / 3600)


def detection_delays(
    time_s: npt.ArrayLike, truth: npt.ArrayLike, pred: npt.ArrayLike
) -> list[float]:
    """Seconds from the first row of each anomaly run to the first alarm row inside it;
    runs never alarmed are left out (see :func:`missed_runs`)."""
    t = np.asarray(time_s, dtype=np.float64)
    ((tb, pb),) = _pairs([truth], [pred])
    delays = []
    for a, b in _runs(tb):
        hits = np.flatnonzero(pb[a:b])
        if hits.size:
            delays.append(float(t[a + hits[0]] - t[a]))
    return delays


def missed_runs(truth: npt.ArrayLike, pred: npt.ArrayLike) -> int:
    """Anomaly runs with no alarm on any of their rows."""
    ((tb, pb),) = _pairs([truth], [pred])
    return sum(not pb[a:b].any() for a, b in _runs(tb))


def median_delay(
    time_s_list: Sequence[npt.ArrayLike],
    truths: Sequence[npt.ArrayLike],
    preds: Sequence[npt.ArrayLike],
) -> float:
    """Median of :func:`detection_delays` pooled over files; NaN when nothing was detected."""
    delays = [
        d
        for t, y, p in zip(time_s_list, truths, preds, strict=True)
        for d in detection_delays(t, y, p)
    ]
    return float(np.median(delays)) if delays else math.nan


def evaluate(experiments: Sequence[Experiment], preds: Sequence[npt.ArrayLike]) -> dict[str, float]:
    """Every figure of :func:`render_table` for test-part predictions, one per experiment."""
    times = [e.time_s[e.test()] for e in experiments]
    truths = [e.anomaly[e.test()] for e in experiments]
    out = outlier_score(truths, preds)
    cps = changepoint_scores(
        [(t, e.changepoint[e.test()], p) for t, e, p in zip(times, experiments, preds, strict=True)]
    )
    return {
        "f1": out.f1,
        "far": out.far,
        "mar": out.mar,
        **{f"cp_{k}": v for k, v in cps.items()},
        "fa_per_hour": false_alarm_episodes_per_hour(times, truths, preds),
        "median_delay_s": median_delay(times, truths, preds),
        "missed_runs": sum(missed_runs(y, p) for y, p in zip(truths, preds, strict=True)),
    }


# ---------------------------------------------------------------------------- leaderboard


class LeaderboardRow(NamedTuple):
    """A published result over all 34 SKAB files (our development split has 16 of them)."""

    name: str
    f1: float | None
    far: float | None
    mar: float | None
    cp_standard: float | None

    def as_row(self) -> tuple[str, dict[str, float | None]]:
        """The row as :func:`render_table` takes it."""
        return self.name, {k: v for k, v in self._asdict().items() if k != "name"}


# The README's figures; None where it gives none. It names T²+Q "T²+Q (PCA)" in the outlier list.
LEADERBOARD: tuple[LeaderboardRow, ...] = (
    LeaderboardRow("Conv-AE", 0.78, 13.55, 28.02, None),
    LeaderboardRow("MSET", 0.78, 39.73, 14.13, None),
    LeaderboardRow("T²+Q (PCA)", 0.76, None, None, 25.35),
    LeaderboardRow("LSTM-AE", 0.74, None, None, None),
    LeaderboardRow("Isolation Forest", 0.29, None, None, 26.16),
    LeaderboardRow("MSCRED", None, None, None, 32.42),
)

COLUMNS = (  # (key, header, format)
    ("f1", "F1", "{:.2f}"),
    ("far", "FAR %", "{:.2f}"),
    ("mar", "MAR %", "{:.2f}"),
    ("cp_standard", "CP Standard", "{:.2f}"),
    ("cp_lowfp", "LowFP", "{:.2f}"),
    ("cp_lowfn", "LowFN", "{:.2f}"),
    ("fa_per_hour", "FA episodes/h", "{:.2f}"),
    ("median_delay_s", "median delay s", "{:.0f}"),
)
MISSING = "–"


def _cell(value: object, fmt: str) -> str:
    if value is None or not isinstance(value, int | float) or math.isnan(value):
        return MISSING
    return fmt.format(value)


def render_table(rows: Sequence[tuple[str, Mapping[str, float | None]]]) -> str:
    """A plain aligned text table, one line per (name, figures); absent or NaN shows '–'."""
    header = ["name", *(h for _, h, _ in COLUMNS)]
    body = [[name, *(_cell(fig.get(k), f) for k, _, f in COLUMNS)] for name, fig in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])
