"""CPU cost of local anomaly detection in the agent's hook, per reading and per scored step.

Feeds simulator output (one Reading = all signals of a machine at one instant) through
:class:`agent.analysis.Analytics` with the default detectors (PCA T²+Q and the per-signal
checks) after the warm-up, as the running agent does. ``--per-step N`` readings fall in one
scoring step (a 10 Hz poll with the default 1 s step: 10). Prints the median of ``--runs``.
The steady state is measured: relearning is off unless ``--relearn N`` (its refits, a few in
a model's first hours, would otherwise land in the short measured window; with ``--relearn 4``
two refits of 600 and 1,200 rows per machine do).

    python benchmarks/bench_analytics.py [--per-step 10] [--machines 5] [--steps 3000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from agent.analysis import Analytics
from agent.config import AnalyticsSection
from agent.evaluate import scenario_signals
from connectors.types import Reading
from simulators.engine import Plant
from simulators.scenario import Scenario

KINDS = ("cnc", "injection_moulding", "conveyor", "compressor", "crane_hoist")


def run(
    machines: int, per_step: int, steps: int, detector: str, relearn: int = 1
) -> tuple[float, float]:
    scn = Scenario.model_validate({
        "name": "bench", "seed": 1, "speed": per_step, "rate_hz": per_step, "duration": "24h",
        "machines": [{"name": f"m{i}", "kind": KINDS[i % len(KINDS)]} for i in range(machines)],
    })  # fmt: skip
    plant = Plant(scn)  # dt = 1 machine second per tick; per_step readings share a step
    signals = scenario_signals(plant)
    cfg = AnalyticsSection.model_validate(
        {"detector": detector, "warmup_s": 300, "warmup_rows": 300, "step_s": per_step,
         "relearn_factor": relearn}
    )  # fmt: skip
    hook = Analytics(cfg, models_dir=None, journal=None, signals=signals.get)
    names = {m.name: m.model.signal_names() for m in plant.machines}

    def feed(n: int) -> tuple[float, int]:
        readings = []
        for _ in range(n):
            plant.step()
            for m in plant.machines:
                fields = dict(zip(names[m.name], m.values, strict=True))
                readings.append(Reading(m.name, plant.time_ns, fields, {}))
        t0 = time.process_time()
        for r in readings:
            hook(r)
        return time.process_time() - t0, len(readings)

    feed(per_step * 400)  # warm-up and fit
    assert all(not a.warming_up for a in hook.analyzers.values())
    cpu, n = feed(per_step * steps)
    return cpu / n * 1e6, cpu / (n / per_step) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--machines", type=int, default=5)
    p.add_argument("--per-step", type=int, default=10)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--detector", default="pca-t2q", choices=["pca-t2q", "iforest", "none"])
    p.add_argument("--relearn", type=int, default=1, help="analytics.relearn_factor")
    a = p.parse_args()
    per_reading, per_step = [], []
    for _ in range(a.runs):
        r, s = run(a.machines, a.per_step, a.steps, a.detector, a.relearn)
        per_reading.append(r)
        per_step.append(s)
    print(f"analytics ({a.detector}), {a.machines} machines, {a.per_step} readings per step, "
          f"median of {a.runs} runs:")  # fmt: skip
    print(f"  {statistics.median(per_reading):8.1f} µs CPU per reading")
    print(f"  {statistics.median(per_step):8.1f} µs CPU per scored step (machine)")


if __name__ == "__main__":
    main()
