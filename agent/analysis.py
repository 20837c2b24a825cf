"""The pipeline's analytics hook: one analyzer per machine, scores and episodes out.

Every reading passes through unchanged and is folded into its machine's
:class:`~analytics.machine.MachineAnalyzer`. What the analytics produce goes three ways:

- scores, one point per machine and step, as measurement ``anomaly_score`` (fields ``score``
  and one per detector; ``warmup`` 0..1 while learning), for dashboards;
- episodes as measurement ``anomaly``, one point per episode at its start time, rewritten as it
  grows and closes (same series and time: InfluxDB keeps the last state), through the spool;
- episodes in the local journal (SQLite) for the review page and ``factory-agent anomalies``.

Models are saved under ``<data_dir>/models/`` when the warm-up ends and reloaded at start when
their features match the configured signals.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from agent.config import AnalyticsSection
from agent.journal import Journal
from agent.lineprotocol import Encoder
from analytics.alarm import AlarmConfig, AlarmEvent
from analytics.machine import AnalyzerConfig, MachineAnalyzer, Model, SignalMeta, StepResult
from analytics.types import Episode
from connectors.types import Reading, SignalInfo

log = structlog.get_logger(__name__)

SCORE_MEASUREMENT = "anomaly_score"
ANOMALY_MEASUREMENT = "anomaly"


def analyzer_config(cfg: AnalyticsSection) -> AnalyzerConfig:
    return AnalyzerConfig(
        step_s=cfg.step_s,
        warmup_s=cfg.warmup_s,
        warmup_rows=cfg.warmup_rows,
        multivariate=cfg.detector,
        checks=tuple(cfg.checks),
        quantile=cfg.quantile,
        margin=cfg.margin,
        relearn_factor=cfg.relearn_factor,
        alarm=AlarmConfig(**cfg.alarm.model_dump()),  # the same names, checked by pydantic
    )  # fmt: skip


def episode_reading(ep: Episode, state: str) -> Reading:
    """The ``anomaly`` point of an episode: at its start, so later states overwrite it."""
    top = ep.contributions[0] if ep.contributions else None
    fields: dict[str, Any] = {
        "id": ep.id,
        "state": state,
        "severity": ep.severity,
        "peak_score": float(ep.peak_score),
        "detector": ep.detector,
        "model_version": ep.model_version,
        "explanation": ep.explanation().sentence(),
        "top_signal": top.signal if top else "",
        "end_ns": ep.end_ns or 0,
        "duration_s": float((ep.end_ns - ep.start_ns) / 1e9) if ep.end_ns else 0.0,
    }
    return Reading(ep.machine, ep.start_ns, fields, dict(ep.tags))


class Analytics:
    """Callable as the pipeline hook: ``hook(reading) -> (reading,)``."""

    def __init__(
        self,
        cfg: AnalyticsSection,
        *,
        models_dir: Path | None,
        journal: Journal | None,
        emit: Callable[[list[bytes]], None] | None = None,
        signals: Callable[[str], Mapping[str, SignalInfo] | None] | None = None,
        on_event: Callable[[AlarmEvent], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.config = analyzer_config(cfg)
        self.models_dir = models_dir
        self.journal = journal
        self.emit = emit
        self.signals = signals
        self.on_event = on_event
        self.analyzers: dict[str, MachineAnalyzer] = {}
        self.exclude = set(cfg.exclude)
        self._scores = Encoder(SCORE_MEASUREMENT)
        self._anomalies = Encoder(ANOMALY_MEASUREMENT)
        self._out: list[bytes] = []
        self.events: list[AlarmEvent] = []  # recent, newest last (for the live view)
        self.readings = 0
        self._saved: dict[str, str] = {}  # machine -> model version on disk

    # -- the hook ------------------------------------------------------------------------------
    def __call__(self, reading: Reading) -> Iterable[Reading]:
        if reading.machine in self.exclude:
            return (reading,)
        try:
            an = self.analyzers.get(reading.machine) or self._analyzer(reading)
            bad = (
                [k for k, q in reading.quality.items() if not q.is_good] if reading.quality else ()
            )
            for result in an.add(reading.time_ns, reading.fields, bad):
                self._handle(an, result, reading.tags)
        except Exception as exc:  # a bug in the analytics must never stop acquisition
            self.exclude.add(reading.machine)
            log.exception("analytics_failed", machine=reading.machine, error=str(exc),
                          hint="its readings still flow; it is left out of the analytics "
                               "until the agent restarts")  # fmt: skip
        self.readings += 1
        if self._out and self.emit is not None:
            self.emit(self._out)
            self._out = []
        return (reading,)

    def _analyzer(self, reading: Reading) -> MachineAnalyzer:
        known = self.signals(reading.machine) if self.signals else None
        if known:
            metas = {k: SignalMeta(s.unit, s.low, s.high) for k, s in known.items()}
        else:  # not declared (e.g. discovered later): the numeric fields of its first reading
            metas = {k: SignalMeta() for k, v in reading.fields.items()
                     if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
        model = self._load_model(reading.machine, tuple(metas))
        an = MachineAnalyzer(reading.machine, metas, self.config, tags=reading.tags, model=model)
        if model is not None:
            self._saved[reading.machine] = model.version
        self.analyzers[reading.machine] = an
        return an

    def _load_model(self, machine: str, columns: tuple[str, ...]) -> Model | None:
        if self.models_dir is None:
            return None
        path = self.models_dir / f"{machine}.pkl"
        if not path.exists():
            return None
        try:
            model = Model.load(path)
        except Exception as exc:  # a damaged or foreign file: learn again, say so
            log.warning("model_unreadable", machine=machine, path=str(path), error=str(exc))
            return None
        if model.columns != columns:
            log.warning("model_features_changed", machine=machine, path=str(path),
                        model=list(model.columns), now=list(columns),
                        hint="the signals changed: learning a new model")  # fmt: skip
            return None
        log.info("model_loaded", machine=machine, version=model.version, rows=model.rows)
        return model

    def _handle(self, an: MachineAnalyzer, r: StepResult, tags: dict[str, str]) -> None:
        if self.cfg.scores:
            fields: dict[str, Any] = {"score": r.score}
            for k, v in r.components.items():
                fields[k.replace("-", "_")] = v
            if an.warming_up or r.explanation.detector == "warm-up":
                fields["warmup"] = an.warmup_progress()
            line = self._scores.encode(Reading(an.machine, r.time_ns, fields, tags))
            if line is not None:
                self._out.append(line)
        for ev in r.events:
            self._event(ev)
        if an.model is not None and self._saved.get(an.machine) != an.model.version:
            self._saved[an.machine] = an.model.version
            if an.note:
                log.warning("model_incomplete", machine=an.machine, note=an.note)
            self._save(an.model)

    def _save(self, model: Model) -> None:
        log.info("model_trained", machine=model.machine, version=model.version, rows=model.rows,
                 features=len(model.columns))  # fmt: skip
        if self.models_dir is not None:
            try:
                model.save(self.models_dir)
            except OSError as exc:
                log.error("model_save_failed", machine=model.machine, error=str(exc))

    def _event(self, ev: AlarmEvent) -> None:
        ep = ev.episode
        state = "closed" if ev.kind == "closed" else "open"
        if self.journal is not None and ev.kind != "suppressed":
            with contextlib.suppress(Exception):  # the journal's word, when it has one
                stored = self.journal.get(ep.id)
                if stored is not None and stored.state == "acknowledged":
                    state = "acknowledged"
        if ev.kind == "suppressed":
            log.warning("anomaly_suppressed", machine=ep.machine, reason=ev.reason,
                        detector=ep.detector)  # fmt: skip
        else:
            if self.journal is not None:
                try:
                    self.journal.record(ep)
                except Exception as exc:  # a full disk must not stop acquisition
                    log.error("journal_write_failed", episode=ep.id, error=str(exc))
            line = self._anomalies.encode(episode_reading(ep, state))
            if line is not None:
                self._out.append(line)
            logger = log.warning if ev.kind in ("opened", "reopened") else log.info
            logger(f"anomaly_{ev.kind}", episode=ep.id, machine=ep.machine,
                   severity=ep.severity, detector=ep.detector,
                   why=ep.explanation().sentence(2))  # fmt: skip
        self.events.append(ev)
        del self.events[:-50]
        if self.on_event is not None:
            self.on_event(ev)

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close open episodes (the agent stops: nobody watches them any more)."""
        now = time.time_ns()
        for an in self.analyzers.values():
            ev = an.alarm.close(max(now, an.alarm.current.start_ns) if an.alarm.current else now)
            if ev is not None:
                self._event(ev)
        if self._out and self.emit is not None:
            self.emit(self._out)
            self._out = []

    def reload_models(self) -> int:
        """Pick up models written by ``factory-agent retrain``; return how many changed."""
        changed = 0
        for name, an in self.analyzers.items():
            model = self._load_model(name, an.columns)
            if model is not None and (an.model is None or model.version != an.model.version):
                an.use(model)
                self._saved[name] = model.version
                changed += 1
        return changed

    def status(self) -> list[dict[str, Any]]:
        """Per machine: warming up or scoring, model version, open episode."""
        out = []
        for name, an in sorted(self.analyzers.items()):
            cur = an.alarm.current
            out.append({
                "machine": name,
                "state": "warm-up" if an.warming_up else "scoring",
                "warmup": round(an.warmup_progress(), 3),
                "model_version": an.model.version if an.model else "",
                "open_episode": cur.id if cur else "",
                "severity": cur.severity if cur else 0,
                "why": cur.explanation().sentence(1) if cur else "",
                "opened": an.alarm.stats.opened,
                "suppressed": an.alarm.stats.suppressed_rate + an.alarm.stats.suppressed_chatter,
            })  # fmt: skip
        return out
