"""Score anomaly episodes against a scenario's ground-truth labels.

A label is one injected fault: machine, type, ``start_s`` and ``effects_until_s`` (seconds of
machine time from the scenario start; the fault's signature is gone after the latter) and
whether it was designed to be ``detectable``. An episode is *raised* at ``raised_s`` (when the
alarm logic annunciated it, after its on-delay) and covers ``start_s``..``end_s``.

Matching: an episode **detects** a label of the same machine when it is raised inside the
label's window ``[start_s, effects_until_s + grace_s]``; the detection delay is
``raised_s - start_s`` of the first such episode. Every episode that detects no label is a
**false alarm**. Recall counts detectable labels only; invisible ones are reported apart.

>>> labels = [Label("cnc-01", "bearing_wear", 600.0, 2400.0)]
>>> eps = [Raised("cnc-01", 615.0), Raised("cnc-01", 5000.0), Raised("imm-01", 700.0)]
>>> r = score(labels, eps, machines=2, hours=2.0)
>>> r["recall"], r["false_alarms"], r["fa_episodes_per_machine_per_hour"], r["median_delay_s"]
({'bearing_wear': 1.0}, 2, 0.5, 15.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Label:
    machine: str
    fault: str
    start_s: float
    effects_until_s: float
    detectable: bool = True
    signal: str = ""


@dataclass(frozen=True, slots=True)
class Raised:
    machine: str
    raised_s: float
    detector: str = ""
    top_signal: str = ""
    id: str = ""


def score(
    labels: Sequence[Label],
    episodes: Sequence[Raised],
    *,
    machines: int,
    hours: float,
    grace_s: float = 60.0,
) -> dict[str, Any]:
    """Recall per fault type, false alarms per machine-hour, detection delays."""
    detected: dict[int, float] = {}
    false_alarms: list[Raised] = []
    for ep in sorted(episodes, key=lambda e: e.raised_s):
        hit = False
        for i, lab in enumerate(labels):
            if (lab.machine == ep.machine
                    and lab.start_s <= ep.raised_s <= lab.effects_until_s + grace_s):  # fmt: skip
                hit = True
                detected.setdefault(i, ep.raised_s - lab.start_s)
        if not hit:
            false_alarms.append(ep)
    per_type: dict[str, list[int]] = {}
    rows = []
    for i, lab in enumerate(labels):
        if lab.detectable:
            per_type.setdefault(lab.fault, []).append(1 if i in detected else 0)
        rows.append({
            "machine": lab.machine, "fault": lab.fault, "signal": lab.signal,
            "start_s": lab.start_s, "detectable": lab.detectable,
            "detected": i in detected, "delay_s": detected.get(i),
        })  # fmt: skip
    delays = [d for i, d in detected.items() if labels[i].detectable]
    n_detectable = sum(1 for lab in labels if lab.detectable)
    fa_rate = len(false_alarms) / (machines * hours) if machines and hours > 0 else float("nan")
    return {
        "recall": {k: sum(v) / len(v) for k, v in sorted(per_type.items())},
        "recall_all": (
            sum(1 for i in detected if labels[i].detectable) / n_detectable
            if n_detectable
            else float("nan")
        ),
        "detected": sum(1 for i in detected if labels[i].detectable),
        "detectable": n_detectable,
        "false_alarms": len(false_alarms),
        "fa_episodes_per_machine_per_hour": fa_rate,
        "fa_episodes_per_hour": fa_rate,
        "fa_episodes_per_machine_per_shift": fa_rate * 8,
        "median_delay_s": float(np.median(delays)) if delays else float("nan"),
        "p90_delay_s": float(np.percentile(delays, 90)) if delays else float("nan"),
        "faults": rows,
        "false_alarm_list": [
            {
                "machine": e.machine,
                "raised_s": e.raised_s,
                "detector": e.detector,
                "top_signal": e.top_signal,
            }
            for e in false_alarms
        ],
    }
