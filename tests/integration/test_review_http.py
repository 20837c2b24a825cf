"""The review page over real HTTP: the agent's WebServer on a free loopback port, a journal
filled with real episodes, requests from aiohttp's client.

Covers the inbox, filters (and their 400s), the episode page, the JSON API, the plot, the
acknowledgement, and the access rules: a token (bearer, login cookie), CSRF and Origin checks,
the localhost Host check, and a non-local bind without a token refused by the configuration.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from agent.access import SESSION_COOKIE, TokenFileError
from agent.cli import main
from agent.config import AgentConfig
from agent.journal import Journal
from agent.monitor import Snapshot
from agent.web import WebServer
from analytics.types import Contribution, Episode
from connectors.health import DeviceHealth

pytestmark = pytest.mark.integration

T0 = 1_767_592_800_000_000_000  # 2026-01-05T06:00:00Z
MIN = 60 * 10**9
TOKEN = secrets.token_hex(16)  # made at test time, like a plant's `openssl rand -hex`


def episodes() -> list[Episode]:
    vib = Contribution("vibration_rms", 0.72, observed=6.4, expected=2.1, spread=0.4, unit="mm/s")
    temp = Contribution("bearing_temperature", 0.2, 71.0, 55.0, 3.0, "°C")
    load = Contribution("belt_load", 0.9, 140.0, 60.0, 10.0, "kg/m")
    return [
        Episode("cnc-01", T0, "pca-t2q", "cnc-01@3", peak_score=5.0, peak_ns=T0 + MIN,
                contributions=(vib, temp), end_ns=T0 + 12 * MIN, tags={"line": "line-1"}),
        Episode("conveyor-01", T0 + 30 * MIN, "limits", "conveyor-01@1", peak_score=1.2,
                peak_ns=T0 + 31 * MIN, contributions=(load,), tags={"line": "line-1"}),
        Episode("hoist-01", T0 + 60 * MIN, "pca-t2q", "hoist-01@2", peak_score=20.0,
                peak_ns=T0 + 61 * MIN, contributions=(vib,), end_ns=T0 + 65 * MIN,
                tags={"line": "yard"}),
    ]  # fmt: skip


def snapshot() -> Snapshot:
    up, down = DeviceHealth("line-1-opcua"), DeviceHealth("yard-modbus")
    for ms in (4, 5, 6, 40):
        up.record_rtt(ms / 1000)
    up.succeeded()
    for _ in range(3):
        down.failed("refused")
    sinks = [{"sink": "plant-influx", "spool_points": 12345, "dropped_points": 7,
              "failing": False, "last_error": None}]  # fmt: skip
    return Snapshot("test-agent", T0, 3723.0, 10, 10, [up.snapshot(), down.snapshot()], sinks)


def config(data_dir: Path, **http: Any) -> AgentConfig:
    return AgentConfig.model_validate({
        "agent": {"name": "test-agent", "data_dir": str(data_dir)},
        "http": {"listen": "127.0.0.1:0", **http},
    })  # fmt: skip


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    with Journal(tmp_path / "journal.db") as journal:
        for e in episodes():
            journal.record(e)
    return tmp_path


@asynccontextmanager
async def serving(cfg: AgentConfig) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    server = WebServer(cfg, snapshot)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield f"http://127.0.0.1:{server.port}", session
    finally:
        await server.stop()


async def get(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str]:
    async with session.get(url, allow_redirects=False, **kw) as r:
        return r.status, await r.text()


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert m, "the page embeds no CSRF token"
    return m.group(1)


def text_of(page: str) -> str:
    """The page's visible text, tags dropped and entities decoded, for phrase checks."""
    inline = re.sub(r"</?(?:a|b|small|span|code|time)\b[^>]*>", "", page)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", inline)))


# -- pages and API -------------------------------------------------------------------------------


