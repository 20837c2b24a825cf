"""The episode plot: one small panel per signal around an anomaly, for a person to judge it.

Used by ``factory-agent anomalies show --plot FILE`` (PNG) and the review page (SVG). Each
panel shows the observed values, the model's expected value ± spread as a band (when it has
one), and the episode's span shaded; the title names the signal, its unit and its share of the
score. Panels share one time axis in local time. Fonts are sized for a tablet. Values are drawn
as steps (a value holds until the next one: OPC UA reports only changes, so a stuck sensor shows
as a flat line, not a slope), and long series are thinned to each pixel column's min and max.

Thread-safe: matplotlib's object API (a :class:`~matplotlib.figure.Figure` on its own Agg
canvas), never ``pyplot`` and its global figure manager, and no change to ``rcParams``.
matplotlib is imported inside :func:`render_plot`, so the CLI and the agent do not pay for it
until a plot is drawn.
"""

from __future__ import annotations

import io
import itertools
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from agent.episode_view import EpisodeView, SignalSeries, rate_base_unit

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FONT_PT = 13  # labels and ticks; titles a little larger
DPI = 100
PANEL_IN = 2.3  # height of one signal's panel, inches
OBSERVED = "#1f4e9c"
EXPECTED = "#2e8b57"
EPISODE = "#d62728"
LEGEND_ORDER = ("observed", "expected", "expected ± spread", "episode")


def render_plot(
    view: EpisodeView, fmt: Literal["png", "svg"] = "png", *, width_px: int = 900
) -> bytes:
    """The view as a PNG or SVG image ``width_px`` wide (a "no data" figure when it has none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (lazy: slow)
    from matplotlib.figure import Figure  # noqa: PLC0415

    if fmt not in ("png", "svg"):
        raise ValueError(f"fmt must be 'png' or 'svg', got {fmt!r}")
    shown = [s for s in view.series if _finite(s.values)]
    panels = max(len(view.series), 1) if shown else 1
    width_in = max(width_px, 300) / DPI
    fig = Figure(figsize=(width_in, 1.3 + PANEL_IN * panels), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    e = view.stored.episode
    fig.suptitle(
        f"{e.machine} · severity {e.severity} · {e.detector} · {view.stored.state}",
        fontsize=FONT_PT + 3,
    )
    tz = datetime.now().astimezone().tzinfo
    if not shown:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_axis_off()
        why = view.note or ("the episode names no signal" if not view.series else "")
        ax.text(0.5, 0.6, "no data for this window", ha="center", va="center",
                fontsize=FONT_PT + 4, transform=ax.transAxes)  # fmt: skip
        window = f"window {_local(view.start_ns, tz)} – {_local(view.end_ns, tz)} local time"
        ax.text(0.5, 0.45, window, ha="center", va="center", fontsize=FONT_PT,
                transform=ax.transAxes)  # fmt: skip
        if why:
            ax.text(0.5, 0.25, _wrap(why, _chars(width_px)), ha="center",
                    va="center", fontsize=FONT_PT - 1, color="#555555",
                    transform=ax.transAxes)  # fmt: skip
    else:
        axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
        for ax, series in zip(axes, view.series, strict=True):
            _panel(ax, series, view, width_px)
        _time_axis(axes[-1], tz)
        label = f"local time (UTC{datetime.now(tz).strftime('%z')})"
        if view.source == "influxdb" or view.note:
            label += "\n" + _wrap(_source_line(view), _chars(width_px))
        axes[-1].set_xlabel(label, fontsize=FONT_PT - 1, color="#444444")
        handles, labels = axes[0].get_legend_handles_labels()
        for ax in axes[1:]:  # the first panel may have no band; collect each kind once
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        order = [labels.index(k) for k in LEGEND_ORDER if k in labels]
        fig.legend([handles[i] for i in order], [labels[i] for i in order],
                   loc="outside lower center", ncols=len(order), fontsize=FONT_PT - 1,
                   frameon=False)  # fmt: skip
    buf = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {}
    fig.savefig(buf, format=fmt, dpi=DPI, metadata=metadata)
    return buf.getvalue()


def _panel(ax: Axes, s: SignalSeries, view: EpisodeView, width_px: int) -> None:
    mdates = _mdates()
    unit = f" ({s.unit})" if s.unit else ""
    title = f"{s.signal}{unit} · {s.share * 100:.0f} % of the score"
    if any(
        c.signal == s.signal and rate_base_unit(c.unit) for c in view.stored.episode.contributions
    ):
        title += " · judged by its rate of change"
    ax.set_title(title, fontsize=FONT_PT + 1, loc="left")
    ax.tick_params(labelsize=FONT_PT)
    ax.grid(True, color="#dddddd", linewidth=0.8)
    e = view.stored.episode
    episode_end = e.end_ns if e.end_ns is not None else view.end_ns
    ax.axvspan(_days(e.start_ns), _days(episode_end), color=EPISODE, alpha=0.12, linewidth=0,
               label="episode")  # fmt: skip
    if not math.isnan(s.expected):
        if not math.isnan(s.spread):
            ax.axhspan(s.expected - s.spread, s.expected + s.spread, color=EXPECTED, alpha=0.18,
                       linewidth=0, label="expected ± spread")  # fmt: skip
        ax.axhline(s.expected, color=EXPECTED, linestyle="--", linewidth=1.2, label="expected")
    if _finite(s.values):
        times, values = _decimate(s.times_ns, s.values, width_px)
        # steps: a value holds until the next one (OPC UA reports only changes)
        ax.plot(mdates.date2num(times), values, color=OBSERVED, linewidth=1.4, label="observed",
                drawstyle="steps-post")  # fmt: skip
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=FONT_PT,
                color="#777777", transform=ax.transAxes)  # fmt: skip
    ax.set_xlim(_days(view.start_ns), _days(view.end_ns))


def _time_axis(ax: Axes, tz: object) -> None:
    mdates = _mdates()
    locator = mdates.AutoDateLocator(tz=tz, minticks=4, maxticks=12)
    ax.xaxis.set_major_locator(locator)
    formatter = mdates.ConciseDateFormatter(locator, tz=tz)
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.get_offset_text().set_fontsize(FONT_PT - 1)


def _local(ns: int, tz: Any) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz).strftime("%Y-%m-%d %H:%M:%S")


def _source_line(view: EpisodeView) -> str:
    where = {"history": "local history", "influxdb": "InfluxDB", "none": "no source"}
    return f"data: {where[view.source]}" + (f" ({view.note})" if view.note else "")


def _mdates() -> Any:
    """``matplotlib.dates``, imported on first use (its functions carry no annotations)."""
    import matplotlib.dates  # noqa: PLC0415

    return matplotlib.dates


def _finite(values: list[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def _days(ns: int) -> float:
    """matplotlib's date number of a time in ns since the Unix epoch."""
    mdates = _mdates()
    return float(mdates.date2num(np.datetime64(ns, "ns")))


