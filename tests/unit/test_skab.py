"""SKAB loading and scoring: hand-computed examples for every metric, then the real files.

Conventions in the changepoint examples: rows are 10 s apart (t = 0, 10, 20, ...), so the 60 s
window of a changepoint at row k covers rows k..k+6 inclusive. Profiles (A_tp, A_fp, A_fn):
Standard (1, -0.11, -1), LowFP (1, -0.22, -1), LowFN (1, -0.11, -2). With one window,
S_null = A_fn and S_perfect = A_tp, so score = 100·(S - A_fn)/(A_tp - A_fn).
"""

from __future__ import annotations

import doctest
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from analytics import skab
from analytics.skab import (
    LEADERBOARD,
    changepoint_score,
    changepoint_scores,
    changepoint_windows,
    detection_delays,
    false_alarm_episodes_per_hour,
    median_delay,
    missed_runs,
    outlier_score,
    predicted_changepoints,
    render_table,
)

DATA = Path("/work/shared/data/skab")
TANH_HALF_PI = math.tanh(math.pi / 2)  # 0.917152...

N = 30
T = np.arange(N) * 10.0  # rows 10 s apart


def onehot(*rows: int, n: int = N) -> np.ndarray:
    a = np.zeros(n, dtype=np.int8)
    a[list(rows)] = 1
    return a


def on_from(row: int, n: int = N) -> np.ndarray:
    """An alarm that rises at `row` and never clears: a single predicted changepoint."""
    a = np.zeros(n, dtype=np.int8)
    a[row:] = 1
    return a


CP10 = onehot(10)  # one true changepoint at t = 100 s: window [100, 160] = rows 10..16


