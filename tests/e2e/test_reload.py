"""SIGHUP reloads the configuration without losing what the spool holds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CONFIGS, ROOT, free_port, start_sim, wait_banner
from tests.servers import InfluxDB1

pytestmark = pytest.mark.e2e


@pytest.fixture
def sim() -> Iterator[int]:
    port = free_port()
    proc = start_sim(str(CONFIGS / "scenarios" / "demo.yaml"), "--speed", "1", "--modbus-port",
                     str(port), "--opcua-port", "0", "--duration", "300",
                     "--labels", os.devnull)  # fmt: skip
    try:
        wait_banner(proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^factory_agent_{name}{{[^}}]*}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else -1.0


def wait(cond: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout_s} s")


def test_sighup_reloads_and_keeps_the_spool(
    sim: int, start_server: Callable[..., Any], tmp_path: Path
) -> None:
    influx = start_server(InfluxDB1)
    influx.create_database("factory")
    influx.stop()  # the uplink is down: everything stays in the spool
    http = free_port()
    doc = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    doc["devices"] = [d for d in doc["devices"] if d["type"] == "modbus"]
    doc["devices"][0].update(port=sim, interval_s=1.0)
    doc["sinks"] = [{"name": "influx1", "type": "influxdb_v1", "url": influx.url,
                     "database": "factory"}]  # fmt: skip
    doc["http"] = {"listen": f"127.0.0.1:{http}"}
    doc["monitor"] = {"interval_s": 3600}
    doc["history"] = {"enabled": False}
    # anomaly_score points would also count as spooled: only machine readings here
    doc["analytics"] = {"enabled": False}
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(cfg),
                             "--data-dir", str(tmp_path / "data")], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait(lambda: metric(http, "sink_spool_points") >= 10, 30)
        # a reload into a config whose secret file cannot be read is refused: the agent goes
        # on as it was (it stopped its devices for the reload before, and died)
        sink = {**doc["sinks"][0], "username": "agent", "password_file": str(tmp_path / "nope")}
        bad = {**doc, "sinks": [sink]}
        cfg.write_text(yaml.safe_dump(bad))
        spooled = metric(http, "points_spooled_total")
        proc.send_signal(signal.SIGHUP)
        wait(lambda: metric(http, "points_spooled_total") >= spooled + 3, 20)
        assert proc.poll() is None
        doc["devices"][0]["interval_s"] = 0.2  # a change the reload must apply
        cfg.write_text(yaml.safe_dump(doc))
        before = metric(http, "sink_spool_points")
        spooled = metric(http, "points_spooled_total")
        proc.send_signal(signal.SIGHUP)
        # counters continue across the reload; at 0.2 s, 20 more points come within seconds
        wait(lambda: metric(http, "points_spooled_total") >= spooled + 20, 20)
        assert metric(http, "sink_spool_points") >= before  # nothing of the spool was lost
        assert proc.poll() is None
        influx.restart()
        wait(lambda: metric(http, "sink_spool_points") == 0, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "config_reloaded" in err
    refused = [json.loads(line) for line in err.splitlines() if "config_reload_failed" in line]
    assert len(refused) == 1
    assert refused[0]["errors"] == (
        f"sink influx1: cannot read password_file {tmp_path / 'nope'}: No such file or "
        "directory (create the file or fix password_file)"
    )
    # compressor-01 and hoist-01 both have motor_current: every point spooled before the reload,
    # and at least the 20 spooled after it, are there
    rows = influx.query("SELECT count(motor_current) FROM machine", "factory")
    assert rows
    assert rows[0]["count"] >= before + 20