async def test_inbox_lists_episodes_newest_first_with_health(data_dir: Path) -> None:
    async with serving(config(data_dir)) as (base, s):
        status, page = await get(s, base + "/")
    assert status == 200
    machines = re.findall(r'<a class="open" href="/anomalies/([^"]+)">([^<]+)</a>', page)
    assert [m for _, m in machines] == ["hoist-01", "conveyor-01", "cnc-01"]
    assert machines[2][0] == f"cnc-01-{T0}"
    text = text_of(page)
    assert "1000 critical" in text and "664 high" in text and "253 low" in text
    assert "vibration_rms 72 %, bearing_temperature 20 %" in text
    assert "12 min" in text and "ongoing" in text  # closed duration; open episode
    assert "2026-01-05 06:00:00 UTC" in text
    assert "line-1-opcua up · read 5.5 ms, p99 40.0 ms" in text
    assert "yard-modbus down" in text
    assert "plant-influx spool 12,345 points · dropped 7" in text
    assert "degraded" in text  # a device is down and the spool dropped points


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("machine=cnc-01", ["cnc-01"]),
        ("line=line-1", ["conveyor-01", "cnc-01"]),
        ("severity=600", ["hoist-01", "cnc-01"]),
        ("state=open", ["conveyor-01"]),
        ("state=closed&line=yard", ["hoist-01"]),
        ("since=2026-01-05T06:50Z", ["hoist-01", "conveyor-01"]),  # cnc-01 ended 06:12
        ("since=2026-01-05T07:30%2B01:00", ["hoist-01", "conveyor-01"]),  # 06:30 UTC
        ("machine=&line=&severity=&state=&since=", ["hoist-01", "conveyor-01", "cnc-01"]),
        ("limit=1", ["hoist-01"]),
    ],
)
async def test_filters_select_the_same_episodes_in_page_and_api(
    data_dir: Path, query: str, expected: list[str]
) -> None:
    async with serving(config(data_dir)) as (base, s):
        status, page = await get(s, f"{base}/anomalies?{query}")
        async with s.get(f"{base}/api/anomalies?{query}") as r:
            api_status, doc = r.status, await r.json()
    assert status == api_status == 200
    assert re.findall(r'<a class="open" href="[^"]+">([^<]+)</a>', page) == expected
    assert [e["machine"] for e in doc["episodes"]] == expected
    assert doc["count"] == len(expected)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("severity=high", "severity 'high': give the minimum severity, a whole number 1..1000"),
        ("severity=0", "severity '0': give the minimum severity"),
        ("state=done", "state 'done': one of open, closed, acknowledged"),
        ("since=yesterday", "since 'yesterday': not a time; use ISO 8601"),
        ("limit=5000", "limit '5000': a whole number 1..1000"),
        ("sevrity=300", "unknown filter 'sevrity'; the filters are machine, line, severity"),
    ],
)
async def test_bad_filter_is_a_400_naming_it(data_dir: Path, query: str, message: str) -> None:
    async with serving(config(data_dir)) as (base, s):
        status, page = await get(s, f"{base}/?{query}")
        async with s.get(f"{base}/api/anomalies?{query}") as r:
            api_status, doc = r.status, await r.json()
    assert status == api_status == 400
    assert message in text_of(page)
    assert message in doc["error"]
    assert 'class="inbox"' not in page  # no table on a bad filter, the form to fix it


async def test_unknown_id_is_a_404(data_dir: Path) -> None:
    async with serving(config(data_dir)) as (base, s):
        status, page = await get(s, base + "/anomalies/press-09-123")
        async with s.get(base + "/api/anomalies/press-09-123") as r:
            api_status, doc = r.status, await r.json()
        plot_status, _ = await get(s, base + "/anomalies/press-09-123/plot.svg")
        _, other = await get(s, f"{base}/anomalies/cnc-01-{T0}")
        form = {"by": "x", "verdict": "confirmed", "csrf": csrf_of(other)}
        async with s.post(base + "/anomalies/press-09-123/ack", data=form) as r:
            ack_status = r.status
    assert (status, api_status, plot_status, ack_status) == (404, 404, 404, 404)
    assert "There is no episode press-09-123 in the journal" in text_of(page)
    assert doc == {"error": "no episode 'press-09-123' in the journal"}


