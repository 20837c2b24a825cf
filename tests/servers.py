"""Real InfluxDB 1.x and VictoriaMetrics servers for tests and benchmarks, on free loopback ports.

Each helper starts the Debian binary (``influxd``, ``victoria-metrics``) with its data in a
private directory, waits until the port accepts connections AND the health endpoint answers
(never a bare sleep), and can be stopped, killed (SIGKILL) and restarted on the same port with
the same data. The children get ``PR_SET_PDEATHSIG`` so they die with the test process even when
that is killed itself.

Both binaries come from ``make system-deps``; :class:`ServerStartError` says so when one is
missing.
"""

from __future__ import annotations

import contextlib
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
from base64 import b64encode
from pathlib import Path
from typing import Any, Self

SYSTEM_DEPS_HINT = "run `make system-deps` (Debian packages influxdb victoria-metrics)"
READY_TIMEOUT_S = 30.0


class ServerStartError(RuntimeError):
    """The server binary is missing or the server did not come up."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: SIGKILL when the test process goes away


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class _Server:
    """One server process: start, wait for readiness, stop, kill, restart (same port and data)."""

    binary = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _healthy(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        """Start the process and return once the port is open and the health check answers."""
        exe = shutil.which(self.binary) or f"/usr/bin/{self.binary}"
        if not Path(exe).exists():
            raise ServerStartError(f"{self.binary} not found: {SYSTEM_DEPS_HINT}")
        with self.log_path.open("ab") as log:
            # preexec_fn only calls prctl (no locks, no allocation): safe in a threaded process
            self.proc = subprocess.Popen(
                [exe, *self._command()], cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,  # noqa: PLW1509
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.binary} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if _port_open(self.port) and self._healthy():
                return
            time.sleep(0.02)
        self.kill()
        raise ServerStartError(f"{self.binary} not ready in {READY_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.send_signal(signal.SIGCONT)  # a paused server handles SIGTERM after this
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, as after a power cut (what the WAL is for)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None

    def pause(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers (a hung server).

        Returns once every thread is stopped: a Go thread busy on another CPU keeps running
        (and answering) until it next enters the kernel, a few ms later under load.
        """
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self.proc.pid}/task")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = []
            for stat in tasks.glob("*/stat"):
                with contextlib.suppress(OSError):  # a thread may exit meanwhile
                    states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            if states and all(state in "Tt" for state in states):
                return
            time.sleep(0.001)
        raise AssertionError(f"{self.binary} not stopped after {timeout_s}s: {states}")

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop (gracefully) and start again on the same port with the same data."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _http(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> tuple[int, bytes]:
        """One plain HTTP request; returns (status, body) for any status, raises on no answer."""
        # S310 is about file:// and custom schemes: this URL is always http://127.0.0.1:<port>
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class InfluxDB1(_Server):
    """``influxd`` 1.x with a minimal config: HTTP and RPC on loopback, everything else off.

    ``auth_enabled`` turns on ``[http] auth-enabled``; the first user is then created with
    :meth:`create_admin` (influxd allows that one unauthenticated request) and its credentials
    are used by the query helpers from then on. ``max_body_size`` sets ``[http] max-body-size``
    in bytes, which makes influxd answer 413 to larger (decompressed) write bodies.

    Quirks of 1.6: no ``/health`` (``/ping`` answers 204), ``precision`` accepts ``n``/``u``/
    ``ms``/``s`` (the long ``ns``/``us`` spellings are 1.8+), and a batch with a bad line writes
    the good lines and answers 400 ("partial write").
    """

    binary = "influxd"

    def __init__(
        self, workdir: Path, *, auth_enabled: bool = False, max_body_size: int = 25_000_000
    ) -> None:
        super().__init__(workdir)
        self.rpc_port = free_port()
        self.auth_enabled = auth_enabled
        self.max_body_size = max_body_size
        self.credentials: tuple[str, str] | None = None
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
  level = "warn"
  suppress-logo = true
"""

    def _command(self) -> list[str]:
        return ["-config", str(self.config_path)]

    def _healthy(self) -> bool:
        try:
            status, _ = self._http("GET", "/ping", timeout_s=1.0)
        except OSError:
            return False
        return status == 204

    def _auth_headers(self) -> dict[str, str]:
        if self.credentials is None:
            return {}
        token = b64encode(":".join(self.credentials).encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def query(self, influxql: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL through ``/query`` (POST, ``epoch=ns``); the rows of all series.

        Each row is a dict of the columns (``time`` in ns since the epoch), plus the series'
        GROUP BY tags. An error of the server or of a statement raises :class:`AssertionError`.
        """
        params = {"q": influxql, "epoch": "ns"}
        if db is not None:
            params["db"] = db
        body = urllib.parse.urlencode(params).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **self._auth_headers()}
        status, raw = self._http("POST", "/query", body=body, headers=headers)
        doc = json.loads(raw or b"{}")
        if status != 200 or "error" in doc:
            raise AssertionError(f"influxd /query {status}: {doc.get('error', raw[:300])}")
        rows: list[dict[str, Any]] = []
        for result in doc.get("results", []):
            if "error" in result:
                raise AssertionError(f"influxd: {influxql!r}: {result['error']}")
            for series in result.get("series", []):
                tags = series.get("tags", {})
                rows.extend(
                    {**dict(zip(series["columns"], v, strict=True)), **tags}
                    for v in series.get("values", [])
                )
        return rows

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def create_admin(self, username: str, password: str) -> None:
        """Create an admin user (the first one needs no credentials) and use it from now on."""
        self.query(f"CREATE USER \"{username}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES")
        self.credentials = (username, password)


