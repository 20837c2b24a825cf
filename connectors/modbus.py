"""Modbus connector (pymodbus): TCP, RTU over TCP, serial RTU, and Modbus/TCP Security (TLS).

It only reads (function codes 1-4): the agent monitors, it never writes to a machine. Tags of the
same unit and table are merged into as few requests as possible (:mod:`connectors.planner`), raw
registers are decoded with :mod:`connectors.codec`, and every request has a timeout.

Failure handling, from the plant floor's usual complaints:

- a Modbus exception marks the fields of that request bad with the exception code, the others
  of the same machine are still delivered;
- a unit that keeps failing (``put_aside_after`` failed polls in a row) is put aside for
  ``put_aside_s`` so the other units on the same connection keep their cadence, then retried;
- a lost connection is reopened by this connector alone, with capped, jittered backoff; the
  device going down and coming back is logged once each, and missed polls are counted.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import termios
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymodbus.client import (
    AsyncModbusSerialClient,
    AsyncModbusTcpClient,
    AsyncModbusTlsClient,
)
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from connectors import modbus_pdu
from connectors.base import DeviceConfig, Ticker
from connectors.codec import Codec, RegisterType, WordOrder
from connectors.health import Backoff, DeviceHealth
from connectors.planner import Request, Table, Tag, plan
from connectors.types import FieldValue, Quality, Reading, SignalInfo

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisterConfig(_Strict):
    """One value of a machine: where it is, how to decode it, what to call it."""

    field: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="field name in InfluxDB")
    table: Table = Field(
        "holding", description="holding (FC3), input (FC4), coil (FC1), discrete (FC2)"
    )
    address: int = Field(ge=0, le=65536, description="register or bit address (see address_base)")
    type: RegisterType = Field("uint16", description="value type; coils and discrete inputs: bit")
    order: WordOrder | None = Field(None, description="byte/word order; default: the device's")
    length: int | None = Field(None, ge=1, le=125, description="registers of a string")
    scale: float = Field(1.0, description="value = raw * scale + offset")
    offset: float = Field(0.0, description="value = raw * scale + offset")
    unit: str = Field("", description="engineering unit, for people and dashboards")
    low: float | None = Field(None, description="normal range, low end (for the analytics)")
    high: float | None = Field(None, description="normal range, high end (for the analytics)")

    @model_validator(mode="after")
    def _fits(self) -> RegisterConfig:
        if self.table in ("coil", "discrete") and self.type != "bit":
            raise ValueError(f"a {self.table} holds one bit: use type: bit (not {self.type})")
        if self.type == "string" and self.length is None:
            raise ValueError("a string needs length: (registers, two characters each)")
        return self


class ModbusMachineConfig(_Strict):
    name: str = Field(description="machine name (InfluxDB tag machine)")
    unit_id: int = Field(1, ge=0, le=255, description="Modbus unit id (slave id)")
    tags: dict[str, str] = Field(default_factory=dict, description="extra InfluxDB tags")
    registers: list[RegisterConfig] = Field(min_length=1)


class TlsConfig(_Strict):
    ca_file: Path = Field(description="CA that signed the server's certificate")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="client private key")
    server_hostname: str | None = Field(None, description="name to verify; default: host")


class ModbusConfig(DeviceConfig):
    """A Modbus connection: one TCP endpoint (or serial line) with one or more unit ids."""

    type: Literal["modbus"]
    transport: Literal["tcp", "rtu_over_tcp", "serial"] = Field("tcp", description="framing")
    host: str | None = Field(None, description="TCP host (tcp, rtu_over_tcp)")
    port: int = Field(502, ge=1, le=65535, description="TCP port")
    serial_port: str | None = Field(None, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(19200, gt=0, le=12_000_000, description="serial speed (bits/s)")
    parity: Literal["N", "E", "O"] = Field("E", description="serial parity")
    tls: TlsConfig | None = Field(None, description="Modbus/TCP Security (port 802)")
    word_order: WordOrder = Field("ABCD", description="default byte/word order of the device")
    address_base: Literal[0, 1] = Field(0, description="1 when the manual counts from 1")
    retries: int = Field(0, ge=0, le=5, description="retries of a timed-out request")
    max_gap: int = Field(16, ge=0, le=124, description="unused registers worth reading across")
    max_registers: int = Field(125, ge=1, le=125, description="registers per request")
    max_bits: int = Field(2000, ge=1, le=2000, description="bits per request")
    put_aside_after: int = Field(3, ge=1, description="failed polls before a unit is put aside")
    put_aside_s: float = Field(30.0, ge=0, description="how long a failing unit is skipped")
    machines: list[ModbusMachineConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _endpoint(self) -> ModbusConfig:
        if self.transport == "serial" and not self.serial_port:
            raise ValueError("transport serial needs serial_port (e.g. /dev/ttyUSB0)")
        if self.transport != "serial" and not self.host:
            raise ValueError(f"transport {self.transport} needs host")
        return self


@dataclass
class _Field:
    name: str
    machine: int
    codec: Codec
    scale: float
    offset: float


@dataclass(slots=True)
class _Run:
    """Fields of one machine back to back in one request, of one numeric type and order,
    unscaled: decoded with one ``decode_many`` (two struct calls) and stored with one
    ``dict.update``, instead of one ``decode`` and checks per field."""

    offset: int
    codec: Codec
    fields: list[_Field]
    names: list[str]

    @property
    def machine(self) -> int:
        return self.fields[0].machine


def _runs(req: Request, fields: dict[str, _Field]) -> list[_Run | tuple[Tag, int]]:
    """A request's tags in order, runs of them merged (the fast path); the rest one by one."""
    out: list[_Run | tuple[Tag, int]] = []
    run: _Run | None = None
    for tag, off in req.tags:
        f = fields[tag.field]
        c = f.codec
        if c.type in ("bit", "string") or f.scale != 1.0 or f.offset or tag.count != c.count:
            out.append((tag, off))
            run = None
            continue
        if (run is not None and (c.type, c.order) == (run.codec.type, run.codec.order)
                and off == run.offset + len(run.fields) * c.count
                and f.machine == run.machine):  # fmt: skip
            run.fields.append(f)
            run.names.append(f.name)
            continue
        run = _Run(off, c, [f], [f.name])
        out.append(run)
    return out


