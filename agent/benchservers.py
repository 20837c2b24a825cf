"""The sinks ``factory-agent bench`` writes to: VictoriaMetrics or InfluxDB 1.x, started per run.

Each is the Debian binary (``victoria-metrics``, ``influxd``; ``make system-deps`` installs
both) on a free loopback port with its data in the run's temporary directory. :meth:`start`
returns once the port accepts connections and the health endpoint answers (never a bare
sleep); the process gets ``PR_SET_PDEATHSIG``, so it dies with the bench even when that is
killed. After the run, :meth:`count_values` says how many values of a measurement the server
holds between two instants: the bench's "delivered".

The start logic mirrors ``tests/servers.py`` (the tests' fixtures, which are not installed).
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
from typing import Any

READY_TIMEOUT_S = 30.0
INSTALL_HINT = "install the Debian package {pkg} (`make system-deps`) or use --sink none"


class BenchServerError(RuntimeError):
    """The server binary is missing or the server did not come up (a user's problem)."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class BenchServer:
    """One server process on a free loopback port; ``with`` starts and kills it."""

    binary = ""
    package = ""
    label = ""

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
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def sink_config(self) -> dict[str, Any]:
        """The agent's ``sinks:`` entry for this server."""
        raise NotImplementedError

    def count_values(self, measurement: str, start_ns: int, end_ns: int) -> int:
        """Values (fields) of ``measurement`` stamped in ``[start_ns, end_ns)``."""
        raise NotImplementedError

    def start(self) -> None:
        exe = shutil.which(self.binary) or f"/usr/bin/{self.binary}"
        if not Path(exe).exists():
            raise BenchServerError(
                f"--sink {self.label}: {self.binary} not found: "
                + INSTALL_HINT.format(pkg=self.package)
            )
        with self.log_path.open("ab") as log:
            # preexec_fn only calls prctl (no locks, no allocation): safe in a threaded process
            self.proc = subprocess.Popen(  # noqa: S603 (our fixed command line)
                [exe, *self.command()], cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,  # noqa: PLW1509
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchServerError(
                    f"--sink {self.label}: {self.binary} exited with {self.proc.returncode}: "
                    f"{self.log_tail()}"
                )
            if _port_open(self.port) and self.healthy():
                return
            time.sleep(0.02)
        self.kill()
        raise BenchServerError(f"--sink {self.label}: {self.binary} not ready in "
                               f"{READY_TIMEOUT_S:g} s: {self.log_tail()}")  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.splitlines()[-lines:])

    def http(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> tuple[int, bytes]:
        """One request to the server; (status, body) for any status, raises on no answer."""
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        # S310 is about file:// and custom schemes: this URL is always http://127.0.0.1:<port>
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())

    def __enter__(self) -> BenchServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class VictoriaMetricsServer(BenchServer):
    """Single-node VictoriaMetrics; the agent writes through the InfluxDB v2 API.

    A field becomes the metric ``<measurement>_<field>``; timestamps are kept in ms. Fresh rows
    are searchable only after a flush and, for new series, a moment later, so
    :meth:`count_values` flushes and asks again until two answers agree.
    """

    binary = "victoria-metrics"
    package = "victoria-metrics"
    label = "victoriametrics"

    def command(self) -> list[str]:
        return [
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0",
            "-search.disableCache",
            "-loggerLevel=ERROR",
        ]

    def healthy(self) -> bool:
        try:
            status, body = self.http("GET", "/health", timeout_s=1.0)
        except OSError:
            return False
        return status == 200 and body.strip() == b"OK"

    def sink_config(self) -> dict[str, Any]:
        return {"name": "victoriametrics", "type": "influxdb", "url": self.url,
                "org": "bench", "bucket": "bench"}  # fmt: skip

    def _count_once(self, measurement: str, start_ns: int, end_ns: int) -> int:
        self.http("GET", "/internal/force_flush")
        end_ms, start_ms = end_ns // 1_000_000, -(-start_ns // 1_000_000)
        # (end - range, end] holds the samples; end is one ms before end_ns: [start, end)
        query = (f'sum(count_over_time({{__name__=~"{measurement}_.+"}}'
                 f"[{max(1, end_ms - start_ms)}ms]))")  # fmt: skip
        status, raw = self.http(
            "GET", "/api/v1/query", {"query": query, "time": f"{(end_ms - 1) / 1000:.3f}"}
        )
        if status != 200:
            raise BenchServerError(f"victoria-metrics query {status}: {raw[:300]!r}")
        result = json.loads(raw)["data"]["result"]
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


class InfluxDB1Server(BenchServer):
    """``influxd`` 1.x with HTTP on loopback and everything else off; database ``bench``."""

    binary = "influxd"
    package = "influxdb"
    label = "influxdb"
    database = "bench"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.rpc_port = free_port()
        self.config_path = workdir / "influxdb.conf"
        d = workdir
        self.config_path.write_text(f"""\
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
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "error"
  suppress-logo = true
""")

    def command(self) -> list[str]:
        return ["-config", str(self.config_path)]

    def healthy(self) -> bool:
        try:
            status, _ = self.http("GET", "/ping", timeout_s=1.0)
        except OSError:
            return False
        return status == 204

    def start(self) -> None:
        super().start()
        self.query(f'CREATE DATABASE "{self.database}"')

    def sink_config(self) -> dict[str, Any]:
        return {"name": "influxdb", "type": "influxdb_v1", "url": self.url,
                "database": self.database}  # fmt: skip

    def query(self, influxql: str) -> list[dict[str, Any]]:
        """Rows of every series of an InfluxQL statement (``epoch=ns``)."""
        body = urllib.parse.urlencode({"q": influxql, "db": self.database, "epoch": "ns"})
        status, raw = self.http(
            "POST", "/query", body=body.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        doc = json.loads(raw or b"{}")
        errors = [doc.get("error")] + [r.get("error") for r in doc.get("results", [])]
        if status != 200 or any(errors):
            raise BenchServerError(f"influxd query {status}: {[e for e in errors if e]}")
        rows: list[dict[str, Any]] = []
        for result in doc.get("results", []):
            for series in result.get("series", []):
                rows.extend(dict(zip(series["columns"], v, strict=True)) for v in series["values"])
        return rows

    def count_values(self, measurement: str, start_ns: int, end_ns: int) -> int:
        rows = self.query(
            f'SELECT count(*) FROM "{measurement}" '  # noqa: S608 (our own names and numbers)
            f"WHERE time >= {start_ns} AND time < {end_ns}"
        )
        return sum(int(v) for row in rows for k, v in row.items() if k != "time" and v)


SERVERS: dict[str, type[BenchServer]] = {
    "victoriametrics": VictoriaMetricsServer,
    "influxdb": InfluxDB1Server,
}
