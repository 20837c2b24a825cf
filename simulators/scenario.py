"""Scenario files: which machines run, with what seed and speed, and which faults when.

A scenario is a YAML file (see ``configs/scenarios/``). Times inside a scenario are *machine
time*: with ``speed: 60`` one minute of wall-clock time runs an hour of scenario. Durations are
numbers of seconds or strings such as ``90s``, ``10m``, ``1h30m``.

Loading validates everything at once and raises :class:`ConfigErrors` whose text names each bad
field, its value and a hint.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from connectors.validation import ConfigErrors, load_yaml, parse_model
from simulators.models import MODELS, PHYSICAL_FAULTS

SENSOR_FAULTS = ("spike", "stuck", "drift", "noise_burst", "sensor_failure")
MACHINE_FAULTS = ("comm_loss",)
FAULT_TYPES = PHYSICAL_FAULTS + SENSOR_FAULTS + MACHINE_FAULTS
FaultType = Literal[
    "bearing_wear", "overheating", "overload", "leak",
    "spike", "stuck", "drift", "noise_burst", "sensor_failure",
    "comm_loss",
]  # fmt: skip

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$"
)


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"1h30m"``.

    >>> parse_duration("1h30m"), parse_duration("90s"), parse_duration(2.5)
    (5400.0, 90.0, 2.5)
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90, '90s', '10m' or '1h30m'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m and any(m.groups()):
            h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            return h * 3600 + mi * 60 + s
    raise ValueError("expected a duration such as 90, '90s', '10m' or '1h30m'")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=64)]

SecurityName = Literal[
    "None",
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes256_Sha256_RsaPss_Sign",
    "Aes256_Sha256_RsaPss_SignAndEncrypt",
    "Aes128_Sha256_RsaOaep_Sign",
    "Aes128_Sha256_RsaOaep_SignAndEncrypt",
]
WordOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
DEFAULT_SECURITY: tuple[SecurityName, ...] = (
    "None",
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes256_Sha256_RsaPss_Sign",
    "Aes256_Sha256_RsaPss_SignAndEncrypt",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserSpec(_Strict):
    """An OPC UA user; the password comes from an environment variable or a file."""

    name: Name = Field(description="login name")
    password_env: str | None = Field(None, description="environment variable holding the password")
    password_file: Path | None = Field(None, description="file holding the password")


class OpcUaSpec(_Strict):
    enabled: bool = Field(True, description="serve OPC UA")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(
        4840, ge=0, le=65535, description="TCP port (4840 is the OPC UA default; 0 picks one)"
    )
    namespace: str = Field("urn:factory-agent:simulator", description="our namespace URI")
    security: list[SecurityName] = Field(
        default_factory=lambda: list(DEFAULT_SECURITY),
        description="security policies and modes offered by the endpoint",
    )
    allow_anonymous: bool = Field(True, description="accept anonymous sessions")
    users: list[UserSpec] = Field(default_factory=list, description="username/password logins")
    user_certificates: list[Path] = Field(
        default_factory=list,
        description="X.509 user certificates (DER or PEM) accepted for login; none: not offered",
    )
    certificate: Path | None = Field(None, description="server certificate (DER or PEM)")
    private_key: Path | None = Field(None, description="server private key (PEM)")
    cert_dir: Path | None = Field(
        None, description="where to generate and keep the certificate when none is given"
    )


class ModbusTlsSpec(_Strict):
    """Modbus/TCP Security: the server's certificate chain and key (PEM)."""

    certificate: Path = Field(description="server certificate (PEM)")
    private_key: Path = Field(description="server private key (PEM)")
    client_ca: Path | None = Field(None, description="require client certificates from this CA")


#: Settings only the serial transport uses (named as in the agent's ``ModbusConfig``).
SERIAL_SETTINGS = ("serial_port", "baudrate", "parity")


class ModbusSpec(_Strict):
    enabled: bool = Field(True, description="serve Modbus TCP")
    transport: Literal["tcp", "rtu_over_tcp", "serial"] = Field(
        "tcp",
        description="MBAP framing (tcp), RTU frames with CRC over TCP (rtu_over_tcp), "
        "or RTU on a serial line (serial)",
    )
    tls: ModbusTlsSpec | None = Field(None, description="serve Modbus/TCP Security instead")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(5020, ge=0, le=65535, description="TCP port (502 needs root; 0 picks one)")
    word_order: WordOrder = Field("ABCD", description="register order of 32-bit values")
    serial_port: str | None = Field(
        None, min_length=1, description="serial device to serve on (serial), e.g. /dev/ttyUSB0"
    )
    baudrate: int = Field(19200, gt=0, le=12_000_000, description="serial speed (serial)")
    parity: Literal["N", "E", "O"] = Field("E", description="serial parity (serial)")


class MachineSpec(_Strict):
    name: Name
    kind: str = Field(description="machine kind, see `factory-sim models`")
    line: Name = Field("line-1", description="production line the machine belongs to")
    unit_id: int | None = Field(None, ge=1, le=247, description="Modbus unit id; default: position")


