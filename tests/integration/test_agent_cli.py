"""``factory-agent run`` as a plant engineer uses it: --once, SIGTERM, secrets kept secret."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import CONFIGS, ROOT, free_port, start_sim, wait_banner

pytestmark = pytest.mark.integration

AGENT = [sys.executable, "-m", "agent.cli"]
SECRET = "planted-Secret-7f3a9c"  # noqa: S105 (a marker searched for in all output)


@pytest.fixture(scope="module")
def sim_ports() -> Iterator[tuple[int, int]]:
    opc, mb = free_port(), free_port()
    proc = start_sim(str(CONFIGS / "scenarios" / "demo.yaml"), "--opcua-port", str(opc),
                     "--modbus-port", str(mb), "--speed", "1", "--duration", "300",
                     "--labels", os.devnull)  # fmt: skip
    try:
        wait_banner(proc)
        yield opc, mb
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


def agent_config(tmp_path: Path, ports: tuple[int, int], **extra: object) -> Path:
    cfg = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    for dev in cfg["devices"]:
        if dev["type"] == "opcua":
            dev["endpoint"] = f"opc.tcp://127.0.0.1:{ports[0]}"
        else:
            dev["port"] = ports[1]
    cfg.update(extra)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_once_prints_one_line_per_machine(sim_ports: tuple[int, int], tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, sim_ports)
    out = subprocess.run([*AGENT, "run", "-c", str(cfg), "--once", "--data-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5
    machines = sorted(line.split("machine=")[1].split(",")[0] for line in lines)
    assert machines == ["cnc-01", "compressor-01", "conveyor-01", "hoist-01", "imm-01"]
    cnc = next(line for line in lines if "machine=cnc-01" in line)
    assert cnc.startswith("machine,") and "protocol=opcua" in cnc and "site=haiphong" in cnc
    assert " spindle_speed=" in cnc or ",spindle_speed=" in cnc
    assert abs(int(cnc.rsplit(" ", 1)[1]) - time.time_ns()) < 60e9  # source time, speed 1


def test_secrets_never_appear_in_logs_metrics_or_health(
    sim_ports: tuple[int, int], tmp_path: Path
) -> None:
    http = free_port()
    dead = free_port()  # nothing listens: the sink fails and reports why
    sinks = [{"name": "central", "type": "influxdb", "url": f"http://127.0.0.1:{dead}",
              "org": "plant", "bucket": "machines"}]  # fmt: skip
    cfg = agent_config(tmp_path, sim_ports, sinks=sinks,
                       http={"listen": f"127.0.0.1:{http}"}, monitor={"interval_s": 1})  # fmt: skip
    env = {**os.environ, "FACTORY_AGENT__SINKS__0__TOKEN": SECRET, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*AGENT, "run", "-c", str(cfg), "--data-dir", str(tmp_path)],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        health = metrics = ""
        while time.monotonic() < deadline:
            try:
                metrics = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics").read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz")
            except urllib.error.HTTPError as exc:  # 503: degraded, as it must be
                health = exc.read().decode()
            if "factory_agent_sink_failed_writes" in metrics and "failing" in health:
                break
            time.sleep(0.5)
        assert json.loads(health)["status"] == "degraded"
        assert "sink central failing" in health
    finally:
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert time.monotonic() - t0 < 5.0  # SIGTERM stops within 5 s
    for text in (out, err, metrics, health):
        assert SECRET not in text
    assert "sink_write_failed" in err or "central" in err  # it did log the failure, without it


def test_check_reports_each_device_and_sink(sim_ports: tuple[int, int], tmp_path: Path) -> None:
    dead = free_port()
    sinks = [{"name": "nowhere", "type": "influxdb_v1", "url": f"http://127.0.0.1:{dead}",
              "database": "factory"}]  # fmt: skip
    cfg = agent_config(tmp_path, sim_ports, sinks=sinks)
    out = subprocess.run([*AGENT, "check", "-c", str(cfg), "--timeout", "5",
                          "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 2  # a sink is unreachable
    lines = out.stdout.splitlines()
    opc = next(line for line in lines if "device demo-opcua" in line)
    mb = next(line for line in lines if "device demo-modbus" in line)
    sink = next(line for line in lines if "sink nowhere" in line)
    assert opc.startswith("ok") and "3/3 machines" in opc
    assert mb.startswith("ok") and "2/2 machines" in mb and "round trip" in mb
    assert sink.startswith("FAIL") and f"127.0.0.1:{dead}" in sink


def test_an_unreadable_secret_file_is_named_not_a_traceback(
    sim_ports: tuple[int, int], tmp_path: Path
) -> None:
    """A token_file that cannot be read (a typo, or a systemd credential outside its service):
    run exits 2 naming the sink, the file and the fix; check reports that sink as failing."""
    missing = "/run/credentials/factory-agent.service/influx-token"
    sinks = [{"name": "uplink", "type": "influxdb", "url": f"http://127.0.0.1:{free_port()}",
              "org": "plant", "bucket": "machines", "token_file": missing}]  # fmt: skip
    cfg = agent_config(tmp_path, sim_ports, sinks=sinks)
    run = subprocess.run([*AGENT, "run", "-c", str(cfg), "--data-dir", str(tmp_path / "data")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)  # fmt: skip
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"factory-agent: {cfg}: sink uplink: cannot read token_file {missing}: No such file or "
        "directory (a systemd credential exists only inside its service: elsewhere, point "
        "token_file at the file itself)"
    )
    check = subprocess.run([*AGENT, "check", "-c", str(cfg), "--timeout", "5",
                            "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
    assert check.returncode == 2 and "Traceback" not in check.stderr
    sink = next(line for line in check.stdout.splitlines() if "sink uplink" in line)
    assert sink.startswith("FAIL") and f"cannot read token_file {missing}" in sink
    assert "sink uplink: cannot" not in sink  # named once, in its column
