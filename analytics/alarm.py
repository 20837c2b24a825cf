"""Alarm logic: turn a stream of normalised scores into episodes an operator can live with.

ISA-18.2 / EEMUA 191 style, per machine:

- **on-delay**: the score must stay at or above 1.0 (the limit) for ``on_delay_s`` before an
  episode opens; a gross excursion (``instant_ratio`` × the limit) opens at once, so a single
  large spike is not hidden by the delay;
- **hysteresis** and **off-delay**: an open episode closes only after the score has stayed below
  ``clear_ratio`` for ``off_delay_s``; a score back above ``clear_ratio`` restarts the wait;
- **rate limit**: at most ``max_per_hour`` episodes open per machine in any hour; more are
  suppressed and counted;
- **re-open**: the same source (detector and top signal) crossing again within ``reopen_s``
  of its episode's end re-opens that episode instead of starting a new one, so a value
  hovering at a limit is one episode, not twenty;
- **chattering**: a source whose episodes opened ``chatter_count`` times within
  ``chatter_window_s`` anyway is shelved for ``shelve_s``: it opens nothing, suppressions are
  counted; other sources of the same machine still raise.

The episode starts when the score first crossed the limit (not when the on-delay ran out) and
ends when it last was above ``clear_ratio``; the events carry the time they were raised.

>>> logic = AlarmLogic("pump-1", AlarmConfig(on_delay_s=2, off_delay_s=3))
>>> s = 1_000_000_000
>>> kinds = []
>>> for t, score in enumerate([0.2, 1.5, 1.6, 1.8, 0.3, 0.2, 0.1, 0.1, 0.1]):
...     kinds += [(t, e.kind) for e in logic.update(t * s, score)]
>>> kinds
[(3, 'opened'), (7, 'closed')]
>>> logic.episodes[0].start_ns // s, logic.episodes[0].end_ns // s, logic.episodes[0].peak_score
(1, 3, 1.8)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from analytics.types import Episode, Explanation

NS = 1_000_000_000

EventKind = Literal["opened", "reopened", "updated", "closed", "suppressed"]


@dataclass(frozen=True, slots=True)
class AlarmConfig:
    """Timings and limits of the alarm logic (seconds of the source's clock)."""

    on_delay_s: float = 5.0
    off_delay_s: float = 30.0
    clear_ratio: float = 0.8
    instant_ratio: float = 4.0
    max_per_hour: int = 6
    chatter_count: int = 3
    chatter_window_s: float = 600.0
    shelve_s: float = 1800.0
    reopen_s: float = 300.0
    update_ratio: float = 1.25  # report a new peak when it grows by this factor


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """Something the operator should hear about: an episode opened, grew, closed or was held."""

    kind: EventKind
    time_ns: int
    episode: Episode
    reason: str = ""


@dataclass(slots=True)
class AlarmStats:
    opened: int = 0
    closed: int = 0
    suppressed_rate: int = 0
    suppressed_chatter: int = 0
    reopened: int = 0


def source(expl: Explanation | None) -> str:
    """What raised a score: the detector and its top signal, e.g. ``limits:discharge_pressure``."""
    if expl is None:
        return ""
    top = expl.top(1)
    return f"{expl.detector}:{top[0].signal}" if top else expl.detector


@dataclass
class AlarmLogic:
    """The alarm state of one machine; :meth:`update` once per scored step."""

    machine: str
    config: AlarmConfig = field(default_factory=AlarmConfig)
    model_version: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    stats: AlarmStats = field(default_factory=AlarmStats)
    episodes: list[Episode] = field(default_factory=list)  # the last few, newest last
    keep: int = 20

    def __post_init__(self) -> None:
        self.current: Episode | None = None
        self._above_since: int | None = None  # first time of the run at/above the limit
        self._below_since: int | None = None  # first time of the run below clear_ratio
        self._last_above: int | None = None  # last time at/above clear_ratio while open
        self._pending_peak: tuple[float, int, Explanation | None] = (0.0, 0, None)
        self._reported_peak = 0.0
        self._opened_at: deque[int] = deque()  # raise times, for the rate limit
        self._by_source: dict[str, deque[int]] = {}  # raise times per source, for chattering
        self._shelved: dict[str, int] = {}  # source -> shelved until
        self._held = False  # the current excursion was suppressed: do not count it again

    @property
    def active(self) -> bool:
        """True while an episode is open."""
        return self.current is not None

    def update(
        self, t_ns: int, score: float, explanation: Explanation | None = None
    ) -> list[AlarmEvent]:
        """Feed one score (1.0 = the limit); return what changed."""
        if self.current is not None:
            return self._while_open(t_ns, score, explanation)
        return self._while_closed(t_ns, score, explanation)

    # -- closed: wait for the on-delay ---------------------------------------------------------
    def _while_closed(
        self, t: int, score: float, explanation: Explanation | None
    ) -> list[AlarmEvent]:
        c = self.config
        if not score >= 1.0:  # also NaN
            self._above_since = None
            self._held = False
            return []
        if self._above_since is None:
            self._above_since = t
            self._pending_peak = (score, t, explanation)
        elif score > self._pending_peak[0]:
            self._pending_peak = (score, t, explanation)
        due = t - self._above_since >= c.on_delay_s * NS or score >= c.instant_ratio
        if not due or self._held:
            return []
        peak, peak_t, expl = self._pending_peak
        src = source(expl)
        last = self.episodes[-1] if self.episodes else None
        if (last is not None and last.end_ns is not None and source(last.explanation()) == src
                and t - last.end_ns <= c.reopen_s * NS):  # fmt: skip
            self.episodes.pop()
            last.end_ns = None
            if peak > last.peak_score:
                last.peak_score, last.peak_ns = peak, peak_t
                if expl is not None:
                    last.contributions, last.note = expl.top(5), expl.note
            self._start(last, t)
            self.stats.reopened += 1
            return [AlarmEvent("reopened", t, last)]
        reason = self._suppression(t, src)
        ep = self._episode(self._above_since, peak, peak_t, expl)
        if reason:
            self._held = True
            return [AlarmEvent("suppressed", t, ep, reason)]
        self._start(ep, t)
        self._opened_at.append(t)
        self._by_source.setdefault(src, deque()).append(t)
        self.stats.opened += 1
        return [AlarmEvent("opened", t, ep)]

    def _start(self, ep: Episode, t: int) -> None:
        self.current = ep
        self._reported_peak = ep.peak_score
        self._last_above = t
        self._below_since = None

    def _suppression(self, t: int, src: str) -> str:
        c = self.config
        while self._opened_at and t - self._opened_at[0] > 3600 * NS:
            self._opened_at.popleft()
        if t < self._shelved.get(src, 0):
            self.stats.suppressed_chatter += 1
            return f"shelved: {src} is chattering"
        times = self._by_source.get(src, deque())
        while times and t - times[0] > c.chatter_window_s * NS:
            times.popleft()
        if len(times) >= c.chatter_count:
            self._shelved[src] = t + int(c.shelve_s * NS)
            self.stats.suppressed_chatter += 1
            return (f"chattering: {src} opened {len(times)} episodes in "
                    f"{c.chatter_window_s:g} s; shelved for {c.shelve_s:g} s")  # fmt: skip
        if len(self._opened_at) >= c.max_per_hour:
            self.stats.suppressed_rate += 1
            return f"rate limit: {c.max_per_hour} episodes in the last hour"
        return ""

    def _episode(self, start: int, peak: float, peak_t: int, expl: Explanation | None) -> Episode:
        return Episode(
            machine=self.machine,
            start_ns=start,
            detector=expl.detector if expl else "",
            model_version=self.model_version,
            peak_score=peak,
            peak_ns=peak_t,
            contributions=expl.top(5) if expl else (),
            note=expl.note if expl else "",
            tags=dict(self.tags),
        )

    # -- open: track the peak, wait for the off-delay ------------------------------------------
    def _while_open(
        self, t: int, score: float, explanation: Explanation | None
    ) -> list[AlarmEvent]:
        c = self.config
        ep = self.current
        assert ep is not None
        events: list[AlarmEvent] = []
        if score >= c.clear_ratio:
            self._below_since = None
            self._last_above = t
            if score > ep.peak_score:
                ep.peak_score, ep.peak_ns = score, t
                if explanation is not None:
                    ep.detector = explanation.detector
                    ep.contributions = explanation.top(5)
                    ep.note = explanation.note
                if score >= self._reported_peak * c.update_ratio:
                    self._reported_peak = score
                    events.append(AlarmEvent("updated", t, ep))
            return events
        if self._below_since is None:
            self._below_since = t
        if t - self._below_since >= c.off_delay_s * NS:
            ep.end_ns = self._last_above if self._last_above is not None else t
            self.current = None
            self._above_since = None
            self._held = False
            self.stats.closed += 1
            self.episodes.append(ep)
            del self.episodes[: -self.keep]
            events.append(AlarmEvent("closed", t, ep))
        return events

    def close(self, t_ns: int) -> AlarmEvent | None:
        """Close the open episode now (shutdown, model replaced); return its event."""
        ep = self.current
        if ep is None:
            return None
        ep.end_ns = self._last_above if self._last_above is not None else t_ns
        self.current = None
        self._above_since = None
        self._held = False
        self.stats.closed += 1
        self.episodes.append(ep)
        del self.episodes[: -self.keep]
        return AlarmEvent("closed", t_ns, ep, "closed by the agent")
