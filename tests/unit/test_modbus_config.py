"""Modbus device configuration: mistakes caught at load, with the field and a hint."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.modbus import ModbusConfig
from connectors.validation import validate_model


def device(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "plc-1", "type": "modbus", "host": "10.0.0.5",
        "machines": [{"name": "press-1", "unit_id": 1, "registers": [
            {"field": "pressure", "address": 100, "type": "float32"}]}],
    }  # fmt: skip
    base.update(over)
    return base


def errors(data: dict[str, Any]) -> list[str]:
    return validate_model(ModbusConfig, data, "plant.yaml").render().splitlines()


def test_a_good_device_has_no_errors() -> None:
    assert errors(device()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"port": 70000}, "plant.yaml: port: 70000: must be at most 65535 (port: TCP port)"),
        ({"word_order": "ADCB"}, "plant.yaml: word_order: 'ADCB' is not one of: ABCD, CDAB, BADC, DCBA; did you mean 'DCBA'?"),
        ({"prot": 502}, "plant.yaml: prot: unknown key (did you mean 'port'?)"),
        ({"transport": "serial"},
         "plant.yaml: transport serial needs serial_port (e.g. /dev/ttyUSB0)"),
        ({"max_registers": 200},
         "plant.yaml: max_registers: 200: must be at most 125 (max_registers: registers per request)"),
    ],
)  # fmt: skip
def test_device_mistakes(change: dict[str, Any], expected: str) -> None:
    assert errors(device(**change)) == [expected]


def test_register_mistakes_all_at_once() -> None:
    regs = [
        {"field": "a", "address": 70000, "type": "float32"},
        {"field": "b", "table": "coil", "address": 1, "type": "uint16"},
        {"field": "c", "address": 1, "type": "string"},
        {"field": "d", "address": 1, "type": "float23"},
    ]
    data = device(machines=[{"name": "m", "unit_id": 300, "registers": regs}])
    assert errors(data) == [
        "plant.yaml: machines[0].unit_id: 300: must be at most 255 (unit_id: Modbus unit id (slave id))",
        "plant.yaml: machines[0].registers[0].address: 70000: must be at most 65536 "
        "(address: register or bit address (see address_base))",
        "plant.yaml: machines[0].registers[1]: a coil holds one bit: use type: bit (not uint16)",
        "plant.yaml: machines[0].registers[2]: a string needs length: (registers, two characters each)",
        "plant.yaml: machines[0].registers[3].type: 'float23' is not one of: bit, int16, uint16, int32, "
        "uint32, int64, uint64, float32, float64, string; did you mean 'float32'?",
    ]
