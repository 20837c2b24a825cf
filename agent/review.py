"""The maintenance review page: the anomaly inbox, an episode's page, its acknowledgement.

Server-rendered HTML for a tablet on the line, served by the agent itself (no framework, no
CDN: ``agent/static/`` holds the stylesheet and a small optional script). Routes:

===============================  ==============================================================
``GET /`` (``/anomalies``)       the inbox, newest first; filters ``machine``, ``line``,
                                 ``severity`` (minimum, 1..1000), ``state``, ``since`` (``24h``,
                                 ``7d`` or a date/time, UTC unless it says otherwise), ``limit``;
                                 and the agent's health at a glance
``GET /anomalies/{id}``          the episode: explanation, plot, times, verdict, audit trail
``GET /anomalies/{id}/plot.svg``  its signals around the episode (``.png`` too)
``POST /anomalies/{id}/ack``     the verdict form (name, confirmed / false-alarm, note): 303
``GET /api/anomalies[/{id}]``    the same as JSON (same filters)
===============================  ==============================================================

A bad filter is a 400 naming the filter and what it takes; an unknown id a 404. The journal is
the agent's SQLite file opened a second time (WAL: the analytics keep writing through their own
connection); every call to it runs in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from aiohttp import web

from agent.access import CSRF_FIELD, Access
from agent.config import AgentConfig
from agent.episode_view import explanation_lines, load_view
from agent.journal import VERDICTS, Journal, StoredEpisode, Verdict, export_row
from agent.journal import iso_utc as iso
from agent.monitor import Snapshot
from agent.review_parts import (
    MAX_LIMIT,
    FilterError,
    Filters,
    audit_table,
    episode_url,
    facts,
    filter_form,
    health_panel,
    inbox_table,
    parse_filters,
    sev_badge,
    state_badge,
    verdict_box,
)

STATIC_DIR = Path(__file__).with_name("static")
MAX_NAME_CHARS, MAX_NOTE_CHARS = 100, 2000
PLOT_TYPES = {"svg": "image/svg+xml", "png": "image/png"}
T = TypeVar("T")
esc = html.escape


class Review:
    """The review routes over one journal; :meth:`open` before serving, :meth:`close` after."""

    def __init__(
        self, cfg: AgentConfig, snapshot: Callable[[], Snapshot] | None, access: Access
    ) -> None:
        self.cfg = cfg
        self.snapshot = snapshot
        self.access = access
        self.journal_path = cfg.data_path("journal.db")
        self._journal: Journal | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self._journal = Journal(self.journal_path)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    async def _db(self, call: Callable[[Journal], T]) -> T:
        """Run ``call(journal)`` in a worker thread, one call at a time (one connection)."""

        def locked() -> T:
            with self._lock:
                assert self._journal is not None, "Review.open() was not called"
                return call(self._journal)

        return await asyncio.to_thread(locked)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.inbox)
        r.add_get("/anomalies", self.inbox)
        r.add_get("/anomalies/{id}", self.episode)
        r.add_get(r"/anomalies/{id}/plot.{fmt:svg|png}", self.plot)
        r.add_post("/anomalies/{id}/ack", self.ack)
        r.add_get("/api/anomalies", self.api_list)
        r.add_get("/api/anomalies/{id}", self.api_get)
        r.add_static("/static/", STATIC_DIR)

    # -- pages ---------------------------------------------------------------------------------
    def _page(
        self, request: web.Request, title: str, body: str, *, status: int = 200, refresh: int = 0
    ) -> web.Response:
        signout = ""
        if self.access.token is not None:
            signout = (f'<form method="post" action="/logout"><input type="hidden" '
                       f'name="{CSRF_FIELD}" value="{self.access.csrf_token(request)}">'
                       '<button class="link">Sign out</button></form>')  # fmt: skip
        text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · {esc(self.cfg.agent.name)}</title>
<link rel="stylesheet" href="/static/review.css"><script src="/static/review.js" defer></script>
</head><body data-refresh="{refresh}">
<header class="bar"><a class="brand" href="/">Anomalies</a>
<span class="agent">{esc(self.cfg.agent.name)}</span>{signout}</header>
<main>{body}</main></body></html>
"""
        return web.Response(text=text, status=status, content_type="text/html")

    def _not_found(self, request: web.Request, id_: str) -> web.Response:
        body = (f'<h1>No such episode</h1><p class="flash error">There is no episode '
                f"<code>{esc(id_)}</code> in the journal ({esc(str(self.journal_path))}).</p>"
                '<p><a class="button" href="/">Back to the inbox</a></p>')  # fmt: skip
        return self._page(request, "Not found", body, status=404)

    async def inbox(self, request: web.Request) -> web.Response:
        error, status = "", 200
        try:
            f = parse_filters(request.query, time.time_ns())
        except FilterError as exc:
            error, status, f = str(exc), 400, Filters()
        rows = [] if error else await self._db(lambda j: j.list(**f.journal_args()))
        known = await self._db(lambda j: j.list(limit=MAX_LIMIT))
        machines = sorted({s.episode.machine for s in known})
        lines = sorted({s.line for s in known if s.line})
        health = health_panel(self.snapshot()) if self.snapshot is not None else ""
        flash = f'<p class="flash error" role="alert">Bad filter: {esc(error)}</p>' if error else ""
        body = (f"{health}{filter_form(f, machines, lines)}{flash}"
                f"{'' if error else inbox_table(rows)}")  # fmt: skip
        return self._page(request, "Anomalies", body, status=status, refresh=0 if error else 30)

    async def episode(
        self, request: web.Request, *, error: str = "", given: Mapping[str, str] | None = None
    ) -> web.Response:
        id_ = request.match_info["id"]
        stored = await self._db(lambda j: j.get(id_))
        if stored is None:
            return self._not_found(request, id_)
        audit = await self._db(lambda j: j.audit(id_))
        e = stored.episode
        if error:
            flash = f'<p class="flash error" role="alert">{esc(error)}</p>'
        elif request.query.get("saved") == "1":
            flash = '<p class="flash ok" role="status">Saved: this verdict trains the detector.</p>'
        else:
            flash = ""
        why = "".join(f"<li>{esc(line)}</li>" for line in explanation_lines(stored))
        alt = f"{esc(e.machine)}: contributing signals with the expected band"
        body = (
            '<p class="nav"><a class="back" href="/">← Inbox</a></p>'
            f"<h1>{esc(e.machine)} {sev_badge(e.severity)} {state_badge(stored.state)}</h1>"
            f"{flash}{verdict_box(stored)}"
            '<div class="episode"><section class="why"><h2>Why</h2>'
            f'<ul class="explanation">{why or "<li>no explanation recorded</li>"}</ul>'
            f"{facts(stored)}</section>"
            '<section class="plot"><h2>Signals around the episode</h2>'
            f'<img class="plot" src="{episode_url(e.id, "/plot.svg")}" alt="{alt}">'
            f'<p><a href="{episode_url(e.id, "/plot.png")}" download>Download as PNG</a></p>'
            f"</section></div>{self._ack_form(request, stored, given or {})}{audit_table(audit)}"
        )
        title = f"{e.machine} {iso(e.start_ns)}"
        return self._page(request, title, body, status=400 if error else 200)

    def _ack_form(
        self, request: web.Request, stored: StoredEpisode, given: Mapping[str, str]
    ) -> str:
        """The verdict form; ``given``: what was sent, when it comes back with an error."""
        again = stored.verdict is not None
        checked = given.get("verdict", stored.verdict)
        radios = "".join(
            f'<label class="choice"><input type="radio" name="verdict" value="{v}" required'
            f"{' checked' if checked == v else ''}> {text}</label>"
            for v, text in (("confirmed", "Confirmed fault"), ("false-alarm", "False alarm"))
        )
        return f"""<section class="ack"><h2>{"Change the verdict" if again else "Acknowledge"}</h2>
<form method="post" action="{episode_url(stored.id, "/ack")}" class="card">
<input type="hidden" name="{CSRF_FIELD}" value="{self.access.csrf_token(request)}">
<label for="by">Your name</label>
<input id="by" name="by" required maxlength="{MAX_NAME_CHARS}" autocomplete="name"
 value="{esc(given.get("by", ""))}">
<fieldset><legend>Verdict</legend>{radios}</fieldset>
<label for="note">Note — for a confirmed fault, what was found (e.g. “bearing replaced”)</label>
<textarea id="note" name="note" rows="3" maxlength="{MAX_NOTE_CHARS}">
{esc(given.get("note", ""))}</textarea>
<button type="submit" class="primary">Save verdict</button>
</form></section>"""

    async def ack(self, request: web.Request) -> web.Response:
        id_ = request.match_info["id"]
        form = await request.post()
        by, verdict, note = (str(form.get(k) or "").strip() for k in ("by", "verdict", "note"))
        error = ""
        if not by:
            error = "Give your name: every verdict is kept with who gave it."
        elif len(by) > MAX_NAME_CHARS or len(note) > MAX_NOTE_CHARS:
            error = f"Name up to {MAX_NAME_CHARS} characters, note up to {MAX_NOTE_CHARS}."
        elif verdict not in VERDICTS:
            error = "Choose a verdict: confirmed fault or false alarm."
        if error:
            given = {"by": by, "verdict": verdict, "note": note}
            return await self.episode(request, error=error, given=given)
        v = cast(Verdict, verdict)
        try:
            await self._db(lambda j: j.acknowledge(id_, by=by, verdict=v, note=note))
        except KeyError:
            return self._not_found(request, id_)
        return web.Response(status=303, headers={"Location": episode_url(id_, "?saved=1")})

    async def plot(self, request: web.Request) -> web.Response:
        id_, fmt = request.match_info["id"], request.match_info["fmt"]
        stored = await self._db(lambda j: j.get(id_))
        if stored is None:
            return web.Response(status=404, text=f"no episode {id_!r} in the journal\n")
        kind: Literal["svg", "png"] = "svg" if fmt == "svg" else "png"
        data = await asyncio.to_thread(self._render, stored, kind)
        headers = {
            "Cache-Control": "no-store" if stored.episode.end_ns is None else "max-age=60",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        }
        return web.Response(body=data, content_type=PLOT_TYPES[fmt], headers=headers)

    def _render(self, stored: StoredEpisode, fmt: Literal["svg", "png"]) -> bytes:
        from agent.plot import render_plot  # noqa: PLC0415 (matplotlib: only when plotting)

        return render_plot(load_view(stored, self.cfg), fmt=fmt)

    # -- JSON ----------------------------------------------------------------------------------
    async def api_list(self, request: web.Request) -> web.Response:
        try:
            f = parse_filters(request.query, time.time_ns())
        except FilterError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        rows = await self._db(lambda j: j.list(**f.journal_args()))
        episodes = [{**export_row(s), "url": episode_url(s.id)} for s in rows]
        return web.json_response({"filters": f.echo(), "count": len(episodes),
                                  "episodes": episodes}, dumps=_dumps)  # fmt: skip

    async def api_get(self, request: web.Request) -> web.Response:
        id_ = request.match_info["id"]
        stored = await self._db(lambda j: j.get(id_))
        if stored is None:
            return web.json_response({"error": f"no episode {id_!r} in the journal"}, status=404)
        audit = await self._db(lambda j: j.audit(id_))
        e = stored.episode
        return web.json_response({
            **export_row(stored), "url": episode_url(e.id), "plot": episode_url(e.id, "/plot.svg"),
            "start_ns": e.start_ns, "end_ns": e.end_ns, "peak_ns": e.peak_ns, "tags": e.tags,
            "note": e.note, "explanation": explanation_lines(stored),
            "contributions": [asdict(c) for c in e.contributions],
            "audit": [{**a, "time": iso(a["time_ns"])} for a in audit],
        }, dumps=_dumps)  # fmt: skip


def _dumps(data: Any) -> str:
    """JSON with NaN as null (a gap detector has no expected value)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(data))