class VictoriaMetrics(_Server):
    """Single-node VictoriaMetrics; takes line protocol on ``/write`` and ``/api/v2/write``.

    What a test has to know (found against 1.79):

    - a field becomes the metric ``<measurement>_<field>`` (``-influxMeasurementFieldSeparator``),
      tags become labels; the ``db`` query arg (1.x) becomes a ``db`` label, ``bucket``/``org`` of
      the v2 API are ignored;
    - timestamps are stored in milliseconds (ns are truncated), values as float64 (integers and
      booleans too);
    - samples older than ``-retentionPeriod`` are dropped silently (accepted with 204), so the
      helper starts it with 100 years;
    - a bad line is logged and skipped, the request still gets 204; a 400 comes only for what
      stops the whole body (a line longer than ``-influx.maxLineSize``, 256 KiB; broken gzip),
      with a plain-text reason that echoes the request URI;
    - ingested rows are not searchable at once: ``/internal/force_flush`` is not enough on its
      own for new series (they showed up 0.1-0.5 s later), so :meth:`export` flushes and asks
      again until the expected number of samples is there. ``-search.latencyOffset=0`` (30 s by
      default, which hides recent samples from ``/api/v1/query``) and ``-search.disableCache``
      let :meth:`query` see fresh data too;
    - with ``-httpAuth.*`` every endpoint but ``/health`` wants Basic auth; a v2 ``Token``
      header gets 401 with an empty body.
    """

    binary = "victoria-metrics"

    def __init__(
        self, workdir: Path, *, username: str | None = None, password: str | None = None
    ) -> None:
        super().__init__(workdir)
        self.username = username
        self.password = password

    def _command(self) -> list[str]:
        args = [
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0",
            "-search.disableCache",
            "-loggerLevel=WARN",
        ]
        if self.username is not None:  # Basic auth on every endpoint but /health
            args += [f"-httpAuth.username={self.username}", f"-httpAuth.password={self.password}"]
        return args

    def _auth_headers(self) -> dict[str, str]:
        if self.username is None:
            return {}
        token = b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _healthy(self) -> bool:
        try:
            status, body = self._http("GET", "/health", timeout_s=1.0)
        except OSError:
            return False
        return status == 200 and body.strip() == b"OK"

    def flush(self) -> None:
        status, body = self._http("GET", "/internal/force_flush", headers=self._auth_headers())
        if status != 200:
            raise AssertionError(f"force_flush {status}: {body[:300]!r}")

    def export(
        self, match: str, *, min_samples: int = 1, timeout_s: float = 10.0
    ) -> list[tuple[str, dict[str, str], list[float], list[int]]]:
        """Series matching ``match`` (a series selector), sorted by name and labels.

        Each is ``(metric, labels, values, timestamps_ms)``. Flushes and asks again until
        ``min_samples`` samples are there or ``timeout_s`` has passed, then returns what it has
        (``min_samples=0``: one look, after a flush).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.flush()
            status, raw = self._http(
                "GET", "/api/v1/export", {"match[]": match}, headers=self._auth_headers()
            )
            if status != 200:
                raise AssertionError(f"export {status}: {raw[:300]!r}")
            out = []
            for line in raw.splitlines():
                doc = json.loads(line)
                labels = dict(doc["metric"])
                name = labels.pop("__name__")
                out.append((name, labels, doc["values"], doc["timestamps"]))
            if sum(len(s[2]) for s in out) >= min_samples or time.monotonic() > deadline:
                return sorted(out, key=lambda s: (s[0], sorted(s[1].items())))
            time.sleep(0.05)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant PromQL query after a flush; the ``data.result`` list."""
        self.flush()
        status, raw = self._http(
            "GET", "/api/v1/query", {"query": promql}, headers=self._auth_headers()
        )
        doc = json.loads(raw)
        if status != 200:
            raise AssertionError(f"query {status}: {doc}")
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result


__all__ = ["SYSTEM_DEPS_HINT", "InfluxDB1", "ServerStartError", "VictoriaMetrics", "free_port"]
