"""Modbus server for the simulated plant (TCP, RTU over TCP, TLS, serial RTU): read-only.

Each machine answers on its unit id (``Scenario.unit_ids()``) with the layout of
:mod:`simulators.registermap`. :meth:`ModbusSimServer.publish` is a plant tick listener: after
every tick it re-encodes every machine into plain Python lists (precompiled
:class:`~connectors.codec.Codec` structs, 1-1.5 µs per signal), and reads slice those lists.

Behaviour on the wire (choices a client can rely on):

- A read inside a mapped block answers the current values; a read that touches any unmapped
  address (or crosses from a mapped block into unmapped space) answers exception 2
  (illegal data address).
- An unknown unit id answers exception 0x0B (gateway target device failed to respond), as a
  gateway in front of many devices does; a misconfigured client fails fast instead of timing out.
  On a serial line (``transport: serial``) there is no gateway: nobody answers an unknown unit
  id, as on a real RS-485 bus, and the client times out.
- A machine under a ``comm_loss`` fault (``online`` false) does not answer at all, whatever the
  function code: its responses are dropped on the way out, so the client times out; it answers
  again from the first tick after the fault.
- Writes (FC5, 6, 15, 16, 22, 23) answer exception 1 (illegal function): the simulated devices
  are read-only and implement no write function.

pymodbus hooks used: its request handler calls ``server.context.async_getValues`` /
``async_setValues`` for every data-access function code; we install a :class:`SimCore` subclass
there that reads our images (pymodbus' own SimDevice store checks every register's flags in
Python and cannot express "unknown unit -> 0x0B"). Silence uses the public ``trace_packet`` hook:
an outgoing frame whose MBAP unit id is offline is replaced by no bytes.

Serial RTU: pymodbus' :class:`~pymodbus.server.ModbusSerialServer` opens the device and treats
it as one connection. When the line goes away (a USB adapter unplugged, the socat of a pty pair
stopped), pymodbus closes it and never reopens; the ``trace_connect`` hook tells us, and we
reopen the same path every :data:`SERIAL_REOPEN_S` until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import ssl
import termios
import time
from dataclasses import dataclass

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer, ModbusTlsServer
from pymodbus.simulator.simcore import SimCore

from simulators.engine import Machine, Plant
from simulators.registermap import RegisterImage, RegisterMap, Table
from simulators.scenario import ModbusSpec

log = structlog.get_logger()

_READ_TABLE: dict[int, Table] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
_BIT_TABLES = (1, 2)
#: Byte offset of the unit id in a Modbus TCP frame (MBAP header: tid 2, protocol 2, length 2).
_MBAP_UNIT = 6
#: Seconds between attempts to reopen a serial line that went away.
SERIAL_REOPEN_S = 0.5


class ServerStartError(Exception):
    """The server could not start (port in use, address not available): a user's problem."""


@dataclass(slots=True)
class ServerStats:
    """What the server received, answered and refused (Vector-style component counters)."""

    requests: int = 0
    exceptions: int = 0
    silenced: int = 0
    publishes: int = 0
    publish_s: float = 0.0


class _Unit:
    """One machine as a Modbus unit: its map and the image currently served."""

    __slots__ = ("image", "machine", "online", "regmap")

    def __init__(self, machine: Machine, regmap: RegisterMap, time_ns: int) -> None:
        self.machine = machine
        self.regmap = regmap
        self.online = machine.online
        self.image: RegisterImage = regmap.render(machine.values, machine.status, time_ns)


