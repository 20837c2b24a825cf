"""The explicit connector factory: one config ``type`` → one connector class (no registration)."""

from __future__ import annotations

from pathlib import Path

from connectors.base import Connector
from connectors.modbus import ModbusConfig, ModbusConnector
from connectors.opcua import OpcUaConnector
from connectors.opcua_config import OpcUaConfig


def build_connector(config: ModbusConfig | OpcUaConfig, data_dir: Path) -> Connector:
    """A connector for one device entry; relative OPC UA pki paths live in the data dir."""
    if isinstance(config, ModbusConfig):
        return ModbusConnector(config)
    if not config.pki_dir.is_absolute():
        config = config.model_copy(update={"pki_dir": data_dir / config.pki_dir})
    return OpcUaConnector(config)