def scores(*files: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
    return changepoint_scores(list(files))


# ------------------------------------------------------------------ predicted changepoints


def test_predicted_changepoints_are_both_edges_and_the_first_element() -> None:
    assert predicted_changepoints([0, 1, 1, 0, 0, 1]).tolist() == [0, 1, 0, 1, 0, 1]
    # a prediction that starts at 1: its first element is itself a changepoint
    assert predicted_changepoints([1, 1, 0]).tolist() == [1, 0, 1]
    assert predicted_changepoints(np.array([True, False])).tolist() == [1, 1]
    assert predicted_changepoints([]).tolist() == []


def test_non_binary_predictions_are_refused() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        predicted_changepoints([0, 2])


# ------------------------------------------------------------------------------- windows


def test_window_is_changepoint_plus_60_s() -> None:
    assert changepoint_windows(T, CP10) == [(100.0, 160.0)]
    assert changepoint_windows(T, np.zeros(N)) == []


def test_overlapping_windows_cut_the_later_one() -> None:
    # changepoints at 0 s and 30 s: [0, 60] and [30, 90] -> the second starts at 60
    assert changepoint_windows(T, onehot(0, 3)) == [(0.0, 60.0), (60.0, 90.0)]
    # a chain at 0, 10, 20 s: [0, 60], [60, 70], [70, 80]
    assert changepoint_windows(T, onehot(0, 1, 2)) == [(0.0, 60.0), (60.0, 70.0), (70.0, 80.0)]
    # touching windows (60 s apart) are left as they are and share the instant 60
    assert changepoint_windows(T, onehot(0, 6)) == [(0.0, 60.0), (60.0, 120.0)]


# ---------------------------------------------------------------------- changepoint score


def test_perfect_prediction_scores_100_in_every_profile() -> None:
    # anomaly rows 10..19, true changepoints at its start (100 s) and first normal row (200 s);
    # predicting the anomaly itself puts the rising edge at 100 and the falling edge at 200,
    # both on window starts: S = 2·A_tp = S_perfect
    anomaly = np.zeros(N, dtype=np.int8)
    anomaly[10:20] = 1
    got = scores((T, onehot(10, 20), anomaly))
    assert got == pytest.approx({"standard": 100.0, "lowfp": 100.0, "lowfn": 100.0})


def test_no_prediction_scores_0_in_every_profile() -> None:
    # every window missed: S = n·A_fn = S_null
    got = scores((T, onehot(10, 20), np.zeros(N, dtype=np.int8)))
    assert got == pytest.approx({"standard": 0.0, "lowfp": 0.0, "lowfn": 0.0})


def test_always_anomaly_has_one_rising_edge_at_the_first_test_row() -> None:
    # edge at row 0 (t = 0) is before the window: S = A_fp + A_fn
    # Standard: 100·(-0.11 - 1 + 1)/(1 + 1) = -5.5
    # LowFP:    100·(-0.22)/2                = -11.0
    # LowFN:    100·(-0.11 - 2 + 2)/(1 + 2)  = -3.667
    got = scores((T, CP10, np.ones(N, dtype=np.int8)))
    assert got == pytest.approx({"standard": -5.5, "lowfp": -11.0, "lowfn": -11 / 3})


def test_prediction_starting_at_1_counts_at_row_0() -> None:
    # a changepoint on the first row: the always-on prediction's first element hits the window
    # start, A_tp -> 100
    assert changepoint_score([(T, onehot(0), np.ones(N))]) == pytest.approx(100.0)
    # a one-row alarm on row 0 has edges at rows 0 and 1, both before the window at row 10:
    # S = 2·(-0.11) - 1 = -1.22 -> 100·(-0.22)/2 = -11.0
    assert changepoint_score([(T, CP10, onehot(0))]) == pytest.approx(-11.0)


def test_prediction_at_window_start_gets_a_tp() -> None:
    # single edge at 100 s = window start: S = 1 -> 100 everywhere
    got = scores((T, CP10, on_from(10)))
    assert got == pytest.approx({"standard": 100.0, "lowfp": 100.0, "lowfn": 100.0})


def test_prediction_at_window_end_gets_a_fp() -> None:
    # single edge at 160 s = window end (inclusive): x = π/2, y = A_fp
    # Standard: S = -0.11 -> 100·(-0.11 + 1)/2 = 44.5
    # LowFP:    S = -0.22 -> 100·(0.78)/2      = 39.0
    # LowFN:    S = -0.11 -> 100·(1.89)/3      = 63.0
    got = scores((T, CP10, on_from(16)))
    assert got == pytest.approx({"standard": 44.5, "lowfp": 39.0, "lowfn": 63.0})


def test_prediction_just_after_the_window_is_a_miss_and_a_false_alarm() -> None:
    # edge at 170 s: A_fn for the window and A_fp outside: S = -1.11 -> 100·(-0.11)/2 = -5.5
    assert changepoint_score([(T, CP10, on_from(17))]) == pytest.approx(-5.5)


def test_prediction_mid_window_follows_the_tanh_curve() -> None:
    # edge at 130 s, frac 0.5, x = 0: y = (A_tp + A_fp)/2
    # Standard: y = 0.445 -> 100·1.445/2 = 72.25;  LowFP: y = 0.39 -> 69.5
    # LowFN:    y = 0.445 -> 100·2.445/3 = 81.5
    got = scores((T, CP10, on_from(13)))
    assert got == pytest.approx({"standard": 72.25, "lowfp": 69.5, "lowfn": 81.5})


def test_prediction_at_a_quarter_of_the_window() -> None:
    # window [100, 160], edge at 115 s: frac 0.25, x = -π/4
    # y = 0.555·tanh(π/4)/tanh(π/2) + 0.445 = 0.555·0.655794/0.917152 + 0.445 = 0.841843
    # Standard: 100·(0.841843 + 1)/2 = 92.0922
    t = np.array([0.0, 100.0, 115.0, 200.0])
    y = 0.555 * math.tanh(math.pi / 4) / TANH_HALF_PI + 0.445
    assert y == pytest.approx(0.841843, abs=1e-6)
    got = changepoint_score([(t, [0, 1, 0, 0], [0, 0, 1, 1])])
    assert got == pytest.approx(100 * (y + 1) / 2)
    assert got == pytest.approx(92.0922, abs=1e-4)


def test_two_predictions_in_one_window_count_once() -> None:
    # alarm on rows 10..12: edges at 100 (rise) and 130 (fall), both in [100, 160];
    # only the first counts and the second is not a false alarm: S = 1 -> 100
    assert changepoint_score([(T, CP10, onehot(10, 11, 12))]) == pytest.approx(100.0)
    # alarm on rows 13..15: edges at 130 and 160; the first (mid-window, 0.445) counts,
    # the one on the window end is ignored: 72.25 as for a single edge at 130
    assert changepoint_score([(T, CP10, onehot(13, 14, 15))]) == pytest.approx(72.25)


def test_predictions_outside_windows_cost_a_fp_each() -> None:
    # pulse on rows 2..3 (edges at 20, 40) and 25 (edges at 250, 260), window missed:
    # S = 4·(-0.11) - 1 = -1.44 -> Standard 100·(-0.44)/2 = -22.0
    # LowFP: S = 4·(-0.22) - 1 -> 100·(-0.88)/2 = -44.0;  LowFN: 100·(-0.44)/3 = -14.667
    got = scores((T, CP10, onehot(2, 3, 25)))
    assert got == pytest.approx({"standard": -22.0, "lowfp": -44.0, "lowfn": -44 / 3})


def test_overlapping_windows_score_the_cut_window() -> None:
    # changepoints at 100 and 130 s: windows [100, 160] and, cut, [160, 190]
    cps = onehot(10, 13)
    # edge at 140 s: window 1 frac 40/60, x = π/6: y = -0.555·tanh(π/6)/tanh(π/2) + 0.445
    #   = -0.555·0.480473/0.917152 + 0.445 = 0.154250; window 2 has nothing: -1
    # S = -0.845750 -> Standard 100·(S + 2)/(2 + 2) = 28.856 (uncut, [130, 190] would have hit)
    y = -0.555 * math.tanh(math.pi / 6) / TANH_HALF_PI + 0.445
    assert y == pytest.approx(0.154250, abs=1e-6)
    got = changepoint_score([(T, cps, on_from(14))])
    assert got == pytest.approx(100 * (y - 1 + 2) / 4)
    assert got == pytest.approx(28.8562, abs=1e-4)
    # edge at 160 s, the instant both windows share: end of window 1 (A_fp) and start of
    # window 2 (A_tp): S = -0.11 + 1 = 0.89 -> 100·2.89/4 = 72.25
    assert changepoint_score([(T, cps, on_from(16))]) == pytest.approx(72.25)


def test_files_without_changepoints_only_add_false_alarms() -> None:
    # file A: perfect (S = 1, one window); file B: no windows, one pulse = 2 edges outside
    # S = 1 - 0.22 = 0.78, S_null = -1, S_perfect = 1 -> 100·1.78/2 = 89.0
    quiet = np.zeros(N, dtype=np.int8)
    got = changepoint_score([(T, CP10, on_from(10)), (T, quiet, onehot(5))])
    assert got == pytest.approx(89.0)
    # no window anywhere: the score is undefined
    assert math.isnan(changepoint_score([(T, quiet, onehot(5))]))
    assert math.isnan(changepoint_score([]))


def test_files_are_summed_before_normalising() -> None:
    # A: one window, hit at its start (S = 1); B: three windows, all missed (S = -3)
    # sum: S = -2, S_null = -4, S_perfect = 4 -> 100·2/8 = 25 (a per-file mean would say 50)
    b_cps = onehot(0, 10, 20)
    got = changepoint_score([(T, CP10, on_from(10)), (T, b_cps, np.zeros(N, dtype=np.int8))])
    assert got == pytest.approx(25.0)


def test_profile_names() -> None:
    files = [(T, CP10, on_from(16))]
    assert changepoint_score(files, "Standard") == changepoint_score(files, "standard")
    assert changepoint_score(files, "LowFP") == pytest.approx(39.0)
    with pytest.raises(ValueError, match="unknown profile"):
        changepoint_score(files, "lowtp")


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        changepoint_score([(T, CP10, np.zeros(N - 1))])
    with pytest.raises(ValueError, match="not sorted"):
        changepoint_score([(T[::-1], CP10, np.zeros(N))])


# -------------------------------------------------------------------------- outlier score


def test_outlier_score_counts_and_rounding() -> None:
    # TP = 2 (rows 0, 1), FN = 1 (row 2), FP = 1 (row 3), TN = 2 (rows 4, 5)
    # F1 = 2·2/(2·2 + 1 + 1) = 0.6667 -> 0.67; FAR = 1/3·100 = 33.33; MAR = 1/3·100 = 33.33
    got = outlier_score([[1, 1, 1, 0, 0, 0]], [[1, 1, 0, 1, 0, 0]])
    assert got == skab.OutlierScore(f1=0.67, far=33.33, mar=33.33, tp=2, fp=1, fn=1, tn=2)


def test_outlier_score_sums_over_files() -> None:
    # A: TP = 1.  B: FP = 3, FN = 1.  Summed: TP 1, FP 3, FN 1, TN 0
    # F1 = 2/(2 + 3 + 1) = 0.33 (per-file mean would be (1 + 0)/2 = 0.5)
    # FAR = 3/(3 + 0)·100 = 100; MAR = 1/(1 + 1)·100 = 50
    got = outlier_score([np.array([1]), np.array([0, 0, 0, 1])], [[1], [1, 1, 1, 0]])
    assert (got.f1, got.far, got.mar) == (0.33, 100.0, 50.0)
    assert (got.tp, got.fp, got.fn, got.tn) == (1, 3, 1, 0)


def test_outlier_score_undefined_ratios_are_nan() -> None:
    # nothing anomalous and nothing flagged: F1 = 0/0, MAR = 0/0, FAR = 0/2 = 0
    got = outlier_score([[0, 0]], [[0, 0]])
    assert math.isnan(got.f1) and math.isnan(got.mar) and got.far == 0.0


def test_outlier_score_refuses_mismatched_files() -> None:
    with pytest.raises(ValueError, match="2 predictions"):
        outlier_score([[0]], [[0], [1]])
    with pytest.raises(ValueError, match="file 0"):
        outlier_score([[0, 1]], [[0]])


# -------------------------------------------------------------------------- operator view


def test_false_alarm_episodes_per_hour() -> None:
    # episodes: row 0 (false), rows 4..5 (overlaps the anomaly at 3..4, true), row 7 (false)
    # normal rows: 6, at 1 s each = 6 s = 1/600 h -> 2 episodes / (1/600 h) = 1200 per hour
    t = np.arange(8.0)
    truth = [0, 0, 0, 1, 1, 0, 0, 0]
    pred = [1, 0, 0, 0, 1, 1, 0, 1]
    assert false_alarm_episodes_per_hour([t], [truth], [pred]) == pytest.approx(1200.0)


def test_false_alarm_hours_use_each_files_median_interval() -> None:
    # file A: 4 normal rows at 1 s (one 3 s gap does not move the median) = 4 s, one episode
    # file B: 2 normal rows at 2 s = 4 s, no episode -> 1 episode / 8 s = 450 per hour
    a = (np.array([0.0, 1, 2, 5]), [0, 0, 0, 0], [0, 1, 0, 0])
    b = (np.array([0.0, 2]), [0, 0], [0, 0])
    got = false_alarm_episodes_per_hour([a[0], b[0]], [a[1], b[1]], [a[2], b[2]])
    assert got == pytest.approx(450.0)
    assert math.isnan(false_alarm_episodes_per_hour([], [], []))


def test_detection_delays_and_missed_runs() -> None:
    # anomaly runs: rows 2..4 (t = 20..40) and rows 7..8 (t = 70..80)
    # run 1: first alarm inside it at row 3 -> 30 - 20 = 10 s; run 2: never alarmed -> missed
    truth = [0, 0, 1, 1, 1, 0, 0, 1, 1, 0]
    pred = [1, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert detection_delays(T[:10], truth, pred) == [10.0]
    assert missed_runs(truth, pred) == 1
    # an alarm already on when the run starts has delay 0
    assert detection_delays(T[:4], [0, 1, 1, 0], [1, 1, 0, 0]) == [0.0]


def test_median_delay_pools_files() -> None:
    # delays 10 s (file A) and 0 s, 30 s (file B) -> median 10 s
    a = ([0, 1, 1, 0], [0, 0, 1, 0])
    b = ([1, 1, 0, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0, 1, 0])
    got = median_delay([T[:4], T[:8]], [a[0], b[0]], [a[1], b[1]])
    assert got == 10.0
    assert math.isnan(median_delay([T[:2]], [[1, 0]], [[0, 0]]))


# ---------------------------------------------------------------------------- leaderboard


def test_leaderboard_has_the_readme_figures() -> None:
    rows = {r.name: r for r in LEADERBOARD}
    assert rows["Conv-AE"][1:] == (0.78, 13.55, 28.02, None)
    assert rows["MSET"][1:] == (0.78, 39.73, 14.13, None)
    assert rows["Isolation Forest"][1:] == (0.29, None, None, 26.16)
    assert rows["MSCRED"].cp_standard == 32.42
    assert rows["T²+Q (PCA)"].cp_standard == 25.35


def test_render_table_aligns_and_marks_missing_values() -> None:
    text = render_table(
        [
            ("mine", {"f1": 0.7, "far": 100.0, "mar": 0.0, "cp_standard": math.nan}),
            LEADERBOARD[0].as_row(),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["name", "F1", "FAR"]
    assert "median delay s" in lines[0]
    assert len({len(line) for line in lines}) == 1  # every line as wide as the header
    mine = lines[2].split()
    assert mine[:4] == ["mine", "0.70", "100.00", "0.00"]
    assert mine[4:] == ["–"] * 5  # NaN and absent keys alike
    assert lines[3].split()[1:4] == ["0.78", "13.55", "28.02"]


# -------------------------------------------------------------------------------- loading

HEADER = (
    "datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;Thermocouple;"
    "Voltage;Volume Flow RateRMS"
)


def write_skab(path: Path, rows: int, labels: bool = True) -> None:
    """A made-up file in SKAB's format: 1 Hz from 2020-03-09 10:34:33, labels on rows 2 and 3."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER + (";anomaly;changepoint" if labels else "")]
    start = datetime(2020, 3, 9, 10, 34, 33, tzinfo=UTC)
    for i in range(rows):
        stamp = datetime.fromtimestamp(start.timestamp() + i, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        values = ";".join(f"{i + c / 10}" for c in range(8))
        tail = f";{1.0 if i in (2, 3) else 0.0};{1.0 if i == 2 else 0.0}" if labels else ""
        lines.append(f"{stamp};{values}{tail}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_find_experiments_reads_labelled_files_in_natural_order(tmp_path: Path) -> None:
    for name in ("valve1/10.csv", "valve1/2.csv", "other/1.csv"):
        write_skab(tmp_path / name, rows=5)
    write_skab(tmp_path / "anomaly-free" / "anomaly-free.csv", rows=5, labels=False)
    found = skab.find_experiments(tmp_path)
    assert [e.name for e in found] == ["other/1.csv", "valve1/2.csv", "valve1/10.csv"]
    e = found[0]
    assert e.time_s[0] == datetime(2020, 3, 9, 10, 34, 33, tzinfo=UTC).timestamp()
    assert np.diff(e.time_s).tolist() == [1.0] * 4
    assert e.columns[0] == "Accelerometer1RMS" and len(e.columns) == 8
    assert e.values.shape == (5, 8) and e.values[1, 2] == pytest.approx(1.2)
    assert e.anomaly.tolist() == [0, 0, 1, 1, 0] and e.anomaly.dtype == np.int8
    assert e.changepoint.tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="read-only"):
        e.values[0, 0] = 1.0


def test_anomaly_free_and_splits(tmp_path: Path) -> None:
    assert skab.load_anomaly_free(tmp_path) is None
    write_skab(tmp_path / "anomaly-free" / "anomaly-free.csv", rows=3, labels=False)
    free = skab.load_anomaly_free(tmp_path)
    assert free is not None and free.name == "anomaly-free/anomaly-free.csv"
    assert free.anomaly.tolist() == [0, 0, 0] and free.changepoint.tolist() == [0, 0, 0]
    write_skab(tmp_path / "valve1" / "0.csv", rows=skab.TRAIN_ROWS + 5)
    (e,) = skab.find_experiments(tmp_path)
    assert len(e.time_s[e.train()]) == 400 and len(e.time_s[e.test()]) == 5
    assert [p.tolist() for p in skab.always_anomaly([e])] == [[1] * 5]


def test_malformed_file_names_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("datetime;a;anomaly;changepoint\n2020-03-09 10:34:33;x;0;0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv"):
        skab.load_experiment(bad, tmp_path)


def test_docstring_example_runs() -> None:
    assert doctest.testmod(skab).failed == 0


# ------------------------------------------------------------------------------ real data


def test_always_anomaly_on_valve1() -> None:
    if not (DATA / "valve1").is_dir():
        pytest.skip(f"SKAB data not found at {DATA}")
    experiments = [e for e in skab.find_experiments(DATA) if e.name.startswith("valve1/")]
    assert len(experiments) == 16
    preds = skab.always_anomaly(experiments)
    got = skab.evaluate(experiments, preds)
    # 6309 anomalous and 5451 normal test rows: F1 = 2·6309/(2·6309 + 5451) = 0.698 -> 0.70
    assert (got["f1"], got["far"], got["mar"]) == (0.7, 100.0, 0.0)
    # one rising edge per file at the first test row, before every window: 16 edges at A_fp,
    # all 63 windows missed; Standard 100·(16·-0.11)/(63·2) = -1.397
    assert got["cp_standard"] == pytest.approx(100 * 16 * -0.11 / (63 * 2))
    assert got["cp_lowfp"] == pytest.approx(100 * 16 * -0.22 / (63 * 2))
    assert got["cp_lowfn"] == pytest.approx(100 * 16 * -0.11 / (63 * 3))
    # one alarm episode per file, each covering the anomaly: no false-alarm episode, delay 0
    assert (got["fa_per_hour"], got["median_delay_s"], got["missed_runs"]) == (0.0, 0.0, 0)
