"""Configuration of the OPC UA connector, its node address syntax, and resolving addresses.

A node is addressed in one of three ways (:func:`parse_address`):

- ``nsu=<namespace URI>;s=<id>`` (or ``i=``, ``g=``, ``b=``): the stable form, resolved to the
  namespace index after each connect, because servers may renumber namespaces on restart;
- ``ns=<index>;s=<id>``, or just ``i=2258`` for namespace 0;
- a browse path from the Root folder, ``/Objects/plant/line-1/cnc-01/spindle_speed``. An element
  is a browse name matched in any namespace, or qualified by a namespace index (``2:plant``) or
  a namespace URI in braces (``{urn:factory-agent:simulator}plant``). Names containing ``/``
  cannot be written as a path; use a node id for those.

Subscription settings (``sampling_interval_s``, ``queue_size``, ``deadband_abs``,
``deadband_pct``) can be set for the device, a machine, or one node; the nearest one wins.

:class:`AddressSpace` turns addresses into node ids in one session (namespace URIs and browse
paths are resolved again after every reconnect) and splits reads, browses and translations by
the server's OperationLimits.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStringParsingError
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from connectors.base import DeviceConfig

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SECURE_POLICIES = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
T = TypeVar("T")
ADDRESS_HINT = (
    "not a node address: use nsu=<namespace URI>;s=<name> (or i=, g=, b=), ns=<index>;s=<name>,"
    " or a browse path such as /Objects/plant/line-1/cnc-01/spindle_speed"
)


@dataclass(frozen=True, slots=True)
class PathElement:
    """One browse name of a path; namespace given by index, by URI, or not at all (any)."""

    name: str
    index: int | None = None
    uri: str | None = None


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """A parsed node address: a node id (``uri`` or ``index`` + ``identifier``) or a path."""

    text: str
    identifier: str = ""
    index: int = 0
    uri: str | None = None
    path: tuple[PathElement, ...] = ()


_ELEMENT = re.compile(r"\{(?P<uri>[^}]*)\}(?P<n1>[^/]+)|(?:(?P<idx>\d+):)?(?P<n2>[^/{}]+)")


def parse_address(text: str) -> NodeAddress:
    """Parse a node address; raise ``ValueError`` with the accepted forms when it is none.

    >>> parse_address("nsu=urn:x;s=a/b").uri, parse_address("ns=2;i=7").index
    ('urn:x', 2)
    >>> [e.name for e in parse_address("/Objects/2:plant/{urn:x}line-1").path]
    ['Objects', 'plant', 'line-1']
    """
    text = text.strip()
    if text.startswith("/"):
        elements: list[PathElement] = []
        pos = 1
        while pos <= len(text):
            m = _ELEMENT.match(text, pos)
            if m is None or (m.end() < len(text) and text[m.end()] != "/"):
                raise ValueError(f"{ADDRESS_HINT} (bad path element at character {pos + 1})")
            if m["n1"] is not None:
                elements.append(PathElement(m["n1"], uri=m["uri"]))
            else:
                idx = m["idx"]
                elements.append(PathElement(m["n2"], index=None if idx is None else int(idx)))
            pos = m.end() + 1
        return NodeAddress(text, path=tuple(elements))
    uri = None
    rest = text
    if text.startswith("nsu="):
        uri, sep, rest = text[4:].partition(";")
        if not sep or not uri:
            raise ValueError(ADDRESS_HINT)
    try:
        nid = ua.NodeId.from_string(rest)
    except (UaStringParsingError, ValueError):
        raise ValueError(ADDRESS_HINT) from None
    if uri is not None and nid.NamespaceIndex != 0:
        raise ValueError(f"{ADDRESS_HINT} (give nsu= or ns=, not both)")
    plain = ua.NodeId(nid.Identifier, ua.Int16(0), nid.NodeIdType).to_string()
    return NodeAddress(text, identifier=plain, index=nid.NamespaceIndex, uri=uri)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ItemSettings(_Strict):
    """Monitored-item settings; ``None`` inherits from the level above (node < machine < device)."""

    sampling_interval_s: float | None = Field(
        None, ge=0, description="how often the server samples; default: the publishing interval"
    )
    queue_size: int | None = Field(None, ge=1, le=1000, description="samples kept per publish")
    deadband_abs: float | None = Field(None, ge=0, description="report changes larger than this")
    deadband_pct: float | None = Field(
        None, ge=0, le=100, description="report changes larger than this % of the EURange"
    )

    @model_validator(mode="after")
    def _one_deadband(self) -> ItemSettings:
        if self.deadband_abs is not None and self.deadband_pct is not None:
            raise ValueError("give deadband_abs or deadband_pct, not both")
        return self


class OpcUaNodeConfig(ItemSettings):
    """One value of a machine: where it is on the server and what to call it."""

    field: str = Field(pattern=FIELD_PATTERN, description="field name in InfluxDB")
    node_id: str = Field(description="nsu=<uri>;s=<id>, ns=<index>;s=<id> or /Objects/... path")
    unit: str = Field("", description="engineering unit, for people and dashboards")
    low: float | None = Field(None, description="normal range, low end")
    high: float | None = Field(None, description="normal range, high end")

    @field_validator("node_id")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value


class DiscoverConfig(_Strict):
    """Browse below ``root`` and add the variables whose browse names match."""

    root: str = Field(description="where to start: a node id or a browse path")
    include: list[str] = Field(default_factory=lambda: ["*"], description="glob patterns")
    exclude: list[str] = Field(default_factory=list, description="glob patterns to leave out")
    depth: int = Field(3, ge=1, le=10, description="levels below root to search")

    @field_validator("root")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value


class OpcUaMachineConfig(ItemSettings):
    """One machine behind the endpoint: its tags, its nodes, and what to discover."""

    name: str = Field(description="machine name (InfluxDB tag machine)")
    tags: dict[str, str] = Field(default_factory=dict, description="extra InfluxDB tags")
    nodes: list[OpcUaNodeConfig] = Field(default_factory=list, description="values to read")
    discover: DiscoverConfig | None = Field(None, description="find more values by browsing")

    @model_validator(mode="after")
    def _fields(self) -> OpcUaMachineConfig:
        if not self.nodes and self.discover is None:
            raise ValueError("give nodes, discover, or both")
        seen: set[str] = set()
        for n in self.nodes:
            if n.field in seen:
                raise ValueError(f"field {n.field!r} appears twice (field names must be unique)")
            seen.add(n.field)
        return self


class OpcUaConfig(DeviceConfig, ItemSettings):
    """One OPC UA server endpoint: security, login, and the machines read from it."""

    type: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://.+", description="opc.tcp://host:port[/path]")
    allow_insecure: bool = Field(False, description="permit security_policy None (test benches)")
    security_policy: SecurityPolicy = Field("Basic256Sha256", description="message security")
    security_mode: Literal["Sign", "SignAndEncrypt"] = Field(
        "SignAndEncrypt", description="Sign only, or sign and encrypt"
    )
    application_uri: str | None = Field(
        None, description="our application URI; default: the one in our certificate"
    )
    pki_dir: Path = Field(Path("pki"), description="own/, trusted/ and rejected/ live here")
    certificate: Path | None = Field(None, description="our certificate; default pki/own/cert.der")
    private_key: Path | None = Field(None, description="its key; default pki/own/key.pem")
    username: str | None = Field(None, description="login name; anonymous when unset")
    password_env: str | None = Field(None, description="environment variable with the password")
    password_file: Path | None = Field(None, description="file holding the password")
    user_certificate: Path | None = Field(None, description="login by X.509 user certificate")
    user_private_key: Path | None = Field(None, description="key of the user certificate")
    mode: Literal["subscribe", "poll"] = Field("subscribe", description="how values are read")
    keepalive_s: float = Field(
        5.0, gt=0, description="keep-alive period when nothing changes; silent 2x this: reconnect"
    )
    node_retry_s: float = Field(30.0, gt=0, description="how often a failed node is retried")
    session_timeout_s: float = Field(120.0, ge=10, description="server keeps our session this long")
    max_message_bytes: int = Field(
        16 * 1024 * 1024,
        ge=65536,
        le=2**31 - 1,
        description="largest message accepted from the server (asyncua alone: unlimited)",
    )
    machines: list[OpcUaMachineConfig] = Field(min_length=1)

    @field_validator("security_policy", mode="before")
    @classmethod
    def _yaml_null(cls, value: Any) -> Any:
        return "None" if value is None else value

    @field_validator("security_policy")
    @classmethod
    def _insecure(cls, value: str, info: ValidationInfo) -> str:
        if value == "None" and not info.data.get("allow_insecure", False):
            raise ValueError(
                "policy None sends everything in clear text, passwords included: choose "
                f"{', '.join(SECURE_POLICIES)}, or set allow_insecure: true (test benches only)"
            )
        return value

    @model_validator(mode="after")
    def _login(self) -> OpcUaConfig:
        sources = [s for s in (self.password_env, self.password_file) if s is not None]
        if self.username is not None and len(sources) != 1:
            raise ValueError(
                f"username {self.username!r} needs exactly one of password_env or password_file"
                " (passwords are never written in the configuration)"
            )
        if self.username is None and sources:
            raise ValueError("password_env/password_file given without username")
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ValueError("user_certificate and user_private_key go together")
        if self.user_certificate is not None and self.username is not None:
            raise ValueError("log in by username or by user_certificate, not both")
        names = [m.name for m in self.machines]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"machine {name!r} appears twice (machine names must be unique)")
        return self

    @property
    def certificate_path(self) -> Path:
        return self.certificate or self.pki_dir / "own" / "cert.der"

    @property
    def private_key_path(self) -> Path:
        return self.private_key or self.pki_dir / "own" / "key.pem"

    @property
    def default_application_uri(self) -> str:
        return self.application_uri or f"urn:{socket.gethostname()}:factory-agent"


@dataclass(frozen=True, slots=True)
class Effective:
    """Settings of one monitored item after inheritance, in OPC UA units (ms)."""

    sampling_ms: float
    queue_size: int
    deadband_type: int
    deadband_value: float


def effective(device: OpcUaConfig, machine: ItemSettings, node: ItemSettings | None) -> Effective:
    """The nearest setting wins: node, then machine, then device."""
    levels = [lv for lv in (node, machine, device) if lv is not None]

    def pick(name: str) -> Any:
        return next((getattr(lv, name) for lv in levels if getattr(lv, name) is not None), None)

    sampling = pick("sampling_interval_s")
    dead = next(
        (lv for lv in levels if lv.deadband_abs is not None or lv.deadband_pct is not None), None
    )
    kind, value = ua.DeadbandType.None_, 0.0
    if dead is not None and dead.deadband_abs is not None:
        kind, value = ua.DeadbandType.Absolute, dead.deadband_abs
    elif dead is not None and dead.deadband_pct is not None:
        kind, value = ua.DeadbandType.Percent, dead.deadband_pct
    return Effective(
        -1.0 if sampling is None else sampling * 1000.0,  # -1: the publishing interval
        pick("queue_size") or 1,
        int(kind),
        value,
    )


# -- addressing at run time ------------------------------------------------------------------------

DEFAULT_LIMIT = 1000  # per request, when the server states no OperationLimits


def nid(identifier: int | str, namespace: int = 0) -> ua.NodeId:
    """A NodeId from plain values (asyncua annotates marker types such as ``ua.Int16``)."""
    return ua.NodeId(identifier, namespace)  # type: ignore[arg-type]


_HIERARCHICAL = nid(ObjectIds.HierarchicalReferences)
HAS_PROPERTY = nid(ObjectIds.HasProperty)
ROOT = nid(ObjectIds.RootFolder)
_OPS = "Server_ServerCapabilities_OperationLimits_"
_LIMITS = {
    "max_read": getattr(ObjectIds, _OPS + "MaxNodesPerRead"),
    "max_browse": getattr(ObjectIds, _OPS + "MaxNodesPerBrowse"),
    "max_monitored": getattr(ObjectIds, _OPS + "MaxMonitoredItemsPerCall"),
    "max_translate": getattr(ObjectIds, _OPS + "MaxNodesPerTranslateBrowsePathsToNodeIds"),
}


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``."""
    for i in range(0, len(items), max(1, size)):
        yield items[i : i + size]