class FaultSpec(_Strict):
    machine: str
    type: FaultType
    start: Duration = Field(description="machine time from scenario start")
    duration: Duration = Field(gt=0)
    severity: float = Field(0.6, gt=0, le=1, description="0..1, meaning depends on the fault")
    signal: str | None = Field(None, description="target signal of a sensor fault")
    detectable: bool = Field(True, description="false for faults designed to be invisible")

    @property
    def end(self) -> float:
        return self.start + self.duration


class Scenario(_Strict):
    name: Name
    description: str = ""
    site: Name = Field("plant", description="site name, the top of the OPC UA address space")
    seed: int = Field(0, description="same seed, same scenario: the same signal values")
    speed: float = Field(1.0, gt=0, le=3600, description="machine seconds per wall second")
    rate_hz: float = Field(10.0, gt=0, le=50, description="value updates per wall second")
    start: datetime | None = Field(None, description="machine time at t=0; default: now")
    duration: Duration = Field(3600.0, gt=0, description="machine time the scenario covers")
    opcua: OpcUaSpec = Field(default_factory=OpcUaSpec)  # type: ignore[arg-type]
    modbus: ModbusSpec = Field(default_factory=ModbusSpec)  # type: ignore[arg-type]
    machines: list[MachineSpec] = Field(min_length=1)
    faults: list[FaultSpec] = Field(default_factory=list)

    def unit_ids(self) -> dict[str, int]:
        """Machine name -> Modbus unit id (explicit, or the next free id in file order)."""
        taken = {m.unit_id for m in self.machines if m.unit_id is not None}
        out: dict[str, int] = {}
        nxt = 1
        for m in self.machines:
            if m.unit_id is not None:
                out[m.name] = m.unit_id
                continue
            while nxt in taken:
                nxt += 1
            out[m.name] = nxt
            taken.add(nxt)
        return out


def _one_of(value: str, what: str, choices: Sequence[str]) -> str:
    """``'x' is not <what> (one of: a, b); did you mean 'a'?``"""
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{value!r} is not {what} (one of: {', '.join(choices) or 'none'}){hint}"


def _check(
    scn: Scenario,
    errors: ConfigErrors,
    machine_index: Sequence[int] | None = None,
    fault_index: Sequence[int] | None = None,
) -> None:
    """Cross-field rules pydantic cannot express per field.

    ``machine_index``/``fault_index`` map list positions back to the file's positions when
    entries that failed field validation were left out.
    """
    mi = machine_index or range(len(scn.machines))
    fi = fault_index or range(len(scn.faults))
    seen: dict[str, int] = {}
    for j, m in enumerate(scn.machines):
        i = mi[j]
        if m.kind not in MODELS:
            errors.add(
                f"machines[{i}].kind",
                _one_of(m.kind, "a machine kind", sorted(MODELS)),
            )
        if m.name in seen:
            errors.add(
                f"machines[{i}].name", f"{m.name!r} is already used by machines[{seen[m.name]}]"
            )
        seen.setdefault(m.name, i)
    ids: dict[int, str] = {}
    for j, m in enumerate(scn.machines):
        i = mi[j]
        if m.unit_id is not None and m.unit_id in ids:
            errors.add(
                f"machines[{i}].unit_id",
                f"{m.unit_id} is already the unit id of {ids[m.unit_id]!r}",
            )
        if m.unit_id is not None:
            ids.setdefault(m.unit_id, m.name)
    if len(scn.machines) > 247 and scn.modbus.enabled:
        errors.add("machines", f"{len(scn.machines)} machines, but Modbus has only unit ids 1..247")
    serial = scn.modbus.transport == "serial"
    if (scn.opcua.enabled and scn.modbus.enabled and not serial
            and scn.opcua.port == scn.modbus.port != 0):  # fmt: skip
        errors.add(
            "modbus.port", f"{scn.modbus.port} is also opcua.port; give each protocol its own port"
        )
    _check_serial(scn, errors)
    _check_logins(scn.opcua, errors)
    for i, u in enumerate(scn.opcua.users):
        if (u.password_env is None) == (u.password_file is None):
            errors.add(f"opcua.users[{i}]", "give exactly one of password_env or password_file")
    if (scn.opcua.certificate is None) != (scn.opcua.private_key is None):
        errors.add("opcua.certificate", "give both certificate and private_key, or neither")

    by_name = {m.name: m for m in scn.machines}
    for j, f in enumerate(scn.faults):
        where = f"faults[{fi[j]}]"
        machine = by_name.get(f.machine)
        if machine is None:
            errors.add(
                f"{where}.machine", _one_of(f.machine, "a machine of this scenario", list(by_name))
            )
            continue
        if f.end > scn.duration:
            errors.add(
                f"{where}.start",
                f"the fault runs {f.start:g}..{f.end:g} s, outside the run "
                f"(duration {scn.duration:g} s); move it earlier, shorten it or lengthen the run",
            )
        model = MODELS.get(machine.kind)
        if model is None:
            continue
        signals = model.signal_names()
        if f.type in PHYSICAL_FAULTS and f.type not in model.fault_effects:
            ok = ", ".join(model.fault_effects) or "none"
            errors.add(
                f"{where}.type",
                f"a {machine.kind} machine cannot have {f.type!r} (it can have: {ok})",
            )
        if f.type in SENSOR_FAULTS:
            if f.signal is None:
                errors.add(
                    f"{where}.signal",
                    f"a {f.type} fault needs the signal it affects (one of: {', '.join(signals)})",
                )
            elif f.signal not in signals:
                errors.add(
                    f"{where}.signal",
                    _one_of(f.signal, f"a signal of {machine.kind}", signals),
                )
        elif f.signal is not None:
            errors.add(
                f"{where}.signal", f"only sensor faults ({', '.join(SENSOR_FAULTS)}) take a signal"
            )


