"""``factory-agent bench`` end to end, in seconds: the table, the JSON keys, nothing lost.

Small plants and short windows: these runs check that every process starts, talks and stops,
and that what the bench reports adds up; the figures themselves are measured, not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.bench import KEYS

pytestmark = pytest.mark.integration

BENCH = [sys.executable, "-m", "agent.cli", "bench"]
SMALL = ["--machines", "3", "--signals", "4", "--duration", "2"]


def run_bench(tmp_path: Path, *args: str) -> tuple[list[str], dict[str, Any]]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [*BENCH, *SMALL, "--json", str(out), *args],
        check=False, capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines(), json.loads(out.read_text())


def check_run(lines: list[str], run: dict[str, Any], protocol: str, sink: str) -> None:
    header, row = lines[0], lines[1]
    for column in ("offered/s", "delivered/s", "CPU µs/reading", "RSS MB", "lost", "detection"):
        assert column in header
    assert row.split()[:5] == [protocol, "3", "x", "4", "="]
    assert set(KEYS) <= run.keys()
    assert run["protocol"] == protocol and run["sink"] == sink and run["signals"] == 12
    # every value the agent received is in the sink (a retried batch may land twice)
    assert run["received"] > 0 and run["delivered"] >= run["received"] and run["lost"] == 0
    assert run["delivered_per_s"] > 0 and run["offered_per_s"] > 0
    assert run["cpu_us_per_reading"] > 0 and run["rss_peak_mb"] > 20
    assert 0 < run["latency_p50_s"] <= run["latency_p99_s"] < 30
    assert run["drained"] and run["first_delivery_s"] > 0
    # the models were trained beforehand: the window is scored, and the table says so
    assert run["detection"] == "scoring (pca-t2q)" and row.endswith("scoring (pca-t2q)")


def test_modbus_into_victoriametrics(tmp_path: Path) -> None:
    lines, doc = run_bench(tmp_path, "--sink", "victoriametrics")
    (run,) = doc["runs"]
    check_run(lines, run, "modbus", "victoriametrics")
    assert doc["host"]["cores"] and doc["command"].startswith("factory-agent bench")
    assert run["latency_ms"] == 0


def test_opcua_through_a_slow_link_without_a_sink(tmp_path: Path) -> None:
    lines, doc = run_bench(
        tmp_path, "--protocol", "opcua", "--sink", "none", "--latency", "10", "--jitter", "5"
    )
    (run,) = doc["runs"]
    check_run(lines, run, "opcua", "none")
    assert (run["latency_ms"], run["jitter_ms"]) == (10, 5)
    assert "link +10 ± 5 ms each way" in "\n".join(lines)
    assert run["latency_p50_s"] > 0.01  # at least the link's delay one way


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--machines", "300"], "--machines 300: Modbus has 247 unit ids per server"),
        (["--sweep", "--machines", "3"], "--machines: --sweep sets the machines itself"),
        (["--rate", "0"], "--rate 0: must be in (0, 50] Hz"),
        (["--duration", "-1"], "--duration -1: must be positive"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run([*BENCH, *args], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("factory-agent: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""
