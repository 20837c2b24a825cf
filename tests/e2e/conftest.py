"""End-to-end helpers: a speed-1 plant in a factory-sim subprocess, agent configs, waiting."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulators.agentconfig import device_section
from simulators.scenario import Scenario
from tests.conftest import free_port, start_sim, wait_banner
from tests.conftest import wait_for as shared_wait_for
from tests.integration.conftest import start_server, victoria  # noqa: F401 (fixtures)

MACHINES = 200  # 100 conveyors + 100 compressors; Modbus unit ids 1..200
RATE_HZ = 10


def plant_scenario(port: int) -> dict[str, Any]:
    kinds = ("conveyor", "compressor")
    return {
        "name": "e2e", "site": "e2e", "seed": 5, "speed": 1, "rate_hz": RATE_HZ,
        "duration": "2h", "opcua": {"enabled": False}, "modbus": {"port": port},
        "machines": [{"name": f"m{i:03d}", "kind": kinds[i % 2], "line": f"line-{i % 4}"}
                     for i in range(MACHINES)],
    }  # fmt: skip


class Plant:
    """The simulator process and the Modbus devices section that reads it."""

    def __init__(self, scenario: dict[str, Any], proc: subprocess.Popen[str]) -> None:
        self.scenario = scenario
        self.proc = proc
        scn = Scenario.model_validate(scenario)
        self.modbus: dict[str, Any] = yaml.safe_load(device_section(scn, "modbus"))["devices"][0]

    def devices(
        self, n_devices: int, units_per_device: int, interval_s: float = 0.1
    ) -> list[dict[str, Any]]:
        """``n_devices`` Modbus connections, each reading ``units_per_device`` machines."""
        machines = self.modbus["machines"]
        assert n_devices * units_per_device <= len(machines)
        out = []
        for d in range(n_devices):
            chunk = machines[d * units_per_device : (d + 1) * units_per_device]
            out.append({**self.modbus, "name": f"plc-{d}", "interval_s": interval_s,
                        "timeout_s": 1.0, "machines": chunk})  # fmt: skip
        return out


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    """200 machines at 10 Hz, speed 1 (source time ≈ wall time), served over Modbus TCP."""
    scenario = plant_scenario(free_port())
    path = tmp_path_factory.mktemp("plant") / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    proc = start_sim(str(path))
    try:
        wait_banner(proc)
        yield Plant(scenario, proc)
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def agent_config(
    data_dir: Path, devices: list[dict[str, Any]], sink: dict[str, Any], **sections: Any
) -> dict[str, Any]:
    return {
        "agent": {"name": "e2e-agent", "data_dir": str(data_dir), "log_level": "WARNING"},
        "devices": devices,
        "sinks": [sink],
        "history": {"enabled": False},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        # these tests count every point exactly: no anomaly_score points (tested apart)
        "analytics": {"enabled": False},
        **sections,
    }


async def wait_for(cond: Callable[[], Any], timeout_s: float, step_s: float = 0.1) -> float:
    """:func:`tests.conftest.wait_for`, polling every 0.1 s (the conditions here query servers)."""
    return await shared_wait_for(cond, timeout_s, step_s)