def _check_serial(scn: Scenario, errors: ConfigErrors) -> None:
    """The serial transport's settings: present when it is chosen, absent otherwise."""
    mb = scn.modbus
    if mb.transport == "serial":
        if mb.serial_port is None:
            errors.add(
                "modbus.serial_port",
                "transport serial needs serial_port, the device to serve on "
                "(e.g. /dev/ttyUSB0, or one end of a socat pty pair)",
            )
        if mb.tls is not None:
            errors.add(
                "modbus.tls",
                "Modbus/TCP Security runs over TCP, not a serial line; remove tls or the "
                "serial transport",
            )
        return
    for name in SERIAL_SETTINGS:
        if name in mb.model_fields_set:
            errors.add(
                f"modbus.{name}",
                f"only transport serial uses {name} (transport is {mb.transport!r}); "
                f"add transport: serial or remove {name}",
            )


def _check_logins(opc: OpcUaSpec, errors: ConfigErrors) -> None:
    """Someone can log in; ``user_certificates`` are files, with a policy to sign the login."""
    if not opc.enabled:
        return
    if not (opc.allow_anonymous or opc.users or opc.user_certificates):
        errors.add(
            "opcua.users", "anonymous access is off and no user is defined: nobody could log in"
        )
    for i, cert in enumerate(opc.user_certificates):
        if not cert.is_file():
            errors.add(
                f"opcua.user_certificates[{i}]",
                f"{str(cert)!r} is not a file (give the path of a user's certificate, DER or PEM)",
            )
    if opc.user_certificates and all(name == "None" for name in opc.security):
        errors.add(
            "opcua.user_certificates",
            "a user certificate login is signed with a policy: add one other than None to"
            " opcua.security, e.g. Basic256Sha256_SignAndEncrypt",
        )


def check_scenario(scn: Scenario, source: str) -> None:
    """Apply the cross-field rules; raise :class:`ConfigErrors` listing every problem."""
    errors = ConfigErrors(source)
    _check(scn, errors)
    if errors.problems:
        raise errors


def load_scenario(path: Path | str) -> Scenario:
    """Load and validate a scenario file; raise :class:`ConfigErrors` listing every problem.

    Field errors and cross-field errors are reported together: entries that fail field
    validation are set aside and the rest is still checked.
    """
    path = Path(path)
    data = load_yaml(path)
    try:
        scn = parse_model(Scenario, data, str(path))
    except ConfigErrors as first:
        _check_remainder(data, first)
        raise first from None
    check_scenario(scn, str(path))
    return scn


def _check_remainder(data: Any, errors: ConfigErrors) -> None:
    """Run the cross-field rules on what survives field validation, adding to ``errors``."""
    if not isinstance(data, dict):
        return
    bad_top = {p.path.split(".")[0].split("[")[0] for p in errors.problems}
    bad_items = {p.path.split(".")[0] for p in errors.problems}
    clean = {k: v for k, v in data.items() if k not in bad_top or k in ("machines", "faults")}
    index: dict[str, list[int]] = {}
    for key in ("machines", "faults"):
        items = data.get(key)
        if not isinstance(items, list):
            continue
        keep = [i for i in range(len(items)) if f"{key}[{i}]" not in bad_items]
        clean[key] = [items[i] for i in keep]
        index[key] = keep
    try:
        scn = Scenario.model_validate(clean)
    except ValidationError:
        return
    _check(scn, errors, index.get("machines"), index.get("faults"))


def affected_signals(scn: Scenario, fault: FaultSpec) -> tuple[str, ...]:
    """The signals a fault perturbs: its ground-truth label."""
    kind = next(m.kind for m in scn.machines if m.name == fault.machine)
    model = MODELS[kind]
    if fault.type in SENSOR_FAULTS:
        assert fault.signal is not None
        return (fault.signal,)
    if fault.type in MACHINE_FAULTS:
        return model.signal_names()
    return model.fault_effects[fault.type]


def label_end(scn: Scenario, fault: FaultSpec) -> float:
    """When the fault's signature is gone: its end, plus the settle time for physical faults."""
    if fault.type in PHYSICAL_FAULTS:
        kind = next(m.kind for m in scn.machines if m.name == fault.machine)
        return fault.end + MODELS[kind].settle_s
    return fault.end