async def test_episode_page_explains_and_the_api_matches(data_dir: Path) -> None:
    eid = f"cnc-01-{T0}"
    async with serving(config(data_dir)) as (base, s):
        status, page = await get(s, f"{base}/anomalies/{eid}")
        async with s.get(f"{base}/api/anomalies/{eid}") as r:
            doc = await r.json()
    assert status == 200
    text = text_of(page)
    assert "vibration_rms contributes 72 %; observed 6.40 mm/s, expected 2.10 ± 0.400" in text
    assert "bearing_temperature contributes 20 %; observed 71.0 °C, expected 55.0 ± 3.00" in text
    assert "Detector pca-t2q" in text and "Model version cnc-01@3" in text
    assert "Peak score 5.00 × the limit" in text and "Duration 12 min" in text
    assert f'<img class="plot" src="/anomalies/{eid}/plot.svg"' in page
    assert "Nobody has acknowledged this episode yet" in text
    assert doc["id"] == eid and doc["state"] == "closed" and doc["severity"] == 664
    assert doc["explanation"][0].startswith("vibration_rms contributes 72 %")
    assert doc["start"] == "2026-01-05T06:00:00.000Z" and doc["end_ns"] == T0 + 12 * MIN
    assert doc["audit"] == []


async def test_plot_is_an_svg_of_the_episode(data_dir: Path) -> None:
    async with serving(config(data_dir)) as (base, s):
        async with s.get(f"{base}/anomalies/cnc-01-{T0}/plot.svg") as r:
            status, kind, body = r.status, r.content_type, await r.text()
            csp = r.headers["Content-Security-Policy"]
        async with s.get(f"{base}/anomalies/cnc-01-{T0}/plot.png") as r:
            png = await r.read()
    assert status == 200 and kind == "image/svg+xml"
    assert "<svg" in body and len(body) > 10_000  # matplotlib draws text as glyph paths
    assert csp.startswith("default-src 'none'")  # not the page's: the SVG may style itself
    assert png.startswith(b"\x89PNG")


async def test_acknowledge_changes_the_state_and_keeps_an_audit_record(data_dir: Path) -> None:
    eid = f"conveyor-01-{T0 + 30 * MIN}"
    async with serving(config(data_dir)) as (base, s):
        _, page = await get(s, f"{base}/anomalies/{eid}")
        assert 'class="state state-open"' in page
        form = {"csrf": csrf_of(page), "by": "Linh", "verdict": "confirmed",
                "note": "bearing replaced"}  # fmt: skip
        async with s.post(f"{base}/anomalies/{eid}/ack", data=form, allow_redirects=False,
                          headers={"Origin": base}) as r:  # fmt: skip
            assert r.status == 303
            location = r.headers["Location"]
        assert location == f"/anomalies/{eid}?saved=1"
        status, page = await get(s, base + location)
        async with s.get(f"{base}/api/anomalies/{eid}") as r:
            doc = await r.json()
    assert status == 200
    text = text_of(page)
    assert "Saved: this verdict trains the detector." in text
    assert "Confirmed fault: bearing replaced — Linh" in text
    assert 'class="state state-acknowledged"' in page and "Change the verdict" in text
    assert doc["state"] == "acknowledged" and doc["verdict"] == "confirmed"
    assert [(a["who"], a["verdict"], a["note"]) for a in doc["audit"]] == [
        ("Linh", "confirmed", "bearing replaced")
    ]
    with Journal(data_dir / "journal.db") as journal:
        stored = journal.get(eid)
        audit = journal.audit(eid)
    assert stored is not None and stored.state == "acknowledged" and stored.acked_by == "Linh"
    assert [(a["who"], a["action"], a["verdict"]) for a in audit] == [
        ("Linh", "acknowledge", "confirmed")
    ]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"by": " ", "verdict": "false-alarm"}, "Give your name"),
        ({"by": "Linh"}, "Choose a verdict: confirmed fault or false alarm."),
        ({"by": "Linh", "verdict": "maybe"}, "Choose a verdict"),
        ({"by": "x" * 101, "verdict": "confirmed"}, "Name up to 100 characters"),
    ],
)
async def test_a_bad_acknowledgement_is_a_400_and_changes_nothing(
    data_dir: Path, form: dict[str, str], message: str
) -> None:
    eid = f"hoist-01-{T0 + 60 * MIN}"
    async with serving(config(data_dir)) as (base, s):
        _, page = await get(s, f"{base}/anomalies/{eid}")
        async with s.post(f"{base}/anomalies/{eid}/ack",
                          data={**form, "csrf": csrf_of(page)}) as r:  # fmt: skip
            status, page = r.status, await r.text()
    assert status == 400 and message in text_of(page)
    kept = re.search(r'name="by"[^>]*value="([^"]*)"', page)  # what was typed is kept
    assert kept is not None and kept.group(1) == html.escape(form["by"].strip())
    with Journal(data_dir / "journal.db") as journal:
        assert journal.audit(eid) == []


