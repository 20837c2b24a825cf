"""``factory-agent probe modbus`` against the Modbus simulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from tests.conftest import CONFIGS, free_port, start_sim, wait_banner

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def modbus_port() -> Iterator[int]:
    port = free_port()
    proc = start_sim(str(CONFIGS / "scenarios" / "demo.yaml"), "--modbus-port", str(port),
                     "--opcua-port", "0", "--duration", "120", "--labels", os.devnull)  # fmt: skip
    try:
        wait_banner(proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


def test_probe_shows_the_float_under_its_word_order(
    modbus_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # holding 0 is the status word: bit 0 = healthy, so ABCD uint16 reads 1.
    assert main(["probe", "modbus", f"127.0.0.1:{modbus_port}", "--unit", "1",
                 "--address", "0", "--count", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    uint16 = next(line for line in out.splitlines() if line.strip().startswith("uint16"))
    assert uint16.split()[1:] == ["1", "1", "256", "256"]
    # the CNC's spindle speed float32 at 100: plausible only under ABCD
    assert main(["probe", "modbus", f"127.0.0.1:{modbus_port}", "--address", "100"]) == 0
    out = capsys.readouterr().out
    f32 = next(line for line in out.splitlines() if line.strip().startswith("float32"))
    abcd = float(f32.split()[1])
    assert 0.0 <= abcd <= 12000.0


def test_probe_exception_is_a_clear_error(
    modbus_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", "modbus", f"127.0.0.1:{modbus_port}", "--address", "50"]) == 2
    assert "Modbus exception 2 (illegal data address)" in capsys.readouterr().err


def test_probe_bad_arguments_and_dead_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "modbus", "127.0.0.1:1", "--address", "70000"]) == 2
    assert "Modbus addresses are 0..65535" in capsys.readouterr().err
    port = free_port()
    assert main(["probe", "modbus", f"127.0.0.1:{port}", "--address", "0", "--timeout", "1"]) == 2
    assert f"cannot connect to 127.0.0.1:{port}" in capsys.readouterr().err


def test_probe_is_installed_as_a_command() -> None:
    exe = Path(sys.executable).parent / "factory-agent"
    out = subprocess.run([exe, "probe", "modbus", "--help"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "--function" in out
