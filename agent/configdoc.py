"""Generate ``configs/example.yaml`` from the configuration models themselves.

Every option appears with its default and its one-sentence description, so the example cannot
drift from the code (a test compares the file with this generator's output). Required fields
without a default get an example value from :data:`EXAMPLES`.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from agent.config import (
    AgentConfig,
    AgentSection,
    AnalyticsSection,
    HistoryConfig,
    HttpConfig,
    MonitorConfig,
    SpoolConfig,
)
from agent.sinks.influxdb import InfluxV1Config, InfluxV2Config
from connectors.modbus import ModbusConfig, ModbusMachineConfig, RegisterConfig
from connectors.opcua_config import OpcUaConfig

HEADER = """\
# factory-agent: every option, with its default and what it does.
# Generated from the code by `factory-agent example-config` (a test keeps this file current).
# Secrets never go in this file: use *_file paths or environment variables, e.g.
#   FACTORY_AGENT__SINKS__0__TOKEN=...   (environment variables override any key)
"""

#: Example values for required fields (per model and field name).
EXAMPLES: dict[tuple[str, str], Any] = {
    ("ModbusConfig", "name"): "press-shop-plc",
    ("ModbusConfig", "host"): "10.20.0.15",
    ("ModbusConfig", "type"): "modbus",
    ("ModbusMachineConfig", "name"): "press-01",
    ("RegisterConfig", "field"): "hydraulic_pressure",
    ("RegisterConfig", "address"): 100,
    ("OpcUaConfig", "name"): "line-1-opcua",
    ("OpcUaConfig", "type"): "opcua",
    ("OpcUaConfig", "endpoint"): "opc.tcp://10.20.0.21:4840",
    ("OpcUaMachineConfig", "name"): "cnc-01",
    ("OpcUaNodeConfig", "field"): "spindle_speed",
    (
        "OpcUaNodeConfig",
        "node_id",
    ): "nsu=urn:factory-agent:simulator;s=haiphong/line-1/cnc-01/spindle_speed",
    ("DiscoverConfig", "root"): "/Objects/haiphong/line-1/cnc-01",
    ("InfluxV2Config", "type"): "influxdb",
    ("InfluxV2Config", "url"): "https://influxdb.plant.example:8086",
    ("InfluxV2Config", "org"): "plant",
    ("InfluxV2Config", "bucket"): "machines",
    ("InfluxV2Config", "token_file"): "/etc/factory-agent/influx-token",
    ("InfluxV1Config", "type"): "influxdb_v1",
    ("InfluxV1Config", "url"): "http://influxdb1.plant.example:8086",
    ("InfluxV1Config", "database"): "factory",
}
#: Optional sub-sections shown only as comments (they change behaviour when present).
COMMENTED = {("ModbusConfig", "tls"), ("OpcUaMachineConfig", "discover")}


def _scalar(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "null"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        plain = value and value.replace("_", "").replace("-", "").replace(".", "").isalnum()
        return value if plain and value not in ("null", "true", "false") else json.dumps(value)
    return json.dumps(value)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _is_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list


def _emit(model: type[BaseModel], indent: str, first_prefix: str | None = None) -> list[str]:
    """YAML lines for every field of ``model``; ``first_prefix`` starts a list item."""
    lines: list[str] = []
    ordered = sorted(
        model.model_fields.items(), key=lambda kv: {"name": 0, "type": 1}.get(kv[0], 2)
    )
    for i, (name, info) in enumerate(ordered):
        prefix = first_prefix if (first_prefix is not None and i == 0) else indent
        key = (model.__name__, name)
        about = info.description or ""
        sub = _model_of(info.annotation)
        default = info.get_default(call_default_factory=True)
        comment = "# " if key in COMMENTED else ""
        if sub is not None and key not in EXAMPLES:
            head = f"{prefix}{comment}{name}:"
            lines.append(f"{head}{'  # ' + about if about else ''}")
            if _is_list(info.annotation):
                item = _emit(sub, indent + "    ", indent + "  - ")
            else:
                item = _emit(sub, indent + "  ")
            lines += [
                f"{ln[: len(indent)]}{comment}{ln[len(indent) :]}" if comment else ln for ln in item
            ]
            continue
        if key in EXAMPLES:
            value = _scalar(EXAMPLES[key])
        elif default is PydanticUndefined:
            value = "...  # required"
        elif isinstance(default, dict) and not default:
            value = "{}"
        elif isinstance(default, list):
            value = json.dumps(default)
        else:
            value = _scalar(default)
        text = f"{prefix}{comment}{name}: {value}"
        if about and "# required" not in value:
            text = f"{text:<46}  # {about}"
        lines.append(text)
    return lines


def example_config() -> str:
    out = [HEADER]
    for section, model in (("agent", AgentSection), ("spool", SpoolConfig),
                           ("history", HistoryConfig), ("http", HttpConfig),
                           ("monitor", MonitorConfig),
                           ("analytics", AnalyticsSection)):  # fmt: skip
        about = AgentConfig.model_fields[section].description
        out.append(f"{section}:{'  # ' + about if about else ''}")
        out += _emit(model, "  ")
        out.append("")
    out.append("devices:  # machines to read; generate them for the simulators with "
               "`factory-sim print-config`")  # fmt: skip
    out.append("  # --- a Modbus connection (TCP, RTU over TCP, serial RTU, TLS) ---")
    out += _emit(ModbusConfig, "    ", "  - ")
    out.append("  # --- an OPC UA endpoint ---")
    out += _emit(OpcUaConfig, "    ", "  - ")
    out.append("")
    out.append("sinks:  # where to forward; none: data stays in the local spool and history")
    out.append("  # --- InfluxDB v2 write API: InfluxDB 2.x/3.x/Cloud, 1.8+, VictoriaMetrics ---")
    out += _emit(InfluxV2Config, "    ", "  - ")
    out.append("  # --- InfluxDB 1.x /write API ---")
    out += _emit(InfluxV1Config, "    ", "  - ")
    return "\n".join(out) + "\n"


__all__ = ["ModbusMachineConfig", "RegisterConfig", "example_config"]