# -- access --------------------------------------------------------------------------------------


async def post_ack(
    s: aiohttp.ClientSession, base: str, headers: dict[str, str], csrf: str | None
) -> tuple[int, str]:
    eid = f"cnc-01-{T0}"
    form = {"by": "mallory", "verdict": "false-alarm"}
    if csrf is not None:
        form["csrf"] = csrf
    async with s.post(f"{base}/anomalies/{eid}/ack", data=form, headers=headers,
                      allow_redirects=False) as r:  # fmt: skip
        return r.status, await r.text()


async def test_cross_site_acknowledgements_are_refused(data_dir: Path) -> None:
    async with serving(config(data_dir)) as (base, s):
        _, page = await get(s, f"{base}/anomalies/cnc-01-{T0}")
        csrf = csrf_of(page)
        no_token = await post_ack(s, base, {"Origin": base}, None)
        wrong_token = await post_ack(s, base, {"Origin": base}, "0" * 64)
        foreign = await post_ack(s, base, {"Origin": "http://evil.example"}, csrf)
        foreign_referer = await post_ack(s, base, {"Referer": "http://evil.example/x"}, csrf)
        null_origin = await post_ack(s, base, {"Origin": "null"}, csrf)
        ok = await post_ack(s, base, {"Referer": f"{base}/anomalies/cnc-01-{T0}"}, csrf)
    for status, text in (no_token, wrong_token):
        assert status == 403 and "CSRF token is missing or stale; reload the page" in text
    for status, text in (foreign, foreign_referer, null_origin):
        assert status == 403 and "a form sent from another site" in text
    assert ok[0] == 303
    with Journal(data_dir / "journal.db") as journal:
        assert [a["who"] for a in journal.audit()] == ["mallory"]  # only the last one