class _PlantStore(SimCore):
    """The datastore pymodbus' request handler reads: our units' images, nothing else."""

    def __init__(self, units: dict[int, _Unit], stats: ServerStats) -> None:
        super().__init__([])
        self.units = units
        self.stats = stats

    def device_ids(self) -> list[int]:
        return list(self.units)

    async def async_getValues(  # noqa: N802 (pymodbus' name)
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self.stats.requests += 1
        unit = self.units.get(device_id)
        if unit is None:
            self.stats.exceptions += 1
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _READ_TABLE.get(func_code)
        if table is None:  # FC22 (mask write) reads first; every write is refused
            self.stats.exceptions += 1
            return ExcCodes.ILLEGAL_FUNCTION
        values = unit.image.read(table, address, count)
        if values is None:
            self.stats.exceptions += 1
            return ExcCodes.ILLEGAL_ADDRESS
        if func_code in _BIT_TABLES:
            return [v != 0 for v in values]
        return values

    async def async_setValues(  # noqa: N802 (pymodbus' name)
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        self.stats.requests += 1
        self.stats.exceptions += 1
        if device_id not in self.units:
            return ExcCodes.GATEWAY_NO_RESPONSE
        return ExcCodes.ILLEGAL_FUNCTION


class ModbusSimServer:
    """Serves a :class:`Plant` over Modbus; :meth:`publish` is its tick listener.

    ``spec.port`` 0 binds a free port (the scenario schema asks for 1..65535, so tests pass
    ``spec.model_copy(update={"port": 0})``); :attr:`port` holds the bound port after
    :meth:`start`. Use a literal address with port 0: a name resolving to several addresses
    would get one free port per address, and :attr:`port` reports the first. With
    ``transport: serial`` the server opens ``spec.serial_port`` instead (host and port unused).
    """

    def __init__(self, plant: Plant, spec: ModbusSpec) -> None:
        self.spec = spec
        self.host = spec.host
        self.port = spec.port  # the bound port once started (port 0 picks a free one)
        self.stats = ServerStats()
        now = plant.time_ns
        self._units: list[_Unit] = [
            _Unit(m, RegisterMap.for_model(type(m.model), spec.word_order), now)
            for m in plant.machines
        ]
        self._by_id = {u.machine.unit_id: u for u in self._units}
        self._offline: set[int] = {uid for uid, u in self._by_id.items() if not u.online}
        self._store = _PlantStore(self._by_id, self.stats)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._serial = spec.transport == "serial"
        #: where the unit id sits in an outgoing frame: first byte of RTU, after MBAP's header
        self._unit_at = 0 if spec.transport in ("rtu_over_tcp", "serial") else _MBAP_UNIT
        self._reopen_task: asyncio.Task[None] | None = None

    @property
    def signal_count(self) -> int:
        """Signals served over all units."""
        return sum(len(u.regmap.signals) for u in self._units)

    def describe(self) -> str:
        """One line for the CLI banner."""
        ids = sorted(self._by_id)
        span = f"{ids[0]}..{ids[-1]}" if len(ids) > 1 else str(ids[0])
        return (
            f"modbus: {self.where}, unit ids {span} ({len(ids)} machines), "
            f"word order {self.spec.word_order}, {self.signal_count} signals"
        )

    @property
    def where(self) -> str:
        """``tcp://host:port``, or the serial device with its line settings."""
        spec = self.spec
        if self._serial:
            return f"serial {spec.serial_port} ({spec.baudrate} baud, 8{spec.parity}1, RTU)"
        return f"tcp://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving; raise :class:`ServerStartError` if the port is unavailable."""
        if self._server is not None:
            raise RuntimeError("the Modbus server is already running")
        server = self._make_server()
        server.context = self._store
        if self._serial:
            path = self.spec.serial_port or ""
            try:
                opened = await server.listen()
            except termios.error as exc:  # pymodbus only catches OSError
                server.close()
                raise ServerStartError(
                    f"Modbus server cannot set up serial port {path} (the driver refused "
                    f"{self.spec.baudrate} baud, parity {self.spec.parity}: {exc.args[-1]}; a "
                    f"pty, such as socat makes, has no parity); check modbus.baudrate and "
                    f"modbus.parity in the scenario"
                ) from None
            if not opened:
                raise ServerStartError(
                    f"Modbus server cannot open serial port {path} ({_open_error(path)}); "
                    f"check modbus.serial_port in the scenario"
                )
            self._server = server
            log.info("modbus_server_started", serial_port=self.spec.serial_port,
                     baudrate=self.spec.baudrate, parity=self.spec.parity,
                     units=len(self._units), signals=self.signal_count,
                     word_order=self.spec.word_order)  # fmt: skip
            return
        if not await server.listen():
            reason = _bind_error(self.host, self.port)
            raise ServerStartError(
                f"Modbus server cannot listen on {self.host}:{self.port} ({reason}); "
                f"choose another modbus.port in the scenario (or --modbus-port)"
            )
        sockets = getattr(server.transport, "sockets", None) or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._server = server
        log.info("modbus_server_started", host=self.host, port=self.port,
                 units=len(self._units), signals=self.signal_count,
                 word_order=self.spec.word_order)  # fmt: skip

    def _make_server(self) -> ModbusTcpServer | ModbusSerialServer:
        """TCP (MBAP), RTU frames over TCP or a serial line, or Modbus/TCP Security."""
        spec = self.spec
        if self._serial:
            return ModbusSerialServer(
                [],  # placeholder store, replaced by ours
                framer=FramerType.RTU,
                port=spec.serial_port or "",
                baudrate=spec.baudrate,
                parity=spec.parity,
                trace_packet=self._trace_packet,
                trace_connect=self._serial_line_changed,
            )
        if spec.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                ctx.load_cert_chain(str(spec.tls.certificate), str(spec.tls.private_key))
                if spec.tls.client_ca is not None:
                    ctx.load_verify_locations(str(spec.tls.client_ca))
                    ctx.verify_mode = ssl.CERT_REQUIRED
            except (OSError, ssl.SSLError) as exc:
                raise ServerStartError(
                    f"modbus.tls: cannot load the certificate or key ({exc}); give PEM files"
                ) from None
            # The TLS framer carries no unit id, so comm_loss cannot silence one unit here.
            return ModbusTlsServer([], address=(self.host, self.port), sslctx=ctx)
        framer = FramerType.RTU if spec.transport == "rtu_over_tcp" else FramerType.SOCKET
        return ModbusTcpServer(
            [],  # placeholder store, replaced by ours in start()
            framer=framer,
            address=(self.host, self.port),
            trace_packet=self._trace_packet,
        )

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._reopen_task is not None:
            self._reopen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reopen_task
        server.close()  # what shutdown() does, minus resolving serve_forever's future (unused)
        await asyncio.sleep(0)  # let the transports run their close callbacks
        where = {"serial_port": self.spec.serial_port} if self._serial else {"port": self.port}
        log.info("modbus_server_stopped", **where, requests=self.stats.requests,
                 exceptions=self.stats.exceptions, silenced=self.stats.silenced)  # fmt: skip

    def _serial_line_changed(self, connected: bool) -> None:
        """pymodbus' ``trace_connect``: the serial line went away; reopen it until it is back."""
        if connected or self._server is None or self._reopen_task is not None:
            return  # opened, stopping, or already reopening (a failed open reports too)
        log.warning("modbus_serial_line_lost", serial_port=self.spec.serial_port)
        self._reopen_task = asyncio.get_running_loop().create_task(self._reopen(self._server))

    async def _reopen(self, old: ModbusTcpServer | ModbusSerialServer) -> None:
        """Close the dead line, then try to open the same path every :data:`SERIAL_REOPEN_S`."""
        old.close()
        attempts = 0
        try:
            while self._server is old:
                await asyncio.sleep(SERIAL_REOPEN_S)
                attempts += 1
                server = self._make_server()
                server.context = self._store
                try:
                    opened = await server.listen()
                except termios.error:  # refused line settings: as if the device were absent
                    server.close()
                    opened = False
                if opened:
                    self._server = server
                    log.info("modbus_serial_line_reopened", serial_port=self.spec.serial_port,
                             attempts=attempts)  # fmt: skip
                    return
        finally:
            self._reopen_task = None

    async def publish(self, plant: Plant) -> None:
        """Re-encode every machine's current values (a :class:`Plant` listener)."""
        t0 = time.perf_counter()
        time_ns = plant.time_ns
        changed = False
        for unit in self._units:
            m = unit.machine
            unit.image = unit.regmap.render(m.values, m.status, time_ns)
            if m.online != unit.online:
                unit.online = m.online
                changed = True
                event = "modbus_unit_resumed" if m.online else "modbus_unit_silenced"
                log.info(event, machine=m.name, unit_id=m.unit_id)
        if changed:
            self._offline = {uid for uid, u in self._by_id.items() if not u.online}
        self.stats.publishes += 1
        self.stats.publish_s += time.perf_counter() - t0

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Drop every response of an offline unit (comm_loss): the client times out.

        On a serial line, also every answer for a unit id no machine has: nobody is there.
        """
        unit_at = self._unit_at
        if not sending or len(data) <= unit_at:
            return data
        unit = data[unit_at]
        if unit in self._offline or (self._serial and unit not in self._by_id):
            self.stats.silenced += 1
            return b""
        return data


def _open_error(path: str) -> str:
    """Why a serial device did not open, found by trying once more with ``os.open``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        if not os.isatty(fd):
            return "it is not a serial device"
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # pyserial opens it exclusively
    except OSError:
        return "another program has it open"
    finally:
        os.close(fd)
    return "it could not be set up as a serial line"


def _bind_error(host: str, port: int) -> str:
    """Why binding failed, found by trying once more with a plain socket."""
    try:
        with socket.create_server((host, port)):
            return "the address was not available"
    except OSError as exc:
        return exc.strerror or str(exc)
