"""OPC UA server for the simulated plant (asyncua).

Address space: ``Objects/<site>/<line>/<machine>/<signal>``: folders for the site and its lines,
an object per machine, and per signal a read-only Double variable of ``AnalogItemType`` with the
``EURange`` and ``EngineeringUnits`` properties (UNECE codes where known). Node ids are strings
built from that path, ``ns=<idx>;s=<site>/<line>/<machine>/<signal>``, so they survive restarts
and clients can address them namespace-independently as ``nsu=<namespace>;s=...`` (see
:func:`node_id`).

Values are written each tick through asyncua's internal address-space fast path, stamped with the
plant's source timestamp and the server time. A failed sensor or a lost machine shows its Bad
status code and no value; a value whose value and status did not change is not written again, so
its SourceTimestamp is the time of its last change (OPC UA Part 4, 7.7.3) and subscribers are not
disturbed. Security and logins live in :mod:`simulators.opcua_security`; the server accepts any
client certificate (it is a simulator), and user certificates only when the scenario lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from simulators.engine import Plant
from simulators.models.base import Signal
from simulators.opcua_security import (
    POLICIES,
    OpcUaSetupError,
    SimInternalServer,
    SimUserManager,
    load_passwords,
    load_user_certificates,
    needs_certificate,
    server_certificate,
)
from simulators.scenario import OpcUaSpec
from simulators.sensors import BAD_SENSOR_FAILURE

__all__ = ["OpcUaPortInUseError", "OpcUaSetupError", "OpcUaSimServer", "node_id", "node_path"]

log = structlog.get_logger(__name__)

UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
#: unit symbol -> (UNECE Rec. 20 common code, full name); other units get UnitId -1.
UNITS: dict[str, tuple[str, str]] = {
    "°C": ("CEL", "degree Celsius"), "K": ("KEL", "kelvin"), "°F": ("FAH", "degree Fahrenheit"),
    "rpm": ("RPM", "revolutions per minute"), "%": ("P1", "percent"), "Hz": ("HTZ", "hertz"),
    "A": ("AMP", "ampere"), "V": ("VLT", "volt"), "W": ("WTT", "watt"), "kW": ("KWT", "kilowatt"),
    "MW": ("MAW", "megawatt"), "kWh": ("KWH", "kilowatt hour"), "kW·h": ("KWH", "kilowatt hour"),
    "bar": ("BAR", "bar"), "mbar": ("MBR", "millibar"), "Pa": ("PAL", "pascal"),
    "kPa": ("KPA", "kilopascal"), "MPa": ("MPA", "megapascal"), "N": ("NEW", "newton"),
    "kN": ("B47", "kilonewton"), "N·m": ("NU", "newton metre"), "Nm": ("NU", "newton metre"),
    "mm/s": ("C16", "millimetre per second"), "m/s": ("MTS", "metre per second"),
    "m/min": ("2X", "metre per minute"), "m/s²": ("MSK", "metre per second squared"),
    "l/min": ("L2", "litre per minute"), "m³/h": ("MQH", "cubic metre per hour"),
    "m³/min": ("G53", "cubic metre per minute"), "kg/h": ("E93", "kilogram per hour"),
    "t/h": ("E18", "tonne per hour"), "kg/m": ("KL", "kilogram per metre"),
    "µm": ("4H", "micrometre"), "mm": ("MMT", "millimetre"), "m": ("MTR", "metre"),
    "kg": ("KGM", "kilogram"), "t": ("TNE", "tonne"), "l": ("LTR", "litre"),
    "m³": ("MTQ", "cubic metre"), "s": ("SEC", "second"), "min": ("MIN", "minute"),
    "h": ("HUR", "hour"), "ppm": ("59", "part per million"), "dB": ("2N", "decibel"),
}  # fmt: skip

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VALUE = AttributeIds.Value
_VARIABLE_TYPES = (ObjectIds.AnalogItemType, ObjectIds.PropertyType)
_UNSET = object()


def node_path(site: str, line: str, machine: str, signal: str | None = None) -> str:
    """The string identifier of a node: ``<site>/<line>/<machine>[/<signal>]``.

    >>> node_path("plant", "line-1", "cnc-01", "spindle_speed")
    'plant/line-1/cnc-01/spindle_speed'
    """
    parts = (site, line, machine) if signal is None else (site, line, machine, signal)
    return "/".join(parts)


def node_id(namespace: str, site: str, line: str, machine: str, signal: str) -> str:
    """The namespace-independent node id of a signal, for clients' configuration.

    >>> node_id("urn:factory-agent:simulator", "plant", "line-1", "cnc-01", "spindle_speed")
    'nsu=urn:factory-agent:simulator;s=plant/line-1/cnc-01/spindle_speed'
    """
    return f"nsu={namespace};s={node_path(site, line, machine, signal)}"


def eu_information(unit: str) -> ua.EUInformation:
    """EngineeringUnits for a unit symbol: UNECE code when known, else UnitId -1 (Part 8)."""
    known = UNITS.get(unit)
    if known is None:
        return ua.EUInformation(
            NamespaceUri=None,
            UnitId=-1,
            DisplayName=ua.LocalizedText(unit),
            Description=ua.LocalizedText(unit),
        )
    code, name = known
    unit_id = 0
    for ch in code:
        unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(UNECE_URI, unit_id, ua.LocalizedText(unit), ua.LocalizedText(name))


class _SharedDataValue(ua.DataValue):
    """A DataValue nobody mutates, so copying it is a no-op.

    asyncua deep-copies every written DataValue once per monitored item ("to prevent referencing
    the inner value"); with 500 subscribed doubles that was about 70 % of the publish time. Ours
    are built fresh for each write and never changed afterwards, so sharing them is safe.
    """

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedDataValue:
        return self


class OpcUaPortInUseError(OpcUaSetupError):
    """The configured TCP port is taken by another process."""


@dataclass
class PublishStats:
    """What :meth:`OpcUaSimServer.publish` did, for metrics and benchmarks."""

    publishes: int = 0
    written: int = 0
    unchanged: int = 0
    bad: int = 0
    publish_s: float = 0.0


class _DropAddrInUse(logging.Filter):
    """Drop asyncua's traceback log for a port in use: we raise a clearer error instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE)


class OpcUaSimServer:
    """Serves a :class:`~simulators.engine.Plant` over OPC UA.

    ``spec`` defaults to the scenario's ``opcua`` section; ``port`` overrides its port (``0``
    binds a free port, then :attr:`endpoint` tells which). Use as: ``await start()``, then
    ``await publish(plant)`` after each tick (``Plant.run`` does that), ``await stop()``.
    """

    def __init__(self, plant: Plant, spec: OpcUaSpec | None = None, *, port: int | None = None):
        self.plant = plant
        self.spec = spec or plant.scenario.opcua
        self.port = self.spec.port if port is None else port
        self.application_uri = f"urn:factory-agent:simulator:{plant.scenario.site}"
        self.endpoint = ""
        self.namespace_index = -1
        self.policies: list[str] = []
        self.users: list[str] = []  # who can log in with a password (known after start)
        self.certificate_users: list[str] = []  # who can log in with a user certificate
        self.stats = PublishStats()
        self._server: Server | None = None
        self._aspace: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._nodeids: list[list[ua.NodeId]] = []
        self._last: list[list[tuple[object, int] | object]] = []
        self._status: dict[int, ua.StatusCode] = {}

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the address space, bind the port and publish the plant's current values."""
        spec = self.spec
        asyncua_log = logging.getLogger("asyncua")
        if asyncua_log.level == logging.NOTSET:
            asyncua_log.setLevel(logging.WARNING)  # its INFO is per-request chatter
        logins = load_passwords(spec)
        for problem in logins.skipped:
            log.warning("opcua_user_skipped", problem=problem)
        user_certificates = load_user_certificates(spec)
        users = SimUserManager(
            logins.passwords,
            allow_anonymous=spec.allow_anonymous,
            allow_unsecured="None" in spec.security,
            certificates=user_certificates,
        )
        iserver = SimInternalServer(user_manager=users)  # type: ignore[arg-type]  # duck-typed
        server = Server(iserver=iserver)
        await server.init()
        server.set_server_name(f"factory-agent simulator ({self.plant.scenario.site})")
        server.set_endpoint(f"opc.tcp://{_url_host(spec.host)}:{self.port}/")
        server.product_uri = "urn:factory-agent:simulator"
        if needs_certificate(spec):
            await self._load_certificate(server)
        await server.set_application_uri(self.application_uri)
        server.set_security_policy([POLICIES[name] for name in spec.security])
        tokens: list[type] = [ua.AnonymousIdentityToken] if spec.allow_anonymous else []
        if logins.passwords:
            tokens.append(ua.UserNameIdentityToken)
        if user_certificates:
            tokens.append(ua.X509IdentityToken)
        server.set_identity_tokens(tokens)
        self.namespace_index = await server.register_namespace(spec.namespace)
        self._aspace = server.iserver.aspace
        await self._build(server)
        await self._bind(server)
        self._server = server
        self.policies = list(spec.security)
        self.users = sorted(logins.passwords)
        self.certificate_users = sorted(set(user_certificates.values()))
        await self.publish(self.plant)
        log.info(
            "opcua_server_started",
            endpoint=self.endpoint,
            policies=self.policies,
            anonymous=spec.allow_anonymous,
            users=self.users,
            certificate_users=self.certificate_users,
            signals=sum(len(n) for n in self._nodeids),
            application_uri=self.application_uri,
        )

    async def _load_certificate(self, server: Server) -> None:
        spec = self.spec
        if spec.certificate is None and spec.cert_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="factory-sim-opcua-")
            spec = spec.model_copy(update={"cert_dir": Path(self._tmp.name)})
        cert = server_certificate(spec, self.application_uri)
        self.application_uri = cert.application_uri
        await server.load_certificate(str(cert.certificate))
        await server.load_private_key(str(cert.private_key))
        if cert.generated:
            log.info("opcua_certificate_generated", path=str(cert.certificate),
                     application_uri=cert.application_uri)  # fmt: skip

    async def _bind(self, server: Server) -> None:
        server_log = logging.getLogger("asyncua.server.server")
        quiet = _DropAddrInUse()
        server_log.addFilter(quiet)
        try:
            await server.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OpcUaPortInUseError(
                    f"opcua.port: {self.port} is already in use on {self.spec.host}"
                    " (another simulator running? choose a free port)"
                ) from None
            raise OpcUaSetupError(
                f"opcua.host/opcua.port: cannot listen on {self.spec.host}:{self.port}: "
                f"{exc.strerror or exc}"
            ) from exc
        finally:
            server_log.removeFilter(quiet)
        assert server.bserver is not None
        bound = int(server.bserver.port)
        url = f"opc.tcp://{_url_host(self.spec.host)}:{bound}/"
        if bound != self.port:  # port 0: advertise the port actually bound
            server.set_endpoint(url)
            for edp in server.iserver.endpoints:
                edp.EndpointUrl = url
                edp.Server.DiscoveryUrls = [url]
        self.endpoint = url

    async def stop(self) -> None:
        """Close every session and the listening socket; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            await _stop_clock(server)
            await server.stop()
            log.info("opcua_server_stopped", endpoint=self.endpoint, publishes=self.stats.publishes)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def describe(self) -> str:
        """One line for the CLI: endpoint, policies and logins."""
        who = ["anonymous"] if self.spec.allow_anonymous else []
        who += [f"user {name}" for name in self.users]
        who += [f"certificate of {name}" for name in self.certificate_users]
        return (
            f"OPC UA: {self.endpoint} (namespace {self.spec.namespace}; "
            f"security {', '.join(self.policies)}; logins: {', '.join(who)})"
        )

    # -- address space ----------------------------------------------------------------------------
    async def _build(self, server: Server) -> None:
        idx = self.namespace_index
        site = self.plant.scenario.site
        objects = _nid(ObjectIds.ObjectsFolder)
        items = [_object(idx, site, objects, f"site {site}", folder=True)]
        sampling_ms = 1000.0 / self.plant.scenario.rate_hz
        self._nodeids, self._last = [], []
        for m in self.plant.machines:
            line_path = f"{site}/{m.spec.line}"
            if not any(it.RequestedNewNodeId.Identifier == line_path for it in items):
                desc = f"production line {m.spec.line}"
                items.append(_object(idx, line_path, _nid(site, idx), desc, folder=True))
            mpath = node_path(site, m.spec.line, m.name)
            title = f"{m.model.title} ({m.spec.kind})"
            items.append(_object(idx, mpath, _nid(line_path, idx), title, folder=False))
            for sig in m.signals:
                items.extend(_analog_item(idx, mpath, sig, sampling_ms))
            self._nodeids.append([_nid(f"{mpath}/{sig.name}", idx) for sig in m.signals])
            self._last.append([_UNSET] * len(m.signals))
        results = await server.iserver.isession.add_nodes(items)
        for item, res in zip(items, results, strict=True):
            if not res.StatusCode.is_good():
                raise OpcUaSetupError(
                    f"cannot create node {item.RequestedNewNodeId.to_string()}: {res.StatusCode}"
                )

    # -- publishing -------------------------------------------------------------------------------
    async def publish(self, plant: Plant) -> None:
        """Write the plant's current values (the per-tick listener), skipping unchanged ones."""
        t0 = time.perf_counter()
        write = self._aspace.write_attribute_value
        # asyncua annotates ua.DateTime, a datetime subclass it never requires at run time
        source: Any = _EPOCH + timedelta(microseconds=plant.time_ns // 1000)
        now: Any = datetime.now(UTC)
        good = self._status_code(0)
        null = ua.Variant(None, ua.VariantType.Null)
        written = bad = 0
        for m, ids, last in zip(plant.machines, self._nodeids, self._last, strict=True):
            values, status = m.values, m.status
            for i, nid in enumerate(ids):
                v, s = values[i], status[i]
                key = (v, s)
                if last[i] == key:
                    continue
                last[i] = key
                if s == 0 and v is not None:
                    dv = _SharedDataValue(ua.Variant(v, ua.VariantType.Double), good, source, now)
                else:
                    code = self._status_code(s or BAD_SENSOR_FAILURE)
                    keep = v is not None and not code.is_bad()
                    variant = ua.Variant(v, ua.VariantType.Double) if keep else null
                    dv = _SharedDataValue(variant, code, source, now)
                    bad += 1
                await write(nid, _VALUE, dv)
                written += 1
        st = self.stats
        st.publishes += 1
        st.written += written
        st.bad += bad
        st.unchanged += sum(len(ids) for ids in self._nodeids) - written
        st.publish_s += time.perf_counter() - t0

    def _status_code(self, value: int) -> ua.StatusCode:
        code = self._status.get(value)
        if code is None:
            code = self._status[value] = ua.StatusCode(value)  # type: ignore[arg-type]  # ua.UInt32 marker
        return code


def _nid(identifier: str | int, idx: int = 0) -> ua.NodeId:
    """A NodeId from plain values (asyncua annotates marker types such as ``ua.Int16``)."""
    return ua.NodeId(identifier, idx)  # type: ignore[arg-type]


async def _stop_clock(server: Server) -> None:
    """Cancel asyncua's 1 s CurrentTime task, which ``Server.stop`` would wait up to 1 s for."""
    task = getattr(server.iserver, "time_task", None)
    if isinstance(task, asyncio.Task) and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.iserver.time_task = None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _item(
    nid: ua.NodeId, name: ua.QualifiedName, parent: ua.NodeId, *, ref: int, typedef: int, attrs: Any
) -> ua.AddNodesItem:
    """An AddNodes request item; the node class follows from the type definition."""
    item = ua.AddNodesItem()
    item.RequestedNewNodeId, item.BrowseName, item.ParentNodeId = nid, name, parent
    item.NodeClass = ua.NodeClass.Variable if typedef in _VARIABLE_TYPES else ua.NodeClass.Object
    item.ReferenceTypeId, item.TypeDefinition = _nid(ref), _nid(typedef)
    attrs.DisplayName = ua.LocalizedText(name.Name)
    item.NodeAttributes = attrs
    return item


def _object(idx: int, path: str, parent: ua.NodeId, desc: str, *, folder: bool) -> ua.AddNodesItem:
    """A folder (site, line) or object (machine) whose browse name is the last path element."""
    attrs = ua.ObjectAttributes(Description=ua.LocalizedText(desc))
    typedef = ObjectIds.FolderType if folder else ObjectIds.BaseObjectType
    name = ua.QualifiedName(path.rsplit("/", 1)[-1], idx)
    return _item(
        _nid(path, idx), name, parent, ref=ObjectIds.Organizes, typedef=typedef, attrs=attrs
    )


def _read_only(value: Any, vtype: ua.VariantType, datatype: int, desc: str) -> Any:
    """Attributes of a read-only scalar variable."""
    attrs = ua.VariableAttributes(
        Description=ua.LocalizedText(desc), Value=ua.Variant(value, vtype)
    )
    attrs.DataType, attrs.ValueRank = _nid(datatype), ua.ValueRank.Scalar
    attrs.ArrayDimensions = None  # type: ignore[assignment]  # scalar: no dimensions
    attrs.WriteMask = attrs.UserWriteMask = 0
    attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.Historizing = False
    return attrs


def _analog_item(idx: int, mpath: str, sig: Signal, sampling_ms: float) -> list[ua.AddNodesItem]:
    """The signal's Double variable (AnalogItemType) and its EURange and EngineeringUnits."""
    nid = _nid(f"{mpath}/{sig.name}", idx)
    desc = f"{sig.description} [{sig.unit}]" if sig.unit else sig.description
    attrs = _read_only(0.0, ua.VariantType.Double, ObjectIds.Double, desc)
    attrs.MinimumSamplingInterval = sampling_ms
    name = ua.QualifiedName(sig.name, idx)
    items = [
        _item(nid, name, _nid(mpath, idx), ref=ObjectIds.HasComponent,
              typedef=ObjectIds.AnalogItemType, attrs=attrs)
    ]  # fmt: skip
    ext = ua.VariantType.ExtensionObject
    properties = (
        ("EURange", ua.Range(sig.low, sig.high), ObjectIds.Range, "normal engineering range"),
        ("EngineeringUnits", eu_information(sig.unit), ObjectIds.EUInformation, "unit"),
    )
    for prop, value, datatype, what in properties:
        attrs = _read_only(value, ext, datatype, f"{what} of {sig.name}")
        items.append(
            _item(_nid(f"{mpath}/{sig.name}/{prop}", idx), ua.QualifiedName(prop, 0), nid,
                  ref=ObjectIds.HasProperty, typedef=ObjectIds.PropertyType, attrs=attrs)
        )  # fmt: skip
    return items
