"""``factory-agent retrain``: a model refit on the history, minus the journal's anomalies.

Episodes acknowledged as false alarms are normal running and stay in the training window;
every other episode is cut out; an episode still open inside the window refuses the retrain.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main
from agent.history import History
from agent.journal import Journal
from analytics.types import Episode
from connectors.types import Reading
from tests.conftest import CONFIGS

pytestmark = pytest.mark.integration

MACHINE = "compressor-01"
T0 = 1_767_592_800 * 10**9
STEP = 10**8  # configs/demo.yaml scores every 0.1 s
NORMAL = {"discharge_pressure": 7.0, "air_flow": 9.0, "power": 50.0, "motor_current": 80.0,
          "oil_temperature": 80.0, "discharge_temperature": 90.0, "bearing_temperature": 85.0,
          "vibration_rms": 2.0}  # fmt: skip


def fill_history(path: Path, rows: int) -> None:
    rng = np.random.default_rng(3)
    h = History(path)
    h.add(
        Reading(MACHINE, T0 + i * STEP,
                {k: float(v * (1 + 0.01 * rng.standard_normal())) for k, v in NORMAL.items()})
        for i in range(rows)
    )  # fmt: skip
    h.close()


def episode(start_step: int, end_step: int | None) -> Episode:
    end = None if end_step is None else T0 + end_step * STEP
    return Episode(MACHINE, T0 + start_step * STEP, "pca-t2q", "v1", 3.0, T0, end_ns=end)


def retrain(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["retrain", "-c", str(CONFIGS / "demo.yaml"), "--data-dir", str(tmp_path),
                 "--machine", MACHINE, *extra])  # fmt: skip
    out = capsys.readouterr()
    return code, out.out + out.err


def test_false_alarms_stay_in_the_training_data_confirmed_faults_do_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_history(tmp_path / "history.db", 600)
    with Journal(tmp_path / "journal.db") as j:
        fault, false_alarm = episode(100, 199), episode(300, 399)
        j.record(fault)
        j.record(false_alarm)
        j.acknowledge(fault.id, by="ana", verdict="confirmed", note="valve replaced")
        j.acknowledge(false_alarm.id, by="ana", verdict="false-alarm", note="test run")

    code, out = retrain(tmp_path, capsys)
    assert code == 0, out
    assert "500 readings, 1 anomaly windows left out" in out  # 600 minus the fault's 100
    meta = json.loads((tmp_path / "models" / f"{MACHINE}.json").read_text())
    assert meta["rows"] >= 450  # the steps of 500 readings (smoothing may drop a few)

    # acknowledged the other way round, the false alarm's window is the one left out, and
    # the previous model is kept beside the new one
    with Journal(tmp_path / "journal.db") as j:
        j.acknowledge(fault.id, by="bo", verdict="false-alarm")
        j.acknowledge(false_alarm.id, by="bo", verdict="confirmed")
    code, out = retrain(tmp_path, capsys)
    assert code == 0 and "500 readings, 1 anomaly windows left out" in out
    assert (tmp_path / "models" / f"{MACHINE}.prev.pkl").exists()
    with Journal(tmp_path / "journal.db") as j:  # both false alarms: nothing is left out
        j.acknowledge(false_alarm.id, by="bo", verdict="false-alarm")
    code, out = retrain(tmp_path, capsys)
    assert code == 0 and "600 readings)" in out


def test_an_open_episode_in_the_window_refuses_and_says_how_to_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_history(tmp_path / "history.db", 400)
    with Journal(tmp_path / "journal.db") as j:
        j.record(episode(300, None))
    code, out = retrain(tmp_path, capsys)
    assert code == 2
    assert "is still open inside the window" in out and "--to before it" in out
    assert "Traceback" not in out
    code, out = retrain(tmp_path, capsys, "--to", "2026-01-05T06:00:25Z")  # before step 300
    assert code == 0, out
    assert "251 readings" in out  # steps 0..250, both bounds included


def test_too_little_normal_running_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_history(tmp_path / "history.db", 100)
    code, out = retrain(tmp_path, capsys)
    assert code == 2 and "analytics.warmup_rows needs 200: widen --from/--to" in out
    code, out = retrain(tmp_path, capsys, "--machine", "nope")
    assert code == 2