async def test_localhost_server_refuses_another_host_name(data_dir: Path) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1."""
    async with serving(config(data_dir)) as (base, s):
        status, text = await get(s, base + "/", headers={"Host": "evil.example:8180"})
        health, _ = await get(s, base + "/healthz", headers={"Host": "evil.example:8180"})
        local, _ = await get(s, base + "/", headers={"Host": "localhost:8180"})
    assert status == 403 and "answers only to localhost, not to Host: evil.example" in text
    assert health == 503 and local == 200  # /healthz answers (degraded: a device is down)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "http-token"
    path.write_text(TOKEN + "\n")
    return path


async def test_with_a_token_every_request_but_healthz_needs_it(
    data_dir: Path, token_file: Path
) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with serving(config(data_dir, token_file=str(token_file))) as (base, s):
        health, _ = await get(s, base + "/healthz")
        api, api_text = await get(s, base + "/api/anomalies")
        metrics, _ = await get(s, base + "/metrics")
        wrong, _ = await get(s, base + "/api/anomalies", headers={"Authorization": "Bearer x"})
        async with s.get(base + "/", headers={"Accept": "text/html"}) as r:
            browser, login_page = r.status, await r.text()
            challenge = r.headers.get("WWW-Authenticate")
        async with s.get(base + "/api/anomalies") as r:
            api_challenge = r.headers["WWW-Authenticate"]
        ok_api, _ = await get(s, base + "/api/anomalies", headers=bearer)
        ok_metrics, metrics_text = await get(s, base + "/metrics", headers=bearer)
        ok_page, _ = await get(s, f"{base}/anomalies/cnc-01-{T0}", headers=bearer)
    assert health == 503  # answered without a token (degraded: a device is down)
    assert (api, metrics, wrong) == (401, 401, 401)
    assert "send the header 'Authorization: Bearer <token>'" in api_text
    assert api_challenge == 'Bearer realm="factory-agent"'
    assert browser == 401 and challenge is None and 'action="/login"' in login_page
    assert (ok_api, ok_metrics, ok_page) == (200, 200, 200)
    assert "factory_agent_uptime_seconds" in metrics_text


async def test_login_sets_a_strict_httponly_session_cookie(
    data_dir: Path, token_file: Path
) -> None:
    async with serving(config(data_dir, token_file=str(token_file))) as (base, s):
        _, login = await get(s, base + "/login?next=/anomalies%3Fstate%3Dopen")
        form = {"csrf": csrf_of(login), "next": "/anomalies?state=open"}
        async with s.post(base + "/login", data={**form, "token": "guess"},
                          allow_redirects=False) as r:  # fmt: skip
            bad, bad_page = r.status, await r.text()
        async with s.post(base + "/login", data={**form, "token": "guess"},
                          headers={"Origin": "http://evil.example"}) as r:  # fmt: skip
            foreign = r.status
        async with s.post(base + "/login", data={**form, "token": TOKEN},
                          allow_redirects=False) as r:  # fmt: skip
            good, location = r.status, r.headers["Location"]
            set_cookie = r.headers["Set-Cookie"]
            cookie = r.cookies[SESSION_COOKIE].value
        session = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
        page_status, page = await get(s, base + location, headers=session)
        forged, _ = await get(s, base + "/", headers={"Cookie": f"{SESSION_COOKIE}=1.abc"})
        ack = await post_ack(s, base, {**session, "Origin": base}, csrf_of(page))
        stale = await post_ack(s, base, {**session, "Origin": base}, csrf_of(login))
    assert bad == 401 and "That is not this agent's access token." in text_of(bad_page)
    assert foreign == 403
    assert good == 303 and location == "/anomalies?state=open"
    attributes = {a.strip().split("=")[0].lower() for a in set_cookie.split(";")}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
    assert page_status == 200 and "conveyor-01" in page and "Sign out" in page
    assert forged == 401
    assert ack[0] == 303  # the page's CSRF token is bound to this session
    assert stale[0] == 403  # the login page's (no session) is not


async def test_login_never_redirects_off_site(data_dir: Path, token_file: Path) -> None:
    async with serving(config(data_dir, token_file=str(token_file))) as (base, s):
        _, login = await get(s, base + "/login")
        form = {"csrf": csrf_of(login), "token": TOKEN, "next": "//evil.example/"}
        async with s.post(base + "/login", data=form, allow_redirects=False) as r:
            assert r.headers["Location"] == "/"


def test_non_local_bind_without_token_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValidationError, match=r"set http.token_file to a file holding one"):
        config(tmp_path, listen="0.0.0.0:8180")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "http: {listen: '10.1.2.3:8180'}\n"
        "devices: [{name: p, type: modbus, host: 127.0.0.1, machines: "
        "[{name: m, unit_id: 1, registers: [{field: f, address: 1}]}]}]\n"
    )
    assert main(["run", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{cfg}: http: listen '10.1.2.3:8180' is reachable from other machines")
    assert "Traceback" not in err
    config(tmp_path, listen="0.0.0.0:8180", token_file=str(tmp_path / "t"))  # with one: fine


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "http.token_file: cannot read {path}: No such file or directory; create it"),
        (
            "short\n",
            "http.token_file: {path} holds 5 characters; an access token needs at least 16",
        ),
    ],
)
async def test_an_unusable_token_file_stops_the_start(
    data_dir: Path, content: str | None, message: str
) -> None:
    path = data_dir / "token"
    if content is not None:
        path.write_text(content)
    server = WebServer(config(data_dir, token_file=str(path)), snapshot)
    with pytest.raises(TokenFileError) as info:
        await server.start()
    assert str(info.value).startswith(message.format(path=path))


async def test_security_headers_on_pages(data_dir: Path) -> None:
    async with serving(config(data_dir)) as (base, s), s.get(base + "/") as r:
        headers: Callable[[str], str | None] = r.headers.get
        assert "script-src 'self'" in (headers("Content-Security-Policy") or "")
        assert headers("X-Frame-Options") == "DENY"
        assert headers("X-Content-Type-Options") == "nosniff"
