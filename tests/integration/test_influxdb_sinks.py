"""InfluxV1Sink and InfluxV2Sink against real influxd 1.x and VictoriaMetrics on loopback.

Only the Retry-After cases use a small in-test aiohttp server: neither real server answers 429
or 503 on demand.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from pydantic import ValidationError

from agent.deflate import deflate, gzip_body
from agent.sinks.base import SinkError
from agent.sinks.influxdb import (
    InfluxV1Config,
    InfluxV1Sink,
    InfluxV2Config,
    InfluxV2Sink,
    parse_retry_after,
)
from tests.servers import InfluxDB1, VictoriaMetrics, free_port

pytestmark = pytest.mark.integration

T0 = 1_767_600_000_123_456_789  # 2026-01-05T08:00:00.123456789Z, ns digits all significant
SECRET = "planted-Secret-5f1e0c9a"  # noqa: S105 - planted so the tests can prove it never leaks
VM_USER = {"username": "agent", "password": "vm-pw"}  # VictoriaMetrics -httpAuth.*


def v1(url: str, database: str, **kw: Any) -> InfluxV1Sink:
    return InfluxV1Sink(InfluxV1Config(type="influxdb_v1", url=url, database=database, **kw))


def v2(url: str, **kw: Any) -> InfluxV2Sink:
    kw = {"org": "plant", "bucket": "machines", **kw}
    return InfluxV2Sink(InfluxV2Config(type="influxdb", url=url, **kw))


@pytest.fixture
async def sinks() -> AsyncIterator[list[Any]]:
    """Sinks to close at the end of the test (an open aiohttp session is a warning, so an error)."""
    opened: list[Any] = []
    yield opened
    for sink in opened:
        await sink.close()


async def failure(coro: Any) -> SinkError:
    with pytest.raises(SinkError) as info:
        await coro
    return info.value


# --- InfluxDB 1.x --------------------------------------------------------------------------


async def send(sink: Any, lines: list[str], how: str) -> None:
    """As the forwarder does: lines gzipped by the sink, plain, or spool rows in one gzip body.

    ``rows``: each line compressed on its own (as the spool stores an append) and the chunks
    joined into one gzip member, as :meth:`Batch.gzip_body` does.
    """
    if how == "rows":
        await sink.write_gzip(gzip_body([deflate(line.encode()) for line in lines]))
    else:
        await sink.write("\n".join(lines).encode())


@pytest.mark.parametrize(("how", "gzip_level"), [("gzip", 1), ("plain", 0), ("rows", 1)])
async def test_v1_batch_reads_back_exactly(
    influxdb1: InfluxDB1, sinks: list[Any], how: str, gzip_level: int
) -> None:
    db = f"roundtrip_{how}"
    influxdb1.create_database(db)
    sink = v1(influxdb1.url, db, gzip_level=gzip_level)
    sinks.append(sink)
    lines = [
        f"cnc,machine=cnc-01,line=line\\ 1 spindle_rpm=12000.5,load=0.73,alarms=3i,run=true {T0}",
        f"cnc,machine=cnc-02,line=line\\ 1 spindle_rpm=0,load=0,alarms=0i,run=false {T0 + 1}",
        f'cnc,machine=cnc-01,line=line\\ 1 spindle_rpm=11999.25,state="cut, 2",run=true {T0 + 7}',
        f"press,machine=p-1 force_kn=-12.5 {T0 + 999_999_999}",
    ]
    await send(sink, lines, how)

    rows = influxdb1.query("SELECT * FROM cnc", db=db)
    assert rows == [
        {"time": T0, "machine": "cnc-01", "line": "line 1", "spindle_rpm": 12000.5,
         "load": 0.73, "alarms": 3, "run": True, "state": None},
        {"time": T0 + 1, "machine": "cnc-02", "line": "line 1", "spindle_rpm": 0,
         "load": 0, "alarms": 0, "run": False, "state": None},
        {"time": T0 + 7, "machine": "cnc-01", "line": "line 1", "spindle_rpm": 11999.25,
         "load": None, "alarms": None, "run": True, "state": "cut, 2"},
    ]  # fmt: skip
    assert influxdb1.query("SELECT * FROM press", db=db) == [
        {"time": T0 + 999_999_999, "machine": "p-1", "force_kn": -12.5}
    ]


async def test_v1_precision_us_is_not_read_as_ns(influxdb1: InfluxDB1, sinks: list[Any]) -> None:
    """influxd 1.6 takes precision=us for ns without a word; the sink sends u."""
    influxdb1.create_database("precision")
    sink = v1(influxdb1.url, "precision", precision="us")
    sinks.append(sink)
    await sink.write(f"m v=1 {T0 // 1000}".encode())
    assert influxdb1.query("SELECT v FROM m", db="precision") == [
        {"time": T0 // 1000 * 1000, "v": 1}
    ]


async def test_v1_bad_line_is_400_with_the_servers_reason(
    influxdb1: InfluxDB1, sinks: list[Any]
) -> None:
    influxdb1.create_database("bad")
    sink = v1(influxdb1.url, "bad")
    sinks.append(sink)
    error = await failure(sink.write(b"m v=1 1\nm v= 2"))
    assert (error.status, error.retryable) == (400, False)
    assert error.reason == "partial write: unable to parse 'm v= 2': missing field value dropped=0"
    assert influxdb1.query("SELECT v FROM m", db="bad") == [{"time": 1, "v": 1}]  # 1.x: partial


async def test_v1_missing_database_says_how_to_create_it(
    influxdb1: InfluxDB1, sinks: list[Any]
) -> None:
    sink = v1(influxdb1.url, "nowhere")
    sinks.append(sink)
    for attempt in (sink.check, partial(sink.write, b"m v=1")):
        error = await failure(attempt())
        assert (error.status, error.retryable) == (404, False)
        assert 'database not found: "nowhere"' in error.reason
        assert 'create it with CREATE DATABASE "nowhere"' in error.reason


async def test_v1_missing_retention_policy_says_how_to_create_it(
    influxdb1: InfluxDB1, sinks: list[Any]
) -> None:
    influxdb1.create_database("rp")
    sink = v1(influxdb1.url, "rp", retention_policy="one_year")
    sinks.append(sink)
    error = await failure(sink.write(b"m v=1"))
    assert (error.status, error.retryable) == (500, True)  # a 5xx, so retried until created
    assert 'CREATE RETENTION POLICY "one_year" ON "rp"' in error.reason


async def test_v1_check_reports_version_and_database(
    influxdb1: InfluxDB1, sinks: list[Any]
) -> None:
    influxdb1.create_database("checked")
    sink = v1(influxdb1.url, "checked", name="plant-influx")
    sinks.append(sink)
    line = await sink.check()
    assert line.startswith(f"plant-influx: {influxdb1.url} (InfluxDB 1.")
    assert "database 'checked' writable" in line


async def test_v1_auth(start_server: Callable[..., Any], sinks: list[Any]) -> None:
    server: InfluxDB1 = start_server(InfluxDB1, auth_enabled=True)
    server.create_admin("admin", SECRET)
    server.create_database("secure")
    good = v1(server.url, "secure", username="admin", password=SECRET)
    wrong = v1(server.url, "secure", username="admin", password="not-" + SECRET)
    anonymous = v1(server.url, "secure")
    sinks.extend([good, wrong, anonymous])

    await good.write(b"m v=1 1")
    assert "writable as 'admin'" in await good.check()
    for sink, hint in ((wrong, "check username and password"), (anonymous, "needs username")):
        for attempt in (partial(sink.write, b"m v=2 2"), sink.check):
            error = await failure(attempt())
            assert (error.status, error.retryable) == (401, False)
            assert hint in error.reason
    assert server.query("SELECT v FROM m", db="secure") == [{"time": 1, "v": 1}]


async def test_v1_password_file(
    start_server: Callable[..., Any], sinks: list[Any], tmp_path: Path
) -> None:
    server: InfluxDB1 = start_server(InfluxDB1, auth_enabled=True)
    server.create_admin("admin", SECRET)
    server.create_database("secure")
    (tmp_path / "password").write_text(SECRET + "\n")
    sink = v1(server.url, "secure", username="admin", password_file=tmp_path / "password")
    sinks.append(sink)
    await sink.write(b"m v=1 1")
    assert server.query("SELECT v FROM m", db="secure") == [{"time": 1, "v": 1}]


@pytest.mark.parametrize("gzip_level", [0, 1])
async def test_v1_too_large_is_413(
    start_server: Callable[..., Any], sinks: list[Any], gzip_level: int
) -> None:
    """influxd 1.6 applies max-body-size to the bytes on the wire, compressed or not."""
    server: InfluxDB1 = start_server(InfluxDB1, max_body_size=4096)
    server.create_database("small")
    sink = v1(server.url, "small", gzip_level=gzip_level)
    sinks.append(sink)
    rng = random.Random(3)
    await sink.write(b"m v=1 1")
    big = "\n".join(f"m,k={rng.random()} v={rng.random()} {i}" for i in range(400)).encode()
    error = await failure(sink.write(big))
    assert (error.status, error.retryable) == (413, False)
    assert "max-body-size" in error.reason
    assert server.query("SELECT count(v) FROM m", db="small")[0]["count"] == 1


async def test_v1_stopped_paused_and_restarted_server(
    start_server: Callable[..., Any], sinks: list[Any]
) -> None:
    server: InfluxDB1 = start_server(InfluxDB1)
    server.create_database("db")
    sink = v1(server.url, "db", timeout_s=0.5)
    sinks.append(sink)
    await sink.write(b"m v=1 1")

    server.pause()  # connections are accepted by the kernel, nothing answers
    started = time.monotonic()
    error = await failure(sink.write(b"m v=2 2"))
    assert (error.status, error.retryable) == (None, True)
    assert time.monotonic() - started < 0.5 + 0.5
    assert f"no answer from {server.url} within 0.5 s" == error.reason

    server.resume()
    server.stop()
    started = time.monotonic()
    error = await failure(sink.write(b"m v=3 3"))
    assert (error.status, error.retryable) == (None, True)
    assert time.monotonic() - started < 0.5
    assert error.reason.startswith(f"cannot reach {server.url}")
    error = await failure(sink.check())
    assert error.retryable and server.url in error.reason

    server.start()  # same port, same data
    await sink.write(b"m v=4 4")
    # v=2 sat in the paused server's socket buffer and may have been written after all: a
    # timeout is no proof of non-delivery (points are idempotent, so a retry is harmless)
    values = {r["v"] for r in server.query("SELECT v FROM m", db="db")}
    assert {1, 4} <= values <= {1, 2, 4}


# --- v2 write API: VictoriaMetrics --------------------------------------------------------


@pytest.mark.parametrize(("how", "gzip_level"), [("gzip", 1), ("plain", 0), ("rows", 1)])
async def test_v2_batch_exports_back_equal(
    victoria: VictoriaMetrics, sinks: list[Any], how: str, gzip_level: int
) -> None:
    sink = v2(victoria.url, token=SECRET, gzip_level=gzip_level)
    sinks.append(sink)
    now_ms = time.time_ns() // 1_000_000  # inside the retention; VictoriaMetrics keeps ms
    m = f"press_{how}"
    lines = [
        f"{m},machine=p-1,line=line\\ 1 force_kn=12.5,stroke_mm=-3.25,cycles=7i {now_ms * 10**6}",
        f"{m},machine=p-1,line=line\\ 1 force_kn=13,stroke_mm=0,cycles=8i {(now_ms + 1) * 10**6}",
        f"{m},machine=p-2,line=line\\ 2 force_kn=0.5 {(now_ms + 1000) * 10**6 + 999_999}",
    ]
    await send(sink, lines, how)

    series = victoria.export(f'{{__name__=~"{m}_.*"}}', min_samples=7)
    assert series == [
        (f"{m}_cycles", {"machine": "p-1", "line": "line 1"}, [7, 8], [now_ms, now_ms + 1]),
        (f"{m}_force_kn", {"machine": "p-1", "line": "line 1"}, [12.5, 13], [now_ms, now_ms + 1]),
        (f"{m}_force_kn", {"machine": "p-2", "line": "line 2"}, [0.5], [now_ms + 1000]),
        (f"{m}_stroke_mm", {"machine": "p-1", "line": "line 1"}, [-3.25, 0], [now_ms, now_ms + 1]),
    ]  # fmt: skip


async def test_v2_precisions(victoria: VictoriaMetrics, sinks: list[Any]) -> None:
    now_s = time.time_ns() // 10**9
    stamps = {"s": now_s, "ms": now_s * 1000 + 1, "us": (now_s * 1000 + 2) * 1000}
    stamps["ns"] = (now_s * 1000 + 3) * 10**6
    for precision, stamp in stamps.items():
        sink = v2(victoria.url, precision=precision)
        sinks.append(sink)
        await sink.write(f"precision,p={precision} v=1 {stamp}".encode())
    series = victoria.export("precision_v", min_samples=4)
    assert {labels["p"]: ts for _, labels, _, ts in series} == {
        "s": [now_s * 1000], "ms": [now_s * 1000 + 1], "us": [now_s * 1000 + 2],
        "ns": [now_s * 1000 + 3],
    }  # fmt: skip


async def test_v2_line_too_long_is_400_with_the_servers_reason(
    victoria: VictoriaMetrics, sinks: list[Any]
) -> None:
    """VictoriaMetrics skips a malformed line with 204; a line over 256 KiB fails the request."""
    sink = v2(victoria.url)
    sinks.append(sink)
    error = await failure(sink.write(b"long v=1\nlong,tag=" + b"x" * 300_000 + b" v=2"))
    assert (error.status, error.retryable) == (400, False)
    assert "too long line: more than 262144 bytes" in error.reason
    assert len(error.reason) <= 501


async def test_v2_check(victoria: VictoriaMetrics, sinks: list[Any]) -> None:
    sink = v2(victoria.url, name="vm")
    sinks.append(sink)
    assert await sink.check() == (
        f"vm: {victoria.url} (version unknown): bucket 'machines' of org 'plant' writable"
    )


async def test_v2_wrong_credentials_is_401(
    start_server: Callable[..., Any], sinks: list[Any]
) -> None:
    server: VictoriaMetrics = start_server(VictoriaMetrics, **VM_USER)
    sink = v2(server.url, token=SECRET)
    sinks.append(sink)
    for attempt in (partial(sink.write, b"m v=1"), sink.check):
        error = await failure(attempt())
        assert (error.status, error.retryable) == (401, False)
        assert "check the token" in error.reason


async def test_v2_stopped_paused_and_restarted_server(
    start_server: Callable[..., Any], sinks: list[Any]
) -> None:
    server: VictoriaMetrics = start_server(VictoriaMetrics)
    sink = v2(server.url, timeout_s=0.5)
    sinks.append(sink)
    now_ms = time.time_ns() // 1_000_000
    await sink.write(f"restart v=1 {now_ms}000000".encode())

    server.pause()
    started = time.monotonic()
    error = await failure(sink.write(f"restart v=2 {now_ms + 1}000000".encode()))
    assert (error.status, error.retryable) == (None, True)
    assert time.monotonic() - started < 0.5 + 0.5
    assert error.reason == f"no answer from {server.url} within 0.5 s"

    server.resume()
    server.stop()
    error = await failure(sink.write(f"restart v=3 {now_ms + 2}000000".encode()))
    assert (error.status, error.retryable) == (None, True)
    assert error.reason.startswith(f"cannot reach {server.url}")
    error = await failure(sink.check())
    assert error.retryable and server.url in error.reason

    server.start()
    await sink.write(f"restart v=4 {now_ms + 3}000000".encode())
    [(_, _, values, _)] = server.export("restart_v", min_samples=2)
    assert {1, 4} <= set(values) <= {1, 2, 4}  # v=2 may be written after the resume


# --- secrets ------------------------------------------------------------------------------


async def test_secrets_never_appear_in_logs_or_errors(
    victoria: VictoriaMetrics,
    start_server: Callable[..., Any],
    sinks: list[Any],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    secured: InfluxDB1 = start_server(InfluxDB1, auth_enabled=True)
    secured.create_admin("admin", "admin-pw")
    secured.create_database("db")
    vm: VictoriaMetrics = start_server(VictoriaMetrics, **VM_USER)
    dead = f"http://127.0.0.1:{free_port()}"
    texts: list[str] = []
    with structlog.testing.capture_logs() as logs:
        accepted = v2(victoria.url, token=SECRET)  # VictoriaMetrics without auth ignores it
        sinks.append(accepted)
        await accepted.write(b"secret_test v=1")
        texts.append(await accepted.check())
        for sink in (
            v1(secured.url, "db", username="admin", password=SECRET),
            v1(dead, "db", username="admin", password=SECRET),
            v2(vm.url, token=SECRET),
            v2(dead, token=SECRET),
        ):
            sinks.append(sink)
            texts += [repr(sink), repr(sink.config), sink.config.model_dump_json()]
            for attempt in (partial(sink.write, b"m v=1"), sink.check):
                error = await failure(attempt())
                texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
        not_v2 = v2(secured.url, token=SECRET)  # 404: influxd 1.6 has no /api/v2/write
        sinks.append(not_v2)
        error = await failure(not_v2.write(b"m v=1"))
        texts += [str(error), "".join(traceback.format_exception(error))]
    out, err = capsys.readouterr()
    everything = "\n".join([*texts, caplog.text, out, err, repr(logs)])
    assert SECRET not in everything
    assert "HTTP 401" in everything and "cannot reach" in everything


# --- Retry-After (in-test server: neither real server says 429/503 on demand) -------------


@pytest.fixture
async def throttling() -> AsyncIterator[Callable[[int, dict[str, str]], str]]:
    """A server answering every request with the status and headers set last."""
    answer: dict[str, Any] = {"status": 204, "headers": {}}

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=answer["status"], headers=answer["headers"], text="busy")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    def set_answer(status: int, headers: dict[str, str]) -> str:
        answer.update(status=status, headers=headers)
        return f"http://127.0.0.1:{port}"

    yield set_answer
    await runner.cleanup()


@pytest.mark.parametrize("kind", ["v1", "v2"])
async def test_retry_after(
    throttling: Callable[[int, dict[str, str]], str], sinks: list[Any], kind: str
) -> None:
    in_30s = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    cases = [
        (429, {"Retry-After": "7"}, 7.0),
        (503, {"Retry-After": in_30s}, 30.0),
        (503, {}, None),
        (500, {"Retry-After": "soon"}, None),
    ]
    url = throttling(204, {})
    sink = v1(url, "db") if kind == "v1" else v2(url)
    sinks.append(sink)
    for status, headers, expected in cases:
        throttling(status, headers)
        error = await failure(sink.write(b"m v=1"))
        assert (error.status, error.retryable) == (status, True)
        assert error.reason == f"HTTP {status}: busy"
        if expected is None:
            assert error.retry_after_s is None
        else:
            assert error.retry_after_s == pytest.approx(expected, abs=2)


def test_parse_retry_after() -> None:
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    for bad in (None, "", "nan", "inf", "tomorrow"):
        assert parse_retry_after(bad) is None


# --- configuration ------------------------------------------------------------------------


def test_config_rules(tmp_path: Path) -> None:
    base = {"type": "influxdb", "url": "http://x:8086", "org": "o", "bucket": "b"}
    with pytest.raises(ValidationError, match="token or token_file, not both"):
        InfluxV2Config.model_validate({**base, "token": "t", "token_file": "/t"})
    with pytest.raises(ValidationError, match="not in the URL"):
        InfluxV2Config.model_validate({**base, "url": "http://u:p@x:8086"})
    with pytest.raises(ValidationError, match="not an http"):
        InfluxV2Config.model_validate({**base, "url": "x:8086"})
    with pytest.raises(ValidationError, match="extra"):
        InfluxV2Config.model_validate({**base, "gzip": True})
    with pytest.raises(ValidationError, match="needs a username"):
        InfluxV1Config.model_validate(
            {"type": "influxdb_v1", "url": "http://x", "database": "d", "password": "p"}
        )
    config = InfluxV2Config.model_validate({**base, "url": "https://x:8086/", "token": SECRET})
    assert config.url == "https://x:8086" and SECRET not in repr(config)
    with pytest.raises(SinkError, match="cannot read token_file") as info:
        InfluxV2Sink(config.model_copy(update={"token": None, "token_file": tmp_path / "no"}))
    assert not info.value.retryable
