"""``factory-agent browse`` against the OPC UA simulator."""

from __future__ import annotations

import os
import signal

import pytest

from agent.cli import main
from tests.conftest import CONFIGS, free_port, start_sim, wait_banner

pytestmark = pytest.mark.integration


def test_browse_prints_ids_paths_types_and_units(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    proc = start_sim(str(CONFIGS / "scenarios" / "demo.yaml"), "--opcua-port", str(port),
                     "--modbus-port", "0", "--duration", "60", "--labels", os.devnull)  # fmt: skip
    try:
        wait_banner(proc)
        assert main(["browse", f"opc.tcp://127.0.0.1:{port}", "--depth", "5"]) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["node_id", "browse_path", "node_class", "data_type", "unit"]
    by_path = {r[1]: r for r in rows[1:]}
    speed = by_path["/Objects/haiphong/line-1/cnc-01/spindle_speed"]
    assert speed == [
        "nsu=urn:factory-agent:simulator;s=haiphong/line-1/cnc-01/spindle_speed",
        "/Objects/haiphong/line-1/cnc-01/spindle_speed", "Variable", "Double", "rpm",
    ]  # fmt: skip


def test_browse_unreachable_endpoint_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["browse", f"opc.tcp://127.0.0.1:{port}", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err
