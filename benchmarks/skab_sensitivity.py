"""SKAB figures of both multivariate detectors while each main parameter moves around its value.

    .venv/bin/python benchmarks/skab_sensitivity.py [DATA_FOLDER] [--detector pca|iforest|both]

DATA_FOLDER defaults to ../shared/data/skab/valve1 (the data is GPL-3.0: it is read where it
lies, never copied). Protocol as in analytics/skab_run.py: per file, fit on the first 400 rows,
score the rest causally, alarm logic with SKAB_ALARM, prediction = episode open.

Each parameter is multiplied by ×0.5, ×0.75, ×1.5 and ×2 with the others at their chosen values:
``smoothing_s``, ``rate_s``, the tail probability ``1 − quantile``, ``1 − variance`` (PCA),
``n_estimators`` (forest), the number of held-out ``folds``, and the alarm's ``on_delay_s``
and ``off_delay_s``; ``clear_ratio`` takes 0.5, 0.6, 0.9 and 1.0. Two rows change the signal
set: the motor temperature added back as a rate, and the fluid temperature as a level instead
of a rate. The forest also gets five seeds. The PCA table takes about a second, the forest's a
few minutes (five forests per file and setting).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analytics import skab  # noqa: E402
from analytics.alarm import AlarmConfig  # noqa: E402
from analytics.skab_run import (  # noqa: E402
    IFOREST_PARAMS,
    PCA_PARAMS,
    SKAB_ALARM,
    SKAB_DRIFTING,
    SKAB_IGNORED,
    DetectorFactory,
    evaluate,
    iforest_factory,
    pca_factory,
)

FACTORS = (0.5, 0.75, 1.5, 2.0)
Variant = tuple[str, dict[str, Any], AlarmConfig]


def variants(params: Mapping[str, Any], detector: str) -> Iterator[Variant]:
    """(label, detector keyword overrides, alarm config), the chosen setting first."""
    yield "chosen", {}, SKAB_ALARM
    for f in FACTORS:
        yield (
            f"smoothing_s {params['smoothing_s'] * f:g}",
            {"smoothing_s": params["smoothing_s"] * f},
            SKAB_ALARM,
        )
    for f in FACTORS:
        yield f"rate_s {params['rate_s'] * f:g}", {"rate_s": params["rate_s"] * f}, SKAB_ALARM
    for f in FACTORS:
        q = 1 - (1 - params["quantile"]) * f
        yield f"quantile {q:.5g}", {"quantile": q}, SKAB_ALARM
    if detector == "pca":
        for f in FACTORS:
            v = 1 - (1 - 0.9) * f
            yield f"variance {v:.3g}", {"variance": v}, SKAB_ALARM
    else:
        for f in FACTORS:
            yield f"n_estimators {round(100 * f)}", {"n_estimators": round(100 * f)}, SKAB_ALARM
    for f in FACTORS:
        yield f"folds {round(4 * f)}", {"folds": round(4 * f)}, SKAB_ALARM
    for f in FACTORS:
        on = SKAB_ALARM.on_delay_s * f
        yield f"alarm on_delay_s {on:g}", {}, dataclasses.replace(SKAB_ALARM, on_delay_s=on)
    for f in FACTORS:
        off = SKAB_ALARM.off_delay_s * f
        yield f"alarm off_delay_s {off:g}", {}, dataclasses.replace(SKAB_ALARM, off_delay_s=off)
    for c in (0.5, 0.6, 0.9, 1.0):
        yield f"alarm clear_ratio {c:g}", {}, dataclasses.replace(SKAB_ALARM, clear_ratio=c)
    yield "+ motor Temperature (rate)", {"ignored": (), "drifting": (
        "Temperature", *SKAB_DRIFTING)}, SKAB_ALARM  # fmt: skip
    yield "Thermocouple as a level", {"drifting": ()}, SKAB_ALARM
    if detector == "iforest":
        for seed in range(1, 5):
            yield f"seed {seed}", {"seed": seed}, SKAB_ALARM


def table(
    experiments: Sequence[skab.Experiment],
    detector: str,
    make: Callable[..., DetectorFactory],
    params: Mapping[str, Any],
) -> str:
    rows = []
    for label, overrides, alarm in variants(params, detector):
        figures = evaluate(experiments, detector_factory=make(**overrides), alarm=alarm)
        rows.append((label, dict(figures)))
        print(f"  {label}: F1 {figures['f1']:.2f}", file=sys.stderr, flush=True)
    return skab.render_table(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=ROOT.parent / "shared/data/skab/valve1")
    ap.add_argument("--detector", choices=("pca", "iforest", "both"), default="both")
    args = ap.parse_args()
    experiments = skab.find_experiments(args.data)
    if not experiments:
        print(f"no SKAB experiments under {args.data}", file=sys.stderr)
        return 2
    print(f"{len(experiments)} files under {args.data}; alarm: {SKAB_ALARM}")
    print(f"signals ignored: {SKAB_IGNORED}; by their rate: {SKAB_DRIFTING}")
    chosen = [("pca", pca_factory, PCA_PARAMS), ("iforest", iforest_factory, IFOREST_PARAMS)]
    for name, make, params in chosen:
        if args.detector not in (name, "both"):
            continue
        start = time.perf_counter()
        print(f"\n{name}: chosen {dict(params)}")
        print(table(experiments, name, make, params))
        print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