def plain(nid: ua.NodeId) -> ua.NodeId:
    """A NodeId without the ExpandedNodeId extras (hashable and comparable)."""
    return ua.NodeId(nid.Identifier, nid.NamespaceIndex, nid.NodeIdType)


def _property(name: str) -> ua.RelativePathElement:
    """A path element: the property ``name`` of the node (forward HasProperty)."""
    element = ua.RelativePathElement(ReferenceTypeId=HAS_PROPERTY,
                                     TargetName=ua.QualifiedName(name, ua.UInt16(0)))  # fmt: skip
    element.IsInverse = False  # type: ignore[assignment]  # asyncua annotates a marker class
    return element


class AddressSpace:
    """Browse, resolve and read through one session, split by the server's operation limits.

    Every request has the ``timeout_s`` of the device; ``on_read`` is told each read's round trip.
    """

    def __init__(
        self, client: Client, timeout_s: float, on_read: Callable[[float], None] | None = None
    ) -> None:
        self.client = client
        self.session = client.uaclient.session
        self.timeout_s = timeout_s
        self.on_read = on_read
        self.namespaces: list[str] = []
        self.max_read = self.max_browse = self.max_monitored = self.max_translate = DEFAULT_LIMIT

    async def load(self) -> None:
        """Read the namespace array and the OperationLimits (absent or 0: the default)."""
        nodes = [nid(ObjectIds.Server_NamespaceArray), *(nid(oid) for oid in _LIMITS.values())]
        dvs = await self.read(nodes)
        self.namespaces = list(dvs[0].Value.Value or []) if dvs[0].Value else []
        for name, dv in zip(_LIMITS, dvs[1:], strict=True):
            good = dv.StatusCode is None or dv.StatusCode.is_good()
            value = dv.Value.Value if dv.Value is not None and good else None
            if isinstance(value, int) and value > 0:
                setattr(self, name, value)

    async def read(
        self, nodes: Sequence[ua.NodeId], attribute: int = AttributeIds.Value
    ) -> list[ua.DataValue]:
        out: list[ua.DataValue] = []
        for part in chunks(nodes, self.max_read):
            params = ua.ReadParameters(TimestampsToReturn=ua.TimestampsToReturn.Both)
            params.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=attribute) for n in part]
            t0 = time.perf_counter()
            out += await asyncio.wait_for(self.session.read(params), self.timeout_s)
            if self.on_read is not None:
                self.on_read(time.perf_counter() - t0)
        return out

    async def children(self, nodes: Sequence[ua.NodeId]) -> list[list[ua.ReferenceDescription]]:
        """Forward hierarchical references of each node (continuation points followed)."""
        out: list[list[ua.ReferenceDescription]] = []
        for part in chunks(nodes, self.max_browse):
            params = ua.BrowseParameters()
            params.NodesToBrowse = [
                ua.BrowseDescription(NodeId=n, ReferenceTypeId=_HIERARCHICAL, IncludeSubtypes=True,
                                     ResultMask=ua.BrowseResultMask.All)
                for n in part
            ]  # fmt: skip
            for res in await asyncio.wait_for(self.session.browse(params), self.timeout_s):
                refs = list(res.References or [])
                point = res.ContinuationPoint
                while point:
                    more = ua.BrowseNextParameters(ContinuationPoints=[point])
                    nxt = await asyncio.wait_for(self.session.browse_next(more), self.timeout_s)
                    refs += nxt[0].References or []
                    point = nxt[0].ContinuationPoint
                out.append(refs)
        return out

    def _matches(self, name: ua.QualifiedName, element: PathElement) -> bool:
        if name.Name != element.name:
            return False
        if element.index is not None:
            return bool(name.NamespaceIndex == element.index)
        if element.uri is not None:
            ns = self.namespaces
            return name.NamespaceIndex < len(ns) and ns[name.NamespaceIndex] == element.uri
        return True

    async def resolve(self, addresses: Sequence[NodeAddress]) -> list[ua.NodeId | int]:
        """The NodeId of each address in this session, or the status code saying why not."""
        out: list[ua.NodeId | int] = [StatusCodes.BadNodeIdUnknown] * len(addresses)
        walks: dict[int, ua.NodeId] = {}
        for i, a in enumerate(addresses):
            if a.path:
                walks[i] = ROOT
                continue
            idx = a.index if a.uri is None else None
            if a.uri is not None and a.uri in self.namespaces:
                idx = self.namespaces.index(a.uri)
            if idx is not None:
                nid = ua.NodeId.from_string(a.identifier)
                out[i] = ua.NodeId(nid.Identifier, ua.Int16(idx), nid.NodeIdType)
        level = 0
        while walks:
            parents = list(dict.fromkeys(walks.values()))
            refs = dict(zip(parents, await self.children(parents), strict=True))
            for i, parent in list(walks.items()):
                path = addresses[i].path
                want = path[level]
                hit = next((r for r in refs[parent] if self._matches(r.BrowseName, want)), None)
                if hit is None:
                    out[i] = StatusCodes.BadNoMatch
                    del walks[i]
                elif level + 1 == len(path):
                    out[i] = plain(hit.NodeId)
                    del walks[i]
                else:
                    walks[i] = plain(hit.NodeId)
            level += 1
        return out

    async def discover(self, root: ua.NodeId, spec: DiscoverConfig) -> list[tuple[str, ua.NodeId]]:
        """Variables below ``root`` (properties left out) whose browse name the globs select."""
        include = [p.lower() for p in spec.include]
        exclude = [p.lower() for p in spec.exclude]
        found: list[tuple[str, ua.NodeId]] = []
        seen, level = {root}, [root]
        for _ in range(spec.depth):
            below: list[ua.NodeId] = []
            for refs in await self.children(level):
                for r in refs:
                    nid = plain(r.NodeId)
                    if r.ReferenceTypeId == HAS_PROPERTY or nid in seen:
                        continue
                    seen.add(nid)
                    below.append(nid)
                    name = str(r.BrowseName.Name)
                    low = name.lower()
                    if r.NodeClass == ua.NodeClass.Variable and (
                        any(fnmatchcase(low, p) for p in include)
                        and not any(fnmatchcase(low, p) for p in exclude)
                    ):
                        found.append((name, nid))
            level = below
        return found

    async def properties(self, nodes: Sequence[ua.NodeId]) -> list[tuple[str, float, float]]:
        """(unit, low, high) of each node from EngineeringUnits and EURange ("" and NaN if none)."""
        paths = [
            ua.BrowsePath(StartingNode=n, RelativePath=ua.RelativePath(Elements=[_property(prop)]))
            for n in nodes
            for prop in ("EngineeringUnits", "EURange")
        ]
        targets: list[ua.NodeId | None] = []
        for part in chunks(paths, self.max_translate):
            call = self.session.translate_browsepaths_to_nodeids(list(part))
            for res in await asyncio.wait_for(call, self.timeout_s):
                ok = res.StatusCode.is_good() and res.Targets
                targets.append(plain(res.Targets[0].TargetId) if ok else None)
        found = [t for t in targets if t is not None]
        values = iter([dv.Value.Value if dv.Value else None for dv in await self.read(found)])
        props = [next(values) if t is not None else None for t in targets]
        out: list[tuple[str, float, float]] = []
        for eu, rng in zip(props[0::2], props[1::2], strict=True):
            unit = eu.DisplayName.Text or "" if isinstance(eu, ua.EUInformation) else ""
            low, high = (rng.Low, rng.High) if isinstance(rng, ua.Range) else (math.nan, math.nan)
            out.append((unit, low, high))
        return out

    def nsu(self, nid: ua.NodeId) -> str:
        """The namespace-independent text of a node id (``nsu=<uri>;s=...``; plain for ns 0)."""
        text = ua.NodeId(nid.Identifier, ua.Int16(0), nid.NodeIdType).to_string()
        ns = nid.NamespaceIndex
        if ns == 0 or ns >= len(self.namespaces):
            return text if ns == 0 else nid.to_string()
        return f"nsu={self.namespaces[ns]};{text}"
