"""Alarm logic: on/off delays, hysteresis, peaks, re-open, rate limit, chattering, NaN.

Scores are hand-made, one step per second (``t_ns = i * 1e9``), so every expected time can be
read off the sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from analytics.alarm import AlarmConfig, AlarmEvent, AlarmLogic, source
from analytics.types import Contribution, Explanation

S = 1_000_000_000
NAN = math.nan


def expl(detector: str = "limits", signal: str = "pressure", score: float = 1.0) -> Explanation:
    return Explanation(detector, score, (Contribution(signal, 1.0, 12.0, 5.0, 1.0, "bar"),))


def feed(
    logic: AlarmLogic,
    scores: Sequence[float],
    *,
    t0: int = 0,
    explanation: Explanation | None = None,
) -> list[AlarmEvent]:
    """Feed scores at t0, t0 + 1, ... seconds; return every event raised."""
    events: list[AlarmEvent] = []
    for i, score in enumerate(scores):
        events += logic.update((t0 + i) * S, score, explanation)
    return events


def kinds(events: Sequence[AlarmEvent]) -> list[tuple[int, str]]:
    """(time in seconds, kind) of each event."""
    return [(e.time_ns // S, e.kind) for e in events]


def logic(**kw: Any) -> AlarmLogic:
    base = {"on_delay_s": 3.0, "off_delay_s": 5.0, "clear_ratio": 0.8, "instant_ratio": 4.0}
    return AlarmLogic("press-1", AlarmConfig(**{**base, **kw}))


# -- source() ---------------------------------------------------------------------------------
def test_source_is_detector_and_top_signal() -> None:
    e = Explanation(
        "pca-t2q",
        2.0,
        (Contribution("flow", 0.3, 1, 1, 1), Contribution("temp", 0.7, 1, 1, 1)),
    )
    assert source(e) == "pca-t2q:temp"
    assert source(Explanation("gap", 2.0)) == "gap"
    assert source(None) == ""


# -- on-delay ---------------------------------------------------------------------------------
def test_on_delay_opens_exactly_after_on_delay_s() -> None:
    al = logic()
    events = feed(al, [0.2, 0.2, 1.2, 1.3, 1.1, 1.2, 1.2], explanation=expl())
    # First at/above 1.0 at t=2; 3 s later (t=5) the on-delay has run out.
    assert kinds(events) == [(5, "opened")]
    assert al.active and al.current is not None
    assert al.current.start_ns == 2 * S  # the first crossing, not the raise time
    assert al.stats.opened == 1


def test_score_exactly_at_the_limit_counts_as_above() -> None:
    al = logic()
    assert kinds(feed(al, [1.0, 1.0, 1.0, 1.0])) == [(3, "opened")]
    al = logic()
    assert feed(al, [0.999] * 20) == []


def test_shorter_excursion_opens_nothing() -> None:
    al = logic()
    # 1.0..3.9 for 3 steps (t=1..3): 2 s above the limit, 1 s short of the on-delay.
    events = feed(al, [0.1, 3.9, 3.9, 3.9, 0.5, 0.5, 3.9, 3.9, 3.9, 0.1] * 3)
    assert events == []
    assert not al.active
    assert al.stats.opened == 0


def test_dip_below_the_limit_restarts_the_on_delay() -> None:
    al = logic()
    events = feed(al, [1.5, 1.5, 1.5, 0.9, 1.5, 1.5, 1.5, 1.5])
    # Restarted at t=4 by the dip at t=3: opens at t=7, starts at t=4.
    assert kinds(events) == [(7, "opened")]
    assert events[0].episode.start_ns == 4 * S


def test_instant_ratio_opens_at_once() -> None:
    al = logic()
    events = feed(al, [0.1, 0.1, 4.0], explanation=expl())
    assert kinds(events) == [(2, "opened")]
    assert events[0].episode.start_ns == 2 * S
    assert events[0].episode.peak_score == 4.0


def test_instant_ratio_during_the_on_delay_keeps_the_first_crossing_as_start() -> None:
    al = logic()
    events = feed(al, [0.1, 1.5, 9.0])
    assert kinds(events) == [(2, "opened")]
    ep = events[0].episode
    assert ep.start_ns == 1 * S
    assert (ep.peak_score, ep.peak_ns) == (9.0, 2 * S)


def test_peak_during_the_on_delay_is_the_episode_peak() -> None:
    al = logic()
    events = feed(al, [1.1, 3.5, 1.2, 1.1])
    assert kinds(events) == [(3, "opened")]
    assert (events[0].episode.peak_score, events[0].episode.peak_ns) == (3.5, 1 * S)


# -- episode extent, hysteresis, off-delay ------------------------------------------------------
def test_episode_start_and_end_times() -> None:
    al = logic()
    scores = [0.1, 1.5, 1.5, 1.5, 1.5, 0.9, 0.85, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    events = feed(al, scores, explanation=expl())
    # Opens at t=4 (first crossing t=1); last >= clear_ratio (0.8) at t=6; below from t=7;
    # closes 5 s later at t=12.
    assert kinds(events) == [(4, "opened"), (12, "closed")]
    ep = events[-1].episode
    assert (ep.start_ns, ep.end_ns) == (1 * S, 6 * S)
    assert not al.active
    assert al.stats.closed == 1
    assert al.episodes == [ep]


def test_off_delay_closes_exactly_after_off_delay_s() -> None:
    al = logic(off_delay_s=5.0)
    # Open at t=0 (instant), below clear from t=1.
    events = feed(al, [5.0, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert kinds(events) == [(0, "opened")]  # t=5: 4 s below, still open
    assert al.active
    events = feed(al, [0.1], t0=6)  # t=6: 5 s below since t=1
    assert kinds(events) == [(6, "closed")]
    assert events[0].episode.end_ns == 0


def test_hysteresis_keeps_the_episode_open_between_clear_ratio_and_limit() -> None:
    al = logic()
    events = feed(al, [5.0] + [0.81, 0.95, 0.99] * 20)  # 60 s under the limit, above clear
    assert kinds(events) == [(0, "opened")]
    assert al.active
    events = feed(al, [0.79] * 6, t0=61)
    assert kinds(events) == [(66, "closed")]
    assert events[0].episode.end_ns == 60 * S


def test_a_score_back_above_clear_ratio_restarts_the_off_delay() -> None:
    al = logic(off_delay_s=5.0)
    # Below from t=1 for 4 s, back to 0.85 at t=5, below again from t=6.
    events = feed(al, [5.0, 0.1, 0.1, 0.1, 0.1, 0.85, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert kinds(events) == [(0, "opened")]  # t=10: only 4 s since t=6
    events = feed(al, [0.1], t0=11)
    assert kinds(events) == [(11, "closed")]
    assert events[0].episode.end_ns == 5 * S


def test_nan_scores_are_below_the_limit() -> None:
    al = logic()
    # NaN breaks the on-delay like any score below the limit ...
    assert feed(al, [1.5, 1.5, NAN, 1.5, 1.5, NAN, 1.5, 1.5]) == []
    assert feed(al, [NAN] * 10, t0=8) == []
    # ... and counts as below clear_ratio for the off-delay.
    events = feed(al, [5.0] + [NAN] * 6, t0=20)
    assert kinds(events) == [(20, "opened"), (26, "closed")]
    assert events[-1].episode.end_ns == 20 * S


# -- peak tracking --------------------------------------------------------------------------------
def test_peak_tracking_and_updated_events() -> None:
    al = logic(update_ratio=1.25)
    events = feed(al, [2.0, 2.0, 2.0, 2.0], explanation=expl("baseline", "flow"))
    assert kinds(events) == [(3, "opened")]
    # Reported peak 2.0: 2.25 is a new peak but not 25 % more; 2.5 is.
    events = feed(al, [2.25], t0=4, explanation=expl("rate", "temp"))
    assert events == []
    assert al.current is not None
    assert (al.current.peak_score, al.current.peak_ns) == (2.25, 4 * S)
    assert al.current.detector == "rate"  # the explanation of the new peak
    assert al.current.contributions[0].signal == "temp"
    events = feed(al, [2.5], t0=5, explanation=expl("rate", "temp"))
    assert kinds(events) == [(5, "updated")]
    assert events[0].episode.peak_score == 2.5
    # Reported peak is now 2.5: 3.0 < 3.125 says nothing, 3.125 does; lower scores change nothing.
    assert feed(al, [3.0, 1.0], t0=6) == []
    assert kinds(feed(al, [3.125], t0=8)) == [(8, "updated")]
    assert feed(al, [2.0, 0.9], t0=9) == []
    assert (al.current.peak_score, al.current.peak_ns) == (3.125, 8 * S)
    assert al.current.severity == 529  # 200 + 200 * log2(3.125)


def test_a_lower_score_does_not_replace_the_peak_explanation() -> None:
    al = logic()
    feed(al, [5.0], explanation=expl("limits", "pressure"))
    feed(al, [2.0], t0=1, explanation=expl("rate", "flow"))
    assert al.current is not None
    assert al.current.detector == "limits"
    assert al.current.contributions[0].signal == "pressure"


# -- re-open --------------------------------------------------------------------------------------
EXCURSION = [5.0] + [0.1] * 6  # opens at +0, ends at +0, closes at +6 (5 s below)


def test_same_source_within_reopen_s_reopens_the_episode() -> None:
    al = logic(reopen_s=60.0)
    first = feed(al, EXCURSION, explanation=expl())
    assert kinds(first) == [(0, "opened"), (6, "closed")]
    ep = first[0].episode
    assert ep.end_ns == 0
    events = feed(al, [1.5, 1.5, 1.5, 1.5], t0=30, explanation=expl())
    assert kinds(events) == [(33, "reopened")]
    assert events[0].episode is ep
    assert events[0].episode.id == ep.id == f"press-1-{0}"
    assert ep.start_ns == 0 and ep.is_open  # end reset while open again
    assert al.current is ep
    assert ep.peak_score == 5.0  # 1.5 does not beat the first peak
    assert (al.stats.opened, al.stats.reopened) == (1, 1)
    closed = feed(al, [0.1] * 6, t0=34)
    assert kinds(closed) == [(39, "closed")]
    assert ep.end_ns == 33 * S
    assert al.episodes == [ep]  # one episode, not two


def test_reopen_takes_a_higher_peak() -> None:
    al = logic(reopen_s=60.0)
    assert kinds(feed(al, [1.5] * 4 + [0.1] * 6, explanation=expl())) == [
        (3, "opened"),
        (9, "closed"),
    ]
    events = feed(al, [8.0], t0=20, explanation=expl())
    assert kinds(events) == [(20, "reopened")]
    assert (events[0].episode.peak_score, events[0].episode.peak_ns) == (8.0, 20 * S)


def test_different_source_within_reopen_s_opens_a_new_episode() -> None:
    al = logic(reopen_s=60.0)
    first = feed(al, EXCURSION, explanation=expl("limits", "pressure"))
    events = feed(al, [5.0], t0=30, explanation=expl("limits", "temp"))
    assert kinds(events) == [(30, "opened")]
    assert events[0].episode is not first[0].episode
    assert events[0].episode.id == f"press-1-{30 * S}"
    assert first[0].episode.end_ns == 0  # the closed one is untouched
    assert (al.stats.opened, al.stats.reopened) == (2, 0)


def test_same_source_after_reopen_s_opens_a_new_episode() -> None:
    al = logic(reopen_s=60.0)
    feed(al, EXCURSION, explanation=expl())
    events = feed(al, [5.0], t0=61, explanation=expl())  # 61 s after the end (t=0)
    assert kinds(events) == [(61, "opened")]
    assert events[0].episode.start_ns == 61 * S
    events = feed(al, [0.1] * 6 + [5.0], t0=62, explanation=expl())
    assert kinds(events) == [(67, "closed"), (68, "reopened")]  # 7 s after t=61: re-opens


# -- rate limit -------------------------------------------------------------------------------------
def test_rate_limit_suppresses_beyond_max_per_hour() -> None:
    al = logic(max_per_hour=2, reopen_s=0.0, chatter_count=100)
    events: list[AlarmEvent] = []
    for k, signal in enumerate(["a", "b", "c"]):
        events += feed(al, EXCURSION, t0=100 * k, explanation=expl("limits", signal))
    assert kinds(events) == [(0, "opened"), (6, "closed"), (100, "opened"), (106, "closed"),
                             (200, "suppressed")]  # fmt: skip
    held = events[-1]
    assert "rate limit" in held.reason and "2" in held.reason
    assert held.episode.contributions[0].signal == "c"
    assert not al.active
    assert al.stats.suppressed_rate == 1
    assert al.stats.opened == 2
    assert len(al.episodes) == 2


def test_a_long_suppressed_excursion_counts_once() -> None:
    al = logic(max_per_hour=1, reopen_s=0.0, chatter_count=100)
    feed(al, EXCURSION, explanation=expl("limits", "a"))
    events = feed(al, [5.0] * 30, t0=100, explanation=expl("limits", "b"))
    assert kinds(events) == [(100, "suppressed")]
    assert al.stats.suppressed_rate == 1
    # A new excursion is judged again.
    events = feed(al, [0.1, 5.0], t0=130, explanation=expl("limits", "b"))
    assert kinds(events) == [(131, "suppressed")]
    assert al.stats.suppressed_rate == 2


def test_rate_limit_window_is_one_hour() -> None:
    al = logic(max_per_hour=1, reopen_s=0.0, chatter_count=100)
    feed(al, EXCURSION, explanation=expl("limits", "a"))
    assert kinds(feed(al, [5.0], t0=3600, explanation=expl("limits", "b"))) == [
        (3600, "suppressed")
    ]
    events = feed(al, [0.1, 5.0], t0=3601, explanation=expl("limits", "b"))
    assert kinds(events) == [(3602, "opened")]


# -- chattering -----------------------------------------------------------------------------------
def test_chattering_shelves_that_source_only() -> None:
    al = logic(chatter_count=3, chatter_window_s=600.0, shelve_s=1800.0, reopen_s=0.0,
               max_per_hour=100)  # fmt: skip
    a, b = expl("limits", "a"), expl("limits", "b")
    events: list[AlarmEvent] = []
    for k in range(4):
        events += feed(al, EXCURSION, t0=10 * k, explanation=a)
    assert [k for _, k in kinds(events)] == ["opened", "closed"] * 3 + ["suppressed"]
    assert events[-1].time_ns == 30 * S
    assert "chattering" in events[-1].reason and "limits:a" in events[-1].reason
    assert al.stats.suppressed_chatter == 1
    # Still shelved later on: suppressed, counted, reason says so.
    events = feed(al, [0.1, 5.0], t0=1000, explanation=a)
    assert kinds(events) == [(1001, "suppressed")]
    assert "shelved" in events[0].reason
    assert al.stats.suppressed_chatter == 2
    # Another source of the same machine still opens.
    events = feed(al, [0.1, 5.0], t0=1010, explanation=b)
    assert kinds(events) == [(1011, "opened")]
    assert events[0].episode.contributions[0].signal == "b"
    assert al.stats.opened == 4
    # After shelve_s (shelved at t=30 until t=1830) source a raises again.
    feed(al, [0.1] * 6, t0=1012)
    events = feed(al, [5.0], t0=1831, explanation=a)
    assert kinds(events) == [(1831, "opened")]


# -- close() --------------------------------------------------------------------------------------
def test_close_closes_an_open_episode() -> None:
    al = logic()
    feed(al, [5.0, 3.0, 0.1], explanation=expl())
    assert al.active
    ev = al.close(10 * S)
    assert ev is not None
    assert (ev.kind, ev.time_ns) == ("closed", 10 * S)
    assert ev.reason
    assert ev.episode.end_ns == 1 * S  # last time at/above clear_ratio
    assert (al.active, al.current) == (False, None)
    assert al.stats.closed == 1
    assert al.episodes == [ev.episode]
    assert al.close(11 * S) is None  # nothing open any more


def test_close_with_nothing_open_returns_none() -> None:
    al = logic()
    feed(al, [0.5, 1.5])  # in the on-delay, not open
    assert al.close(5 * S) is None
    assert al.stats.closed == 0


@pytest.mark.parametrize("keep", [1, 3])
def test_only_the_last_few_episodes_are_kept(keep: int) -> None:
    al = AlarmLogic("m", AlarmConfig(on_delay_s=0, off_delay_s=1, reopen_s=0, max_per_hour=100,
                                     chatter_count=100), keep=keep)  # fmt: skip
    for k in range(5):
        feed(al, [5.0, 0.1, 0.1], t0=10 * k, explanation=expl("limits", f"s{k}"))
    assert [e.start_ns // S for e in al.episodes] == [10 * k for k in range(5 - keep, 5)]
