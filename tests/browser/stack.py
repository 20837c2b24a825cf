"""A small plant with a fault, watched by a real agent, and a headless Chromium to look at it.

Shared by the browser tests and ``scripts/screenshots.py``. :class:`Stack` starts, each as its
own process on free loopback ports: InfluxDB 1.x (tests/servers.py), the simulator serving one
CNC over OPC UA at 50× real time with a spindle bearing that starts to wear after the agent's
warm-up, and ``factory-agent run`` reading it with local detection, the local history and the
InfluxDB sink. :func:`chromium` drives Debian's ``/usr/bin/chromium`` through its
``/usr/bin/chromedriver``; selenium-manager is never asked for anything (nothing is downloaded).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from agent.journal import Journal, StoredEpisode
from simulators.agentconfig import device_section
from simulators.scenario import Scenario
from tests.conftest import ROOT, free_port, start_sim, wait_banner
from tests.servers import InfluxDB1

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SPEED = 100  # machine seconds per wall-clock second
RATE_HZ = 50  # updates per wall-clock second (the simulator's most): one per 2 machine seconds
WARMUP_S = 1800  # machine time of normal running the model learns from (18 s of wall clock)
FAULT_AT_S = WARMUP_S + 120
DATABASE = "factory"


def scenario(opcua_port: int, *, plant: bool = False) -> dict[str, Any]:
    """One CNC whose bearing wears; ``plant``: and a conveyor that jams (for screenshots)."""
    machines = [{"name": "cnc-01", "kind": "cnc", "line": "line-1"}]
    faults = [{"machine": "cnc-01", "type": "bearing_wear", "start": f"{FAULT_AT_S}s",
               "duration": "1h", "severity": 0.9}]  # fmt: skip
    if plant:
        machines.append({"name": "conveyor-01", "kind": "conveyor", "line": "line-2"})
        faults.append({"machine": "conveyor-01", "type": "overload",
                       "start": f"{FAULT_AT_S + 300}s", "duration": "6m", "severity": 0.7})  # fmt: skip
    return {
        "name": "review", "site": "e2e", "seed": 3, "speed": SPEED, "rate_hz": RATE_HZ,
        "duration": "3h", "modbus": {"enabled": False}, "opcua": {"port": opcua_port},
        "machines": machines, "faults": faults,
    }  # fmt: skip


class Stack:
    """InfluxDB, simulator and agent; :meth:`start`, then :meth:`stop` (always)."""

    def __init__(self, workdir: Path, *, plant: bool = False) -> None:
        self.workdir = workdir
        self.plant = plant
        self.data_dir = workdir / "agent-data"
        self.influx = InfluxDB1(workdir / "influxdb")
        self.http_port = free_port()
        self.sim: subprocess.Popen[str] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log = workdir / "agent.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.influx.start()
        self.influx.create_database(DATABASE)
        scn = scenario(free_port(), plant=self.plant)
        path = self.workdir / "scenario.yaml"
        path.write_text(yaml.safe_dump(scn))
        self.sim = start_sim(str(path))
        wait_banner(self.sim)
        devices = yaml.safe_load(device_section(Scenario.model_validate(scn), "opcua"))
        devices["devices"][0]["interval_s"] = 1 / RATE_HZ
        cfg = {
            "agent": {"name": "line-1-agent", "data_dir": str(self.data_dir),
                      "log_level": "WARNING"},
            **devices,
            "sinks": [{"name": "plant-influx", "type": "influxdb_v1", "url": self.influx.url,
                       "database": DATABASE}],
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "monitor": {"interval_s": 2},
            # relearning off: the bearing starts wearing right after the warm-up, and a refit
            # there learns part of the wear (the delay is the price relearning pays, README)
            "analytics": {"step_s": SPEED / RATE_HZ, "warmup_s": WARMUP_S, "warmup_rows": 600,
                          "relearn_factor": 1},
        }  # fmt: skip
        cfg_path = self.workdir / "agent.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        with self.agent_log.open("ab") as log:
            self.agent = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "-c", str(cfg_path)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        self._wait(lambda: self._status("/healthz") in (200, 503), 30, "the agent's /healthz")

    def _status(self, path: str) -> int | None:
        try:  # S310: always http://127.0.0.1:<our port>
            with urllib.request.urlopen(self.url + path, timeout=2) as r:  # noqa: S310
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def _wait(self, cond: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if self.agent is not None and self.agent.poll() is not None:
                raise AssertionError(f"the agent exited ({self.agent.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s} s\n{self.log()}")
            time.sleep(0.2)

    def journal(self) -> Journal:
        return Journal(self.data_dir / "journal.db")

    def wait_episode(self, timeout_s: float = 60.0, machine: str = "cnc-01") -> StoredEpisode:
        """The first episode of ``machine`` the agent journals (waits for it)."""
        found: list[StoredEpisode] = []

        def any_episode() -> bool:
            if not (self.data_dir / "journal.db").exists():
                return False
            with self.journal() as j:
                found[:] = j.list(machine=machine)
            return bool(found)

        self._wait(any_episode, timeout_s, f"an anomaly episode of {machine} in the journal")
        return found[-1]  # the oldest: the fault's onset

    def log(self) -> str:
        try:
            return "\n".join(self.agent_log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.agent is not None:
            if self.agent.poll() is None:
                self.agent.send_signal(signal.SIGTERM)
                try:
                    self.agent.wait(15)
                except subprocess.TimeoutExpired:
                    self.agent.kill()
                    self.agent.wait()
            self.agent = None
        if self.sim is not None:
            self.sim.kill()
            self.sim.wait()
            for stream in (self.sim.stdout, self.sim.stderr):
                if stream is not None:
                    stream.close()
            self.sim = None
        self.influx.kill()


def chromium(profile_dir: Path, width: int = 1280, height: int = 800) -> Any:
    """A headless Chromium (selenium WebDriver) at ``width``×``height`` CSS pixels."""
    from selenium import webdriver  # imported here: only the browser tests need selenium
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--hide-scrollbars",
                f"--user-data-dir={profile_dir}", f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    # --window-size includes the (invisible) window frame: set the page's viewport exactly
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1,
                            "mobile": False})  # fmt: skip
    return driver
