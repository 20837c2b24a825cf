"""VictoriaMetrics and InfluxDB 1.x started from their Debian binaries, for ``factory-agent bench``.

Each is the Debian binary (``victoria-metrics``, ``influxd``; ``make system-deps`` installs
both) on a free loopback port with its data in a private directory. :meth:`~ServerProcess.start`
returns once the port accepts connections and the health endpoint answers (never a bare sleep);
the process gets ``PR_SET_PDEATHSIG``, so it dies with its parent even when that is killed.

Two layers:

- :class:`ServerProcess` and its two servers :class:`VictoriaMetricsProcess` and
  :class:`InfluxDB1Process`: the process, the ports, the health wait, the InfluxDB config file,
  the command lines, plain queries. The tests' fixtures (``tests/servers.py``, not installed)
  extend these with what only tests need (stop, pause, restart, users, export).
- :class:`BenchServer` (:data:`SERVERS`): the bench's sinks, which name themselves after
  ``--sink`` in their errors, give the agent its ``sinks:`` entry and, after the run, say with
  :meth:`~BenchServer.count_values` how many values of a measurement the server holds between
  two instants: the bench's "delivered".
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Self

READY_TIMEOUT_S = 30.0
INSTALL_HINT = "install the Debian package {package} (`make system-deps`) or use --sink none"


class ServerError(RuntimeError):
    """The server binary is missing or the server did not come up, or a query failed."""


class BenchServerError(ServerError):
    """A :class:`ServerError` of ``factory-agent bench`` (a user's problem: exit code 2)."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: SIGKILL when the parent goes away


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """One server process on a free loopback port; ``with`` starts and kills it.

    Subclasses give :meth:`command` and :meth:`healthy`; the class attributes tune the rest.
    """

    binary = ""
    package = ""  # the Debian package of the binary
    install_hint = "install the Debian package {package} (`make system-deps`)"
    error_type: type[ServerError] = ServerError  # what start() raises
    query_error_type: type[Exception] = ServerError  # what a failed query raises
    log_level = "error"
    tail_lines = 5  # of the server's log, in start()'s errors
    tail_separator = " | "
    request_timeout_s = 30.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The arguments of :attr:`binary`."""
        raise NotImplementedError

    def healthy(self) -> bool:
        """Whether the health endpoint answers (the port is open when this is asked)."""
        raise NotImplementedError

    def auth_headers(self) -> dict[str, str]:
        """Headers authenticating a request (none unless a subclass adds users)."""
        return {}

    def _start_error(self, problem: str, detail: str) -> ServerError:
        return self.error_type(f"{problem}: {detail}")

    def start(self) -> None:
        """Start the process and return once the port is open and the health check answers."""
        exe = shutil.which(self.binary) or f"/usr/bin/{self.binary}"
        if not Path(exe).exists():
            hint = self.install_hint.format(package=self.package)
            raise self._start_error(f"{self.binary} not found", hint)
        with self.log_path.open("ab") as log:
            # preexec_fn only calls prctl (no locks, no allocation): safe in a threaded process
            self.proc = subprocess.Popen(  # noqa: S603 (our fixed command line)
                [exe, *self.command()], cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,  # noqa: PLW1509
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                problem = f"{self.binary} exited with {self.proc.returncode}"
                raise self._start_error(problem, self.log_tail())
            if _port_open(self.port) and self.healthy():
                return
            time.sleep(0.02)
        self.kill()
        problem = f"{self.binary} not ready in {READY_TIMEOUT_S:g} s"
        raise self._start_error(problem, self.log_tail())

    def kill(self) -> None:
        """SIGKILL: no shutdown, as after a power cut (what a WAL is for)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int | None = None) -> str:
        """The last lines (default :attr:`tail_lines`) of the server's log, on one line."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return self.tail_separator.join(text.splitlines()[-(lines or self.tail_lines) :])

    def http(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, bytes]:
        """One plain HTTP request; (status, body) for any status, raises on no answer."""
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        # S310 is about file:// and custom schemes: this URL is always http://127.0.0.1:<port>
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class VictoriaMetricsProcess(ServerProcess):
    """Single-node VictoriaMetrics; takes line protocol on ``/write`` and ``/api/v2/write``.

    A field becomes the metric ``<measurement>_<field>``, timestamps are kept in ms. Started with
    100 years of retention (older samples are dropped silently), ``-search.latencyOffset=0``
    and ``-search.disableCache`` so that :meth:`query` sees fresh samples after a flush.
    """

    binary = "victoria-metrics"
    package = "victoria-metrics"

    def command(self) -> list[str]:
        return [
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0",
            "-search.disableCache",
            f"-loggerLevel={self.log_level.upper()}",
        ]

    def healthy(self) -> bool:
        try:
            status, body = self.http("GET", "/health", timeout_s=1.0)
        except OSError:
            return False
        return status == 200 and body.strip() == b"OK"

    def flush(self) -> None:
        """Make the samples ingested so far searchable (new series may still lag a moment)."""
        status, body = self.http("GET", "/internal/force_flush", headers=self.auth_headers())
        if status != 200:
            raise self.query_error_type(f"{self.binary} force_flush {status}: {body[:300]!r}")

    def query(self, promql: str, *, at_s: float | None = None) -> list[dict[str, Any]]:
        """An instant PromQL query (at ``at_s``, default now) after a flush; ``data.result``."""
        self.flush()
        params = {"query": promql}
        if at_s is not None:
            params["time"] = f"{at_s:.3f}"
        status, raw = self.http("GET", "/api/v1/query", params, headers=self.auth_headers())
        if status != 200:
            raise self.query_error_type(f"{self.binary} query {status}: {raw[:300]!r}")
        result: list[dict[str, Any]] = json.loads(raw)["data"]["result"]
        return result


class InfluxDB1Process(ServerProcess):
    """``influxd`` 1.x with a minimal config: HTTP and RPC on loopback, everything else off.

    ``auth_enabled`` turns on ``[http] auth-enabled``; ``max_body_size`` sets ``[http]
    max-body-size`` in bytes (influxd's default is 25 MB).
    """

    binary = "influxd"
    package = "influxdb"

    def __init__(
        self, workdir: Path, *, auth_enabled: bool = False, max_body_size: int = 25_000_000
    ) -> None:
        super().__init__(workdir)
        self.rpc_port = free_port()
        self.auth_enabled = auth_enabled
        self.max_body_size = max_body_size
        self.config_path = workdir / "influxdb.conf"
        self.config_path.write_text(self._config())

    def _config(self) -> str:
        d = self.workdir
        return f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"

[meta]
  dir = "{d / "meta"}"
  logging-enabled = false

[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = {str(self.auth_enabled).lower()}
  log-enabled = false
  pprof-enabled = false
  max-body-size = {self.max_body_size}

[logging]
  level = "{self.log_level}"
  suppress-logo = true
"""

    def command(self) -> list[str]:
        return ["-config", str(self.config_path)]

    def healthy(self) -> bool:
        try:
            status, _ = self.http("GET", "/ping", timeout_s=1.0)
        except OSError:
            return False
        return status == 204

    def query(self, influxql: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL through ``/query`` (POST, ``epoch=ns``); the rows of all series.

        Each row is a dict of the columns (``time`` in ns since the epoch), plus the series'
        GROUP BY tags. An error of the server or of a statement raises :attr:`query_error_type`.
        """
        params = {"q": influxql, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        body = urllib.parse.urlencode(params).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **self.auth_headers()}
        status, raw = self.http("POST", "/query", body=body, headers=headers)
        doc = json.loads(raw or b"{}")
        if status != 200 or "error" in doc:
            raise self.query_error_type(f"influxd /query {status}: {doc.get('error', raw[:300])}")
        rows: list[dict[str, Any]] = []
        for result in doc.get("results", []):
            if "error" in result:
                raise self.query_error_type(f"influxd: {influxql!r}: {result['error']}")
            for series in result.get("series", []):
                tags = series.get("tags", {})
                rows.extend(
                    {**dict(zip(series["columns"], v, strict=True)), **tags}
                    for v in series.get("values", [])
                )
        return rows


class BenchServer(ServerProcess):
    """A sink of ``factory-agent bench``; its errors start with ``--sink <label>``."""

    label = ""
    install_hint = INSTALL_HINT
    error_type = BenchServerError
    query_error_type = BenchServerError

    def _start_error(self, problem: str, detail: str) -> ServerError:
        return super()._start_error(f"--sink {self.label}: {problem}", detail)

    def sink_config(self) -> dict[str, Any]:
        """The agent's ``sinks:`` entry for this server."""
        raise NotImplementedError

    def count_values(self, measurement: str, start_ns: int, end_ns: int) -> int:
        """Values (fields) of ``measurement`` stamped in ``[start_ns, end_ns)``."""
        raise NotImplementedError


class VictoriaMetricsServer(BenchServer, VictoriaMetricsProcess):
    """VictoriaMetrics; the agent writes through the InfluxDB v2 API.

    Fresh rows are searchable only after a flush and, for new series, a moment later, so
    :meth:`count_values` asks again until two answers agree.
    """

    label = "victoriametrics"

    def sink_config(self) -> dict[str, Any]:
        return {"name": "victoriametrics", "type": "influxdb", "url": self.url,
                "org": "bench", "bucket": "bench"}  # fmt: skip

    def _count_once(self, measurement: str, start_ns: int, end_ns: int) -> int:
        end_ms, start_ms = end_ns // 1_000_000, -(-start_ns // 1_000_000)
        # (end - range, end] holds the samples; end is one ms before end_ns: [start, end)
        query = (f'sum(count_over_time({{__name__=~"{measurement}_.+"}}'
                 f"[{max(1, end_ms - start_ms)}ms]))")  # fmt: skip
        result = self.query(query, at_s=(end_ms - 1) / 1000)
        return int(float(result[0]["value"][1])) if result else 0

    def count_values(self, measurement: str, start_ns: int, end_ns: int) -> int:
        last = -1
        for _ in range(40):
            n = self._count_once(measurement, start_ns, end_ns)
            if n == last:
                return n
            last = n
            time.sleep(0.25)
        return last


class InfluxDB1Server(BenchServer, InfluxDB1Process):
    """``influxd`` 1.x; the agent writes to database ``bench``, created by :meth:`start`."""

    label = "influxdb"
    database = "bench"

    def start(self) -> None:
        super().start()
        self.query(f'CREATE DATABASE "{self.database}"')

    def sink_config(self) -> dict[str, Any]:
        return {"name": "influxdb", "type": "influxdb_v1", "url": self.url,
                "database": self.database}  # fmt: skip

    def count_values(self, measurement: str, start_ns: int, end_ns: int) -> int:
        rows = self.query(
            f'SELECT count(*) FROM "{measurement}" '  # noqa: S608 (our own names and numbers)
            f"WHERE time >= {start_ns} AND time < {end_ns}",
            db=self.database,
        )
        return sum(int(v) for row in rows for k, v in row.items() if k != "time" and v)


SERVERS: dict[str, type[BenchServer]] = {
    "victoriametrics": VictoriaMetricsServer,
    "influxdb": InfluxDB1Server,
}
