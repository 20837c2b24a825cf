"""``factory-agent retrain``: refit one machine's model on a chosen window of normal running.

Readings come from the local history store; every episode of the journal that is not a false
alarm is cut out of the window (a model is never trained on an anomaly), and a window holding
an episode still open is refused. Episodes acknowledged as false alarms stay in: they are
normal running the old model did not know. The new model is written next to the old one (the
old one is kept as ``<machine>.prev.pkl``); a running agent loads it at its next reload
(SIGHUP, ``systemctl reload factory-agent``).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from typing import Any

from agent.analysis import analyzer_config
from agent.config import AgentConfig
from agent.devices import configured_signals
from agent.history import History
from agent.journal import Journal, iso_utc
from analytics.machine import MachineAnalyzer, Model, SignalMeta
from connectors.cli import UsageError


@dataclass
class RetrainResult:
    model: Model
    readings: int
    excluded: list[tuple[int, int | None]]
    path: str


def retrain(
    cfg: AgentConfig, machine: str, since_ns: int | None, until_ns: int | None
) -> RetrainResult:
    signals = configured_signals(cfg).get(machine)
    if signals is None:
        known = ", ".join(sorted(configured_signals(cfg))) or "none"
        raise UsageError(f"--machine {machine!r}: not a machine of this configuration "
                         f"(machines: {known})")  # fmt: skip
    hist_path = cfg.data_path("history.db")
    if not hist_path.exists():
        raise UsageError(f"{hist_path}: no history yet; run the agent first (history.enabled)")
    history = History(hist_path)
    journal = Journal(cfg.data_path("journal.db"))
    try:
        span = history.span()
        if span is None:
            raise UsageError(f"{hist_path}: the history is empty")
        lo = span[0] if since_ns is None else since_ns
        hi = span[1] if until_ns is None else until_ns
        if hi <= lo:
            raise UsageError(f"--from {iso_utc(lo)} is not before --to {iso_utc(hi)}")
        windows = journal.anomaly_windows(machine, lo, hi)
        for start, end in windows:
            if end is None:
                raise UsageError(
                    f"{machine}: episode {machine}-{start} (from {iso_utc(start)}) is still open "
                    "inside the window; close it, acknowledge it as a false alarm, or choose "
                    "--to before it"
                )
        rows = history.query(machine, lo, hi)
    finally:
        history.close()
        journal.close()
    base = analyzer_config(cfg.analytics)
    metas = {k: SignalMeta(s.unit, s.low, s.high) for k, s in signals.items()}
    an = MachineAnalyzer(machine, metas, _no_warmup_end(base))
    used = 0
    for t, values, quality in rows:
        if any(start <= t <= (end or t) for start, end in windows):
            continue
        bad = [k for k, q in quality.items() if q and q[0] != "good"]
        an.add(t, values, bad)
        used += 1
    an.flush()
    need = base.warmup_rows
    got = len(an._train_rows)
    if got < need:
        raise UsageError(
            f"{machine}: only {got} steps of normal running between {iso_utc(lo)} and "
            f"{iso_utc(hi)} (after removing {len(windows)} anomaly windows); "
            f"analytics.warmup_rows needs {need}: widen --from/--to"
        )
    an.config = base
    model = an.fit()
    models = cfg.data_path("models")
    old = models / f"{machine}.pkl"
    if old.exists():
        shutil.copy2(old, models / f"{machine}.prev.pkl")
    path = model.save(models)
    return RetrainResult(model, used, windows, str(path))


def _no_warmup_end(config: Any) -> Any:
    from dataclasses import replace  # noqa: PLC0415

    return replace(config, warmup_s=math.inf, warmup_rows=1 << 62)


def render(r: RetrainResult) -> str:
    m = r.model
    cut = f", {len(r.excluded)} anomaly windows left out" if r.excluded else ""
    return (
        f"{m.machine}: model {m.version} trained on {m.rows} steps "
        f"({iso_utc(m.trained_from_ns)} .. {iso_utc(m.trained_to_ns)}, {r.readings} readings"
        f"{cut})\n  written to {r.path}; a running agent loads it at its next reload "
        "(SIGHUP / systemctl reload factory-agent)\n"
    )
