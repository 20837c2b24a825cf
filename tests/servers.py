"""Real InfluxDB 1.x and VictoriaMetrics servers for tests and benchmarks, on free loopback ports.

The package's :mod:`agent.benchservers` starts the Debian binary (``influxd``,
``victoria-metrics``) with its data in a private directory, waits until the port accepts
connections AND the health endpoint answers (never a bare sleep) and kills it; the children get
``PR_SET_PDEATHSIG`` so they die with the test process even when that is killed itself. This
module adds what only tests need: stop, pause, resume and restart on the same port with the same
data, users, export, databases; and it fails with :class:`ServerStartError` and
:class:`AssertionError`, with more of the server's log.

Both binaries come from ``make system-deps``; :class:`ServerStartError` says so when one is
missing.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from base64 import b64encode
from pathlib import Path

from agent.benchservers import (
    InfluxDB1Process,
    ServerError,
    ServerProcess,
    VictoriaMetricsProcess,
    free_port,
)

SYSTEM_DEPS_HINT = "run `make system-deps` (Debian packages influxdb victoria-metrics)"


class ServerStartError(ServerError):
    """The server binary is missing or the server did not come up."""


def _basic_auth(username: str, password: str) -> dict[str, str]:
    token = b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class _TestServer(ServerProcess):
    """What tests add to a server process: stop, pause, resume, restart (same port and data)."""

    install_hint = SYSTEM_DEPS_HINT
    error_type = ServerStartError
    query_error_type = AssertionError
    log_level = "warn"
    tail_lines = 30
    tail_separator = "\n"
    request_timeout_s = 10.0

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


class InfluxDB1(_TestServer, InfluxDB1Process):
    """``influxd`` 1.x with a minimal config: HTTP and RPC on loopback, everything else off.

    ``auth_enabled`` turns on ``[http] auth-enabled``; the first user is then created with
    :meth:`create_admin` (influxd allows that one unauthenticated request) and its credentials
    are used by the query helpers from then on. ``max_body_size`` sets ``[http] max-body-size``
    in bytes, which makes influxd answer 413 to larger (decompressed) write bodies.

    Quirks of 1.6: no ``/health`` (``/ping`` answers 204), ``precision`` accepts ``n``/``u``/
    ``ms``/``s`` (the long ``ns``/``us`` spellings are 1.8+), and a batch with a bad line writes
    the good lines and answers 400 ("partial write").
    """

    credentials: tuple[str, str] | None = None

    def auth_headers(self) -> dict[str, str]:
        return {} if self.credentials is None else _basic_auth(*self.credentials)

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def create_admin(self, username: str, password: str) -> None:
        """Create an admin user (the first one needs no credentials) and use it from now on."""
        self.query(f"CREATE USER \"{username}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES")
        self.credentials = (username, password)


class VictoriaMetrics(_TestServer, VictoriaMetricsProcess):
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

    def __init__(
        self, workdir: Path, *, username: str | None = None, password: str | None = None
    ) -> None:
        super().__init__(workdir)
        self.username = username
        self.password = password

    def command(self) -> list[str]:
        args = super().command()
        if self.username is not None:  # Basic auth on every endpoint but /health
            args += [f"-httpAuth.username={self.username}", f"-httpAuth.password={self.password}"]
        return args

    def auth_headers(self) -> dict[str, str]:
        if self.username is None:
            return {}
        return _basic_auth(self.username, str(self.password))  # as on the command line

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
            status, raw = self.http(
                "GET", "/api/v1/export", {"match[]": match}, headers=self.auth_headers()
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


__all__ = ["SYSTEM_DEPS_HINT", "InfluxDB1", "ServerStartError", "VictoriaMetrics", "free_port"]
