"""``factory-sim print-config``: the agent's ``devices:`` section for a scenario.

So that nobody writes the agent's configuration for the simulators by hand: endpoints, node ids
(``nsu=`` form, stable across server restarts), and the Modbus register map with types and word
order, for every signal of every machine, with site and line as tags.
"""

from __future__ import annotations

import json

from simulators.models import MODELS
from simulators.opcua_server import node_id
from simulators.registermap import RegisterMap
from simulators.scenario import ModbusSpec, OpcUaSpec, Scenario


def _q(text: str) -> str:
    """A YAML scalar: JSON quoting is valid YAML and keeps ``:``/``;``/``=`` safe."""
    return json.dumps(text, ensure_ascii=False)


def _tags(scn: Scenario, line: str) -> str:
    return f"{{site: {_q(scn.site)}, line: {_q(line)}}}"


def _opcua_login(o: OpcUaSpec) -> list[str]:
    """The login: none when anonymous is allowed, else the first user, else a certificate."""
    if o.allow_anonymous:
        return []
    if o.users:
        user = o.users[0]
        secret = (f"    password_env: {_q(user.password_env)}" if user.password_env
                  else f"    password_file: {_q(str(user.password_file))}")  # fmt: skip
        return [f"    username: {_q(user.name)}   # anonymous access is off", secret]
    return [
        "    # anonymous access is off: log in with a certificate the simulator trusts",
        *(f"    #   {path}" for path in o.user_certificates),
        "    # user_certificate: ...",
        "    # user_private_key: ...",
    ]


def opcua_devices(scn: Scenario) -> list[str]:
    o = scn.opcua
    secure = [p for p in o.security if p != "None"]
    if "None" in o.security:
        security = ["    security_policy: None", "    allow_insecure: true   # demo only"]
    else:
        policy, mode = secure[0].rsplit("_", 1)
        security = [f"    security_policy: {policy}", f"    security_mode: {mode}"]
    offered = ", ".join(o.security)
    out = [
        f"  - name: {_q(scn.name + '-opcua')}",
        "    type: opcua",
        f"    endpoint: {_q(f'opc.tcp://{o.host}:{o.port}')}",
        f"    # the simulator offers: {offered}",
        *security,
        *_opcua_login(scn.opcua),
        "    machines:",
    ]
    for m in scn.machines:
        out += [
            f"      - name: {_q(m.name)}",
            f"        tags: {_tags(scn, m.line)}",
            "        nodes:",
        ]
        for s in MODELS[m.kind].signals:
            nid = node_id(o.namespace, scn.site, m.line, m.name, s.name)
            out.append(
                f"          - {{field: {s.name}, node_id: {_q(nid)}, unit: {_q(s.unit)}, "
                f"low: {s.low:g}, high: {s.high:g}}}"
            )
    return out


def _modbus_link(mb: ModbusSpec) -> list[str]:
    """How the agent reaches the simulator: TCP (with TLS or RTU framing) or a serial line."""
    if mb.transport == "serial":
        return [
            "    transport: serial",
            f"    serial_port: {_q(str(mb.serial_port))}   # the agent's end of the line "
            "(on a socat pty pair: the other end)",
            f"    baudrate: {mb.baudrate}",
            f"    parity: {mb.parity}",
        ]
    out = [f"    host: {_q(mb.host)}", f"    port: {mb.port}"]
    if mb.transport == "rtu_over_tcp":
        out.append("    transport: rtu_over_tcp")
    if mb.tls is not None:
        out += [
            "    tls:",
            f"      ca_file: {_q(str(mb.tls.certificate))}   # the CA that signed the server's "
            "certificate (this file if it is self-signed)",
        ]
        if mb.tls.client_ca is not None:
            out.append("      # the server wants a client certificate: add cert_file and key_file")
    return out


def modbus_devices(scn: Scenario) -> list[str]:
    mb = scn.modbus
    units = scn.unit_ids()
    out = [f"  - name: {_q(scn.name + '-modbus')}", "    type: modbus", *_modbus_link(mb)]
    out += [
        f"    word_order: {mb.word_order}   # float32 values, {mb.word_order} (see README)",
        "    address_base: 0",
        "    machines:",
    ]
    for m in scn.machines:
        rmap = RegisterMap.for_model(MODELS[m.kind], mb.word_order)
        out += [
            f"      - name: {_q(m.name)}",
            f"        unit_id: {units[m.name]}",
            f"        tags: {_tags(scn, m.line)}",
            "        registers:",
        ]
        for s in MODELS[m.kind].signals:
            e = rmap.entry(s.name, "holding")
            out.append(
                f"          - {{field: {s.name}, table: holding, address: {e.address}, "
                f"type: {e.type}, unit: {_q(s.unit)}, low: {s.low:g}, high: {s.high:g}}}"
            )
    return out


def device_section(scn: Scenario, protocols: str = "both") -> str:
    """YAML text of the ``devices:`` list that reads every signal of ``scn``."""
    head = [
        f"# Devices for simulator scenario {scn.name!r}: paste under the agent configuration.",
        f"# Generated by: factory-sim print-config (site {scn.site!r}, "
        f"{len(scn.machines)} machines).",
        "devices:",
    ]
    body: list[str] = []
    if protocols in ("opcua", "both") and scn.opcua.enabled:
        body += opcua_devices(scn)
    if protocols in ("modbus", "both") and scn.modbus.enabled:
        body += modbus_devices(scn)
    return "\n".join(head + body) + "\n"
