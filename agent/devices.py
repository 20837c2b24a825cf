"""The explicit connector factory: one config ``type`` → one connector class (no registration)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from connectors.base import Connector
from connectors.modbus import ModbusConfig, ModbusConnector
from connectors.opcua import OpcUaConnector
from connectors.opcua import configured_signals as opcua_signals
from connectors.opcua_config import OpcUaConfig
from connectors.types import SignalInfo

if TYPE_CHECKING:
    from agent.config import AgentConfig


def build_connector(config: ModbusConfig | OpcUaConfig, data_dir: Path) -> Connector:
    """A connector for one device entry; relative OPC UA pki paths live in the data dir."""
    if isinstance(config, ModbusConfig):
        return ModbusConnector(config)
    if not config.pki_dir.is_absolute():
        config = config.model_copy(update={"pki_dir": data_dir / config.pki_dir})
    return OpcUaConnector(config)


def configured_signals(cfg: AgentConfig) -> dict[str, dict[str, SignalInfo]]:
    """Unit and range of every configured field, by machine, in configuration order."""
    out: dict[str, dict[str, SignalInfo]] = {}
    for device in cfg.devices:
        if isinstance(device, ModbusConfig):
            for m in device.machines:
                out[m.name] = {
                    r.field: SignalInfo(r.field, r.unit, _nan(r.low), _nan(r.high))
                    for r in m.registers
                }
        else:
            out.update(opcua_signals(device))
    return out


def _nan(v: float | None) -> float:
    return math.nan if v is None else v
