"""``factory-agent evaluate``: how good is the detection, measured, with the command to repeat it.

``evaluate scenario FILE`` runs a simulator scenario as fast as the CPU allows (one step of
machine time per tick, no servers: the transport is tested elsewhere) through the agent's own
analytics hook (:class:`agent.analysis.Analytics`, the alarm logic, the journal), then scores
the episodes against the scenario's ground-truth labels (:mod:`analytics.scoring`).

``evaluate skab DIR`` follows the SKAB benchmark's protocol (:mod:`analytics.skab`).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from agent.analysis import Analytics
from agent.config import AnalyticsSection
from agent.journal import Journal
from analytics.alarm import AlarmEvent
from analytics.scoring import Label, Raised, score
from connectors.types import Quality, Reading, SignalInfo
from simulators.engine import Plant
from simulators.scenario import Scenario


class Progress:
    """A one-line progress bar on a terminal; a line every 10 % otherwise."""

    def __init__(self, total: float, label: str, out: IO[str] | None = None) -> None:
        self.total = max(total, 1e-9)
        self.label = label
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty()
        self.began = time.monotonic()
        self._shown = -1

    def update(self, done: float, note: str = "") -> None:
        frac = min(1.0, done / self.total)
        pct = int(frac * 100)
        step = pct if self.tty else pct // 10 * 10
        if step == self._shown:
            return
        self._shown = step
        bar = "#" * int(frac * 30)
        elapsed = time.monotonic() - self.began
        text = f"{self.label} [{bar:<30}] {pct:3d}% {elapsed:5.0f} s {note}"
        if self.tty:
            self.out.write("\r" + text[:120])
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def scenario_signals(plant: Plant) -> dict[str, dict[str, SignalInfo]]:
    return {m.name: {s.name: s.info() for s in m.model.signals} for m in plant.machines}


def run_scenario(
    scenario: Scenario,
    cfg: AnalyticsSection,
    *,
    data_dir: Path | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> tuple[list[dict[str, Any]], list[AlarmEvent], Analytics, int]:
    """Run ``scenario`` through the analytics: its labels, the events, the hook, start time."""
    step = cfg.step_s
    fast = scenario.model_copy(update={"rate_hz": scenario.speed / step})
    plant = Plant(fast)
    labels: list[dict[str, Any]] = []
    plant.on_label = labels.append
    events: list[AlarmEvent] = []
    signals = scenario_signals(plant)
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="factory-agent-eval-")
        data_dir = Path(tmp.name)
    journal = Journal(data_dir / "journal.db")
    hook = Analytics(cfg, models_dir=None, journal=journal, signals=signals.get,
                     on_event=events.append)  # fmt: skip
    bad_comm = Quality.bad(0x80310000, "BadNoCommunication")
    ticks = int(scenario.duration / step)
    try:
        for i in range(ticks):
            plant.step()
            for m in plant.machines:
                names = m.model.signal_names()
                fields: dict[str, Any] = {}
                quality: dict[str, Quality] = {}
                for name, v, st in zip(names, m.values, m.status, strict=True):
                    fields[name] = v if st == 0 else None
                    if st != 0:
                        quality[name] = bad_comm if not m.online else Quality.bad(st)
                hook(Reading(m.name, plant.time_ns, fields, {"line": m.spec.line}, quality))
            if progress is not None and i % 600 == 0:
                progress(i / ticks, f"{len(events)} events")
        hook.close()
    finally:
        journal.close()
        if tmp is not None:
            tmp.cleanup()
    return labels, events, hook, plant.start_ns


def evaluate_scenario(
    scenario: Scenario, cfg: AnalyticsSection, *, grace_s: float = 60.0, out: IO[str] | None = None
) -> dict[str, Any]:
    bar = Progress(1.0, f"scenario {scenario.name}", out)
    t0 = time.process_time()
    labels, events, _hook, start_ns = run_scenario(scenario, cfg, progress=bar.update)
    bar.update(1.0)
    bar.done()
    cpu = time.process_time() - t0
    raised: dict[str, Raised] = {}
    for ev in events:
        if ev.kind == "opened":
            ep = ev.episode
            top = ep.contributions[0].signal if ep.contributions else ""
            raised[ep.id] = Raised(ep.machine, (ev.time_ns - start_ns) / 1e9, ep.detector, top,
                                   ep.id)  # fmt: skip
    lab = [Label(x["machine"], x["fault"], x["start_s"], x["effects_until_s"], x["detectable"],
                 ",".join(x["signals"])) for x in labels]  # fmt: skip
    hours = scenario.duration / 3600
    result = score(lab, list(raised.values()), machines=len(scenario.machines), hours=hours,
                   grace_s=grace_s)  # fmt: skip
    result.update({
        "scenario": scenario.name,
        "machine_hours": len(scenario.machines) * hours,
        "episodes": len(raised),
        "suppressed": sum(1 for e in events if e.kind == "suppressed"),
        "cpu_s": cpu,
    })  # fmt: skip
    return result


def render_scenario(r: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.0f}" if isinstance(v, float) else str(v)

    lines = [f"scenario {r['scenario']}: {r['machine_hours']:.0f} machine-hours, "
             f"{r['episodes']} episodes ({r['suppressed']} suppressed)", "",
             f"  {'machine':<15}{'fault':<16}{'signal':<28}{'start':>8}  {'detected':<9}"
             f"{'delay s':>8}"]  # fmt: skip
    for f in r["faults"]:
        det = "yes" if f["detected"] else ("no" if f["detectable"] else "no (invisible)")
        lines.append(f"  {f['machine']:<15}{f['fault']:<16}{f['signal'][:27]:<28}"
                     f"{f['start_s'] / 3600:>7.2f}h  {det:<9}{fmt(f['delay_s']):>8}")  # fmt: skip
    lines.append("")
    recall = ", ".join(f"{k} {v:.0%}" for k, v in r["recall"].items())
    lines.append(f"  recall {r['recall_all']:.0%} ({r['detected']}/{r['detectable']}): {recall}")
    lines.append(
        f"  false alarm episodes: {r['false_alarms']} = "
        f"{r['fa_episodes_per_machine_per_shift']:.2f} per machine per 8-hour shift"
    )
    for fa in r["false_alarm_list"]:
        lines.append(f"    {fa['machine']} at {fa['raised_s'] / 3600:.2f}h: {fa['detector']} "
                     f"{fa['top_signal']}")  # fmt: skip
    lines.append(
        f"  detection delay: median {fmt(r['median_delay_s'])} s, "
        f"p90 {fmt(r['p90_delay_s'])} s (machine time)"
    )
    lines.append(f"  CPU: {r['cpu_s']:.0f} s for the whole run (simulation included)")
    return "\n".join(lines)


def evaluate_skab(
    root: Path, cfg: AnalyticsSection, out: IO[str] | None = None
) -> tuple[str, dict[str, Any]]:
    """The SKAB protocol on every labelled file under ``root``: our row beside the others."""
    from analytics import skab, skab_run  # noqa: PLC0415 (scikit-learn is slow to import)

    experiments = skab.find_experiments(root)
    if not experiments:
        raise FileNotFoundError(f"{root}: no SKAB experiment files (CSV with anomaly and "
                                "changepoint columns) found under it")  # fmt: skip
    a = cfg.alarm
    alarm = replace(skab_run.SKAB_ALARM, on_delay_s=a.on_delay_s, clear_ratio=a.clear_ratio,
                    instant_ratio=a.instant_ratio)  # fmt: skip
    kinds = ["pca-t2q", "iforest"] if cfg.detector == "none" else [cfg.detector]
    rows: list[tuple[str, dict[str, Any]]] = []
    result: dict[str, Any] = {"files": len(experiments), "root": str(root)}
    for kind in kinds:
        factory = skab_run.pca_factory() if kind == "pca-t2q" else skab_run.iforest_factory()
        bar = Progress(len(experiments), f"skab {kind}", out)
        preds = []
        for i, exp in enumerate(experiments):
            preds.append(skab_run.predict_experiment(exp, detector_factory=factory, alarm=alarm))
            bar.update(i + 1, exp.name)
        bar.done()
        figures = skab.evaluate(experiments, preds)
        figures["fa_episodes_per_hour"] = figures.get("fa_per_hour", math.nan)
        rows.append((f"factory-agent {kind} (online)", figures))
        result.setdefault("ours", {})[kind] = figures
        if kind == kinds[0]:
            result.update(figures)
    base = skab.evaluate(experiments, skab.always_anomaly(experiments))
    rows.append(("always anomaly", base))
    rows.extend(r.as_row() for r in skab.LEADERBOARD)
    result["always_anomaly"] = base
    text = (
        f"SKAB protocol on {len(experiments)} files under {root} (first 400 rows of each "
        "file train; leaderboard rows: published, all 34 files)\n\n" + skab.render_table(rows)
    )
    return text, result