@dataclass
class _Unit:
    unit_id: int
    failures: int = 0
    aside_until: float = 0.0
    requests: list[Request] = field(default_factory=list)


def exception_quality(code: int) -> Quality:
    return Quality.bad(code, f"modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")


TIMEOUT = Quality.bad(0, "timeout")
#: Polls in a row in which no unit answered before the connection is closed and reopened.
_LINK_FAILURES_BEFORE_REOPEN = 2
NOT_A_NUMBER = Quality.bad(0, "NaN")
_INFINITE = (math.inf, -math.inf)
_FLOATS = frozenset({"float32", "float64"})


class ModbusConnector:
    """Polls one Modbus connection every ``interval_s`` and yields one Reading per machine."""

    def __init__(self, config: ModbusConfig) -> None:
        self.config = config
        self.health = DeviceHealth(config.name)
        self.backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._client: Any = None
        self._closed = asyncio.Event()
        self._link_failures = 0
        self._open_error = ""  # why the last open failed, when pymodbus does not swallow it
        #: unit and normal range of every field, by machine (NaN where no range is given)
        self.signals = {
            m.name: {r.field: SignalInfo(r.field, r.unit, math.nan if r.low is None else r.low,
                                         math.nan if r.high is None else r.high)
                     for r in m.registers}
            for m in config.machines
        }  # fmt: skip
        base = config.address_base
        tags: list[Tag] = []
        self._fields: dict[str, _Field] = {}
        for mi, m in enumerate(config.machines):
            for r in m.registers:
                key = f"{mi}/{r.field}"
                codec = Codec(r.type, r.order or config.word_order, r.length)
                tags.append(Tag(key, m.unit_id, r.table, r.address - base, codec.count))
                self._fields[key] = _Field(r.field, mi, codec, r.scale, r.offset)
        units: dict[int, _Unit] = {}
        #: per request (by id: requests live as long as the connector), its decoding plan
        self._decoding: dict[int, list[_Run | tuple[Tag, int]]] = {}
        for req in plan(tags, config.max_gap, config.max_registers, config.max_bits):
            units.setdefault(req.unit_id, _Unit(req.unit_id)).requests.append(req)
            self._decoding[id(req)] = _runs(req, self._fields)
        self._units = list(units.values())

    @property
    def request_count(self) -> int:
        return sum(len(u.requests) for u in self._units)

    # -- connection ----------------------------------------------------------------------------
    def _make_client(self) -> Any:
        c = self.config
        common: dict[str, Any] = {
            "timeout": c.timeout_s,
            "retries": c.retries,
            "reconnect_delay": 0,
        }
        if c.transport == "serial":
            return AsyncModbusSerialClient(
                c.serial_port or "", framer=FramerType.RTU, baudrate=c.baudrate, parity=c.parity,
                **common,
            )  # fmt: skip
        if c.tls is not None:
            ctx = ssl.create_default_context(cafile=str(c.tls.ca_file))
            if c.tls.cert_file:
                ctx.load_cert_chain(str(c.tls.cert_file), c.tls.key_file and str(c.tls.key_file))
            return AsyncModbusTlsClient(c.host or "", port=c.port, sslctx=ctx, **common)
        framer = FramerType.RTU if c.transport == "rtu_over_tcp" else FramerType.SOCKET
        return AsyncModbusTcpClient(c.host or "", port=c.port, framer=framer, **common)

    async def _open(self) -> bool:
        if self._client is not None:
            self._client.close()
        self._client = self._make_client()
        modbus_pdu.register(self._client)  # one struct call per response, not one a register
        self._open_error = ""
        try:
            ok = await asyncio.wait_for(self._client.connect(), self.config.timeout_s)
        except (TimeoutError, OSError, ModbusException):
            ok = False
        except termios.error as exc:
            # The device opened but its driver refused the line settings (a pty refuses
            # parity E and O): a device we cannot reach, not a crash of the agent.
            c = self.config
            self._open_error = (f" (the serial driver refused {c.baudrate} baud, parity "
                                f"{c.parity}: {exc.args[-1]})")  # fmt: skip
            ok = False
        return bool(ok)

    async def connect(self) -> None:
        """Open the connection; a failure is not fatal, ``readings()`` keeps retrying."""
        if not await self._open():
            self.health.failed(f"cannot connect to {self._where()}{self._open_error}")

    def _where(self) -> str:
        c = self.config
        return c.serial_port or "" if c.transport == "serial" else f"{c.host}:{c.port}"

    async def close(self) -> None:
        self._closed.set()
        if self._client is not None:
            self._client.close()

    # -- polling -------------------------------------------------------------------------------
    async def readings(self) -> AsyncIterator[Reading]:
        ticker = Ticker(self.config.interval_s)
        while not self._closed.is_set():
            ts = await ticker.wait()
            self.health.missed_polls = ticker.missed
            if self._closed.is_set():
                return
            if self._client is None or not self._client.connected:
                await self._reconnect()
                if self._closed.is_set():
                    return
                if self._client is None or not self._client.connected:
                    self.health.failed_polls += 1  # a visible, counted gap
                    continue
            for reading in await self.poll(ts):
                yield reading

    async def _reconnect(self) -> None:
        """The one owner of reconnection: back off, then try once."""
        delay = self.backoff.next()
        try:
            await asyncio.wait_for(self._closed.wait(), delay)
            return
        except TimeoutError:
            pass
        if await self._open():
            # Connecting is cheap to retry; the backoff is for refused or unreachable hosts.
            self.backoff.reset()
            self._link_failures = 0
        else:
            self.health.failed(f"cannot connect to {self._where()}{self._open_error}")

    async def poll(self, ts_ns: int) -> list[Reading]:
        """Read every unit once; return one Reading per machine that answered anything."""
        cfg = self.config
        values: list[dict[str, FieldValue]] = [{} for _ in cfg.machines]
        quality: list[dict[str, Quality]] = [{} for _ in cfg.machines]
        now = time.monotonic()
        errors: list[str] = []
        self.health.polls += 1
        answered: list[_Unit] = []
        silent: list[_Unit] = []
        for unit in self._units:
            if unit.aside_until > now:
                continue
            unit_ok = False
            for req in unit.requests:
                ok, err = await self._read(req, values, quality)
                unit_ok |= ok
                if err:
                    errors.append(err)
            (answered if unit_ok else silent).append(unit)
        for unit in answered:
            unit.failures = 0
        if answered:
            # The link works: a unit that stays silent is a dead device behind a gateway. Put
            # it aside so the others keep their cadence instead of paying its timeouts.
            self._link_failures = 0
            for unit in silent:
                unit.failures += 1
                if unit.failures >= cfg.put_aside_after and cfg.put_aside_s > 0:
                    unit.aside_until = now + cfg.put_aside_s
                    self.health.log.warning("unit_put_aside", unit_id=unit.unit_id,
                                            seconds=cfg.put_aside_s, error=errors[-1:])  # fmt: skip
            self.health.succeeded()
        elif silent:
            # Nothing answered: the link (or the whole device) is down, not one unit.
            self._link_failures += 1
            self.health.failed_polls += 1
            self.health.failed("; ".join(errors[:3]))
            if self._link_failures >= _LINK_FAILURES_BEFORE_REOPEN and self._client is not None:
                self._client.close()  # a fresh connection after a cut; NAT state may be gone
        out = []
        for mi, m in enumerate(cfg.machines):
            if not values[mi]:
                continue  # nothing answered for this machine: a gap, counted in failed polls
            for name in quality[mi]:
                values[mi].setdefault(name, None)
            self.health.readings += 1
            self.health.bad_values += len(quality[mi])
            tags = {"machine": m.name, "device": cfg.name, "protocol": "modbus", **m.tags}
            out.append(Reading(m.name, ts_ns, values[mi], tags, quality[mi]))
        return out

    async def _read(
        self,
        req: Request,
        values: list[dict[str, FieldValue]],
        quality: list[dict[str, Quality]],
    ) -> tuple[bool, str]:
        """Execute one request; fill values (or bad qualities). Returns (answered, error)."""
        client = self._client
        call = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[req.table]
        t0 = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: wait_for wraps the call in a task (8 µs a request)
            async with asyncio.timeout(self.config.timeout_s * (self.config.retries + 1) + 0.5):
                rr = await call(req.start, count=req.count, device_id=req.unit_id)
        # termios.error: pymodbus reconnects inside the call when the line dropped mid-poll
        except (TimeoutError, ModbusException, OSError, termios.error) as exc:
            self._mark(req, quality, None, TIMEOUT)
            return False, f"unit {req.unit_id} {req.table}@{req.start}: {type(exc).__name__}"
        self.health.record_rtt(time.perf_counter() - t0)
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            self._mark(req, quality, values, exception_quality(code))
            # An exception is an answer: the device is alive, the request is wrong.
            return True, f"unit {req.unit_id} {req.table}@{req.start}: exception {code}"
        raw = rr.bits if req.table in ("coil", "discrete") else rr.registers
        self.decode(req, raw, values, quality)
        return True, ""

    def decode(
        self,
        req: Request,
        raw: list[int] | list[bool],
        values: list[dict[str, FieldValue]],
        quality: list[dict[str, Quality]],
    ) -> None:
        """Decode one answered request into machine values (the hot path).

        Runs of same-typed, unscaled fields take one ``decode_many``; the rest one at a time.
        """
        steps = self._decoding.get(id(req)) or req.tags
        if len(raw) < req.count:  # a short answer: field by field, which says what is wrong
            steps = req.tags
        fields = self._fields
        for step in steps:
            if isinstance(step, _Run):
                block = raw[step.offset : step.offset + len(step.fields) * step.codec.count]
                decoded = step.codec.decode_many(block)
                target = values[step.machine]
                # NaN or ±Inf anywhere makes the sum's difference with itself NaN (an overflow
                # of the sum only sends the run down the careful path)
                total = sum(decoded) if step.codec.type in _FLOATS else 0  # type: ignore[arg-type]
                if total - total == 0:
                    target.update(zip(step.names, decoded, strict=True))
                    continue
                for f, v in zip(step.fields, decoded, strict=True):
                    if type(v) is float and (v != v or v in _INFINITE):  # noqa: PLR0124 (NaN)
                        quality[f.machine][f.name] = NOT_A_NUMBER
                        target[f.name] = None
                    else:
                        target[f.name] = v
                continue
            tag, off = step
            f = fields[tag.field]
            value: FieldValue = f.codec.decode(raw[off : off + tag.count])
            if type(value) is float:
                if f.scale != 1.0 or f.offset:
                    value = value * f.scale + f.offset
                if value != value or value in _INFINITE:  # noqa: PLR0124 (NaN test, no call)
                    quality[f.machine][f.name] = NOT_A_NUMBER
                    value = None
            elif type(value) is int and (f.scale != 1.0 or f.offset):
                value = value * f.scale + f.offset
            values[f.machine][f.name] = value

    def _mark(
        self,
        req: Request,
        quality: list[dict[str, Quality]],
        values: list[dict[str, FieldValue]] | None,
        q: Quality,
    ) -> None:
        """Mark the fields of a failed request bad (and ``None`` when the device answered)."""
        for tag, _ in req.tags:
            f = self._fields[tag.field]
            if values is not None:
                values[f.machine][f.name] = None
            quality[f.machine][f.name] = q
