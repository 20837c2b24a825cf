"""``factory-agent demo``: the main job's embedded default, end to end in one process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.history import History
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_demo_collects_every_machine_into_the_local_history(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "demo", "--duration", "8", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "device demo-opcua     up" in out.stdout and "device demo-modbus    up" in out.stdout
    collected = int(re.search(r"demo stopped: (\d+) readings collected", out.stdout).group(1))  # type: ignore[union-attr]
    assert collected >= 5 * 5  # five machines, about one reading a second each
    history = History(tmp_path / "history.db")
    for machine in ("cnc-01", "imm-01", "conveyor-01", "compressor-01", "hoist-01"):
        rows = history.query(machine, 0, 2**63 - 1)
        assert len(rows) >= 3, machine
    assert history.rows_added == 0  # reopened read-only use: nothing added by this check
    history.close()


def test_a_minute_of_demo_opens_its_fault_and_anomalies_list_finds_it(tmp_path: Path) -> None:
    """Issue 6's newcomer loop: `factory-agent demo --duration 60`, then `factory-agent
    anomalies list` from the same directory, no flags: the conveyor jam the demo scenario
    injects at 30 s of wall-clock time is listed."""
    agent = [sys.executable, "-m", "agent.cli"]
    demo = subprocess.run([*agent, "demo", "--duration", "60"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert (tmp_path / "factory-agent-data" / "journal.db").exists()  # the default data dir
    listed = subprocess.run([*agent, "anomalies", "list", "--json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    episodes = json.loads(listed.stdout)
    assert "conveyor-01" in {e["machine"] for e in episodes}, episodes