def _decimate(
    times_ns: list[int], values: list[float], buckets: int
) -> tuple[NDArray[np.datetime64], NDArray[np.float64]]:
    """At most ~2 points per bucket (its min and max, in time order): spikes stay visible,
    an SVG stays small. Gaps (NaN) are kept so the line breaks where data is missing.

    >>> t, v = _decimate(list(range(10)), [0.0, 5, 1, 1, 1, 1, -3, 1, 1, 1], 2)
    >>> v.tolist()
    [0.0, 5.0, 1.0, -3.0]
    """
    t = np.asarray(times_ns, dtype="datetime64[ns]")
    v = np.asarray(values, dtype=np.float64)
    if len(v) <= 2 * buckets:
        return t, v
    edges = np.linspace(0, len(v), buckets + 1).astype(int)
    keep: list[int] = []
    for lo, hi in itertools.pairwise(edges):
        chunk = v[lo:hi]
        if np.isnan(chunk).any():
            keep.append(lo + int(np.argmax(np.isnan(chunk))))  # one NaN keeps the gap
        if np.isfinite(chunk).any():
            keep.extend({lo + int(np.nanargmin(chunk)), lo + int(np.nanargmax(chunk))})
    index = np.unique(np.asarray(keep, dtype=int))
    return t[index], v[index]


def _chars(width_px: int) -> int:
    """Characters of small text that fit across the figure (~9.5 px each at FONT_PT - 1)."""
    return max(30, int(width_px / 9.5))


def _wrap(text: str, width: int) -> str:
    import textwrap  # noqa: PLC0415

    return "\n".join(textwrap.wrap(text, width)) or text
