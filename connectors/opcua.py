"""OPC UA connector (asyncua): subscriptions or polling, secure sessions, one reconnect owner.

Configuration, node addresses and their resolution live in :mod:`connectors.opcua_config`;
opening (certificates, trust, endpoint, login) and closing sessions, and :func:`browse`, in
:mod:`connectors.opcua_security`.

Design notes:

- **Timestamps.** A subscription publish is split by machine and by *source timestamp*: one
  Reading per machine per distinct source timestamp, so a value is never given a time it did not
  have (usually a server stamps a machine's values together: one Reading per machine per
  publish; with ``queue_size`` > 1 each queued sample becomes its own Reading). A poll is a
  snapshot: one Reading per machine, at the newest source timestamp of its values (an unchanged
  value still holds at that instant; OPC UA stamps a value with the time it last changed).
  Without a source timestamp the server timestamp is used, then the acquisition time.
- **Quality.** Bad values are delivered as ``None`` with the StatusCode and its name, uncertain
  ones keep their value; nothing is dropped or invented. A node that cannot be used
  (BadNodeIdUnknown, an unknown namespace, a browse path that matches nothing, ...) is put
  aside: its field is reported bad once, the others keep flowing, and it is retried every
  ``node_retry_s``.
- **Reconnection has one owner**, this connector. asyncua's ``auto_reconnect`` is off (its
  supervisor then only notices a lost transport and stops), and asyncua's subscription objects
  are not used, so its stale-subscription watchdog has nothing to recreate. A loss (socket
  closed, keep-alive read of ServerStatus failed, no publish response for two keep-alive
  periods, a bad subscription status) tears the whole client down: its publish task is
  cancelled and awaited, so no publish request of the old session stays in flight. Then a new
  session, subscription and monitored items are made after a capped, jittered backoff.
  ``stats.publish_responses`` counts every publish response, so a publish storm would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from asyncua import ua
from asyncua.client.ua_client import UaClientState
from asyncua.observer import Observer
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from connectors import opcua_speedups
from connectors.base import ConnectorError, Ticker
from connectors.health import Backoff, DeviceHealth
from connectors.opcua_config import (
    AddressSpace,
    Effective,
    NodeAddress,
    OpcUaConfig,
    chunks,
    effective,
    nid,
    parse_address,
)
from connectors.opcua_security import (
    BoundedClient,
    BrowseRow,
    browse,
    cancel,
    close_client,
    describe,
    open_client,
)
from connectors.types import FieldValue, Quality, Reading, SignalInfo

__all__ = ["BrowseRow", "OpcUaConfig", "OpcUaConnector", "OpcUaStats", "browse"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
QUEUE_READINGS = 10_000
SERVER_TIME = nid(ObjectIds.Server_ServerStatus_CurrentTime)
#: keep-alive reads at most this often: a silent cut is still seen within 0.5 s + timeout_s
KEEPALIVE_MIN_S = 0.5
#: Status codes that mean "this node cannot be used as configured" rather than "bad value".
NODE_FAILURES = frozenset({
    StatusCodes.BadNodeIdUnknown, StatusCodes.BadNodeIdInvalid, StatusCodes.BadNoMatch,
    StatusCodes.BadAttributeIdInvalid, StatusCodes.BadNotReadable, StatusCodes.BadUserAccessDenied,
    StatusCodes.BadNotSupported, StatusCodes.BadFilterNotAllowed,
    StatusCodes.BadMonitoredItemFilterUnsupported, StatusCodes.BadMonitoredItemFilterInvalid,
    StatusCodes.BadDeadbandFilterInvalid, StatusCodes.BadTooManyMonitoredItems,
})  # fmt: skip


@dataclass
class OpcUaStats:
    """Counters beyond :class:`DeviceHealth`: requests by type, publish traffic, sessions, drops.

    ``requests`` counts completed requests by type (``ReadRequest``, ``PublishRequest``, ...),
    answered or failed; ``publish_responses`` only the publish requests the server answered.
    """

    publish_responses: int = 0
    data_changes: int = 0
    sessions: int = 0
    dropped: int = 0
    requests: dict[str, int] = field(default_factory=dict)


class _Counter(Observer):
    """asyncua request observer: counts requests, and publish responses (ServiceFaults too)."""

    def __init__(self, stats: OpcUaStats) -> None:
        self.stats = stats

    def on_request(self, request_type: str, duration: float, error: BaseException | None) -> None:
        requests = self.stats.requests
        requests[request_type] = requests.get(request_type, 0) + 1
        if request_type == "PublishRequest" and (
            error is None or isinstance(error, UaStatusCodeError)
        ):
            self.stats.publish_responses += 1


@dataclass
class _Field:
    machine: int
    name: str
    address: NodeAddress
    settings: Effective
    node_id: ua.NodeId | None = None
    handle: int = 0  # client handle of its monitored item
    failure: int = 0  # status code while put aside, else 0
    retry_at: float = 0.0


def timed_out(exc: BaseException) -> bool:
    """Whether a failure was a timeout (a silent link), looking through its causes."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def to_ns(ts: datetime) -> int:
    """A datetime (naive means UTC) in ns since the epoch, at its µs resolution."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - EPOCH) // MICROSECOND * 1000


def timestamp_ns(dv: ua.DataValue) -> int | None:
    """The source timestamp of a value, else its server timestamp, in ns since the epoch."""
    ts = dv.SourceTimestamp or dv.ServerTimestamp
    return None if ts is None else to_ns(ts)


def convert(dv: ua.DataValue) -> tuple[FieldValue, Quality | None]:
    """A DataValue as (field value, quality when not good): bad -> ``None``, uncertain kept."""
    code = int(dv.StatusCode.value) if dv.StatusCode is not None else 0
    if code >> 30 >= 2:
        return None, Quality.bad(code, ua.StatusCode(code).name)  # type: ignore[arg-type]
    raw = dv.Value.Value if dv.Value is not None else None
    value: FieldValue
    if isinstance(raw, bool | str | float):
        value = raw
    elif isinstance(raw, int):
        value = int(raw)  # enumerations too
    elif isinstance(raw, ua.LocalizedText):
        value = raw.Text
    elif isinstance(raw, datetime):
        value = to_ns(raw)
    else:
        what = "no value" if raw is None else f"unsupported value type {type(raw).__name__}"
        return None, Quality.bad(code, what)
    if isinstance(value, float) and not math.isfinite(value):
        return None, Quality.bad(code, str(value))
    if code >> 30 == 1:
        return value, Quality.uncertain(code, ua.StatusCode(code).name)  # type: ignore[arg-type]
    return value, None


def configured_signals(cfg: OpcUaConfig) -> dict[str, dict[str, SignalInfo]]:
    """Unit and range of every configured field, by machine (NaN where no range is given)."""
    return {
        m.name: {
            n.field: SignalInfo(n.field, n.unit, math.nan if n.low is None else n.low,
                                math.nan if n.high is None else n.high)
            for n in m.nodes
        }
        for m in cfg.machines
    }  # fmt: skip


def field_name(browse_name: str) -> str:
    """A browse name as a field name: other characters become ``_``."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", browse_name)
    return name if re.match(r"[A-Za-z_]", name) else f"_{name}"


class OpcUaConnector:
    """Reads the configured nodes of one OPC UA endpoint and yields one Reading per machine."""

    def __init__(self, config: OpcUaConfig) -> None:
        opcua_speedups.install()  # faster asyncua decoding of data changes, same results
        self.config = config
        self.health = DeviceHealth(config.name)
        self.backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self.stats = OpcUaStats()
        self.log = structlog.get_logger(__name__).bind(device=config.name)
        #: unit and range per machine and field; discovered fields join after connecting
        self.signals = configured_signals(config)
        self._observer = _Counter(self.stats)
        self._client: BoundedClient | None = None
        self._space: AddressSpace | None = None
        self._fields: list[_Field] = []
        self._reported: dict[tuple[int, str], int] = {}
        self._tags = [
            {"machine": m.name, "device": config.name, "protocol": "opcua", **m.tags}
            for m in config.machines
        ]
        self._queue: asyncio.Queue[Reading | ConnectorError | None] = asyncio.Queue(QUEUE_READINGS)
        self._runner: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._last_publish = 0.0
        self._stale_after_s = math.inf
        self._subscription = 0
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open a session; raise ConnectorError for mistakes, else keep retrying in readings().

        After :meth:`close` the connector can be connected again (the agent restarts a device
        that failed that way).
        """
        if self._closed:
            self._closed, self._runner = False, None
            self._queue = asyncio.Queue(QUEUE_READINGS)
        if self._client is not None or (self._runner is not None and not self._runner.done()):
            return  # connected, or readings() is reconnecting: one owner only
        if self.config.security_policy == "None":
            hint = "security_policy None: traffic and passwords travel in clear text"
            self.log.warning("security_disabled", endpoint=self.config.endpoint, hint=hint)
        try:
            await self._open()
        except ConnectorError as exc:
            if not exc.retryable:
                raise
            self.health.failed(str(exc))
        except Exception as exc:
            self.health.failed(f"cannot open a session at {self.config.endpoint}: {describe(exc)}")

    async def readings(self) -> AsyncIterator[Reading]:
        """Yield Readings until closed; raise ConnectorError only for a non-retryable mistake."""
        if self._runner is None and not self._closed:
            self._runner = asyncio.create_task(self._run(), name=f"opcua:{self.config.name}")
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, ConnectorError):
                raise item
            yield item

    async def close(self) -> None:
        """Stop reading, close the session (deleting its subscription), end readings()."""
        self._closed = True
        runner = self._runner
        # Python 3.11's wait_for can swallow a cancellation that arrives as its inner call ends
        # (gh-86296): cancel until the runner is really gone; _run also stops once closed.
        while runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait({runner}, timeout=1.0)
        await self._discard(graceful=True)
        self._emit(None)

    # -- the one owner of the connection -------------------------------------------------------
    async def _run(self) -> None:
        try:
            while not self._closed:
                if self._client is None:
                    silent = False
                    try:
                        await self._open()
                    except ConnectorError as exc:
                        self.health.failed(str(exc))
                        if not exc.retryable:
                            self._emit(exc)
                            return
                        silent = timed_out(exc)
                    except Exception as exc:
                        where = self.config.endpoint
                        self.health.failed(f"cannot open a session at {where}: {describe(exc)}")
                        silent = timed_out(exc)
                    if self._client is None:
                        b = self.backoff
                        await asyncio.sleep(b.after_timeout() if silent else b.next())
                        continue
                poll = self.config.mode == "poll"
                reason = await (self._poll_loop() if poll else self._watch())
                self.health.failed(reason)
                await self._discard(graceful=False)
                await asyncio.sleep(self.backoff.next())
        except Exception as exc:  # a bug: hand it to the consumer rather than hang
            error = ConnectorError(self.config.name, f"connector stopped: {describe(exc)}")
            error.__cause__ = exc
            self._emit(error)

    async def _open(self) -> None:
        client = await open_client(self.config, self._observer)
        space = AddressSpace(client, self.config.timeout_s, self._on_read)
        self._client, self._space = client, space
        self._lost.clear()

        def on_state(state: UaClientState) -> None:
            # Called inside the socket's connection_lost: cancelling the publish task here,
            # before it wakes up, spares asyncua's "Publish iteration crashed" traceback.
            if state is UaClientState.DISCONNECTED and self._client is client:
                cancel(client.uaclient.session._publish_task)
                self._signal_lost("connection lost: the server closed it")

        client.uaclient._add_state_listener(on_state)  # private: the public one is async
        try:
            await space.load()
            await self._build_fields(space)
            if self.config.mode == "subscribe":
                await self._subscribe(client, space)
        except BaseException:
            await self._discard(graceful=True)
            raise
        self.stats.sessions += 1
        self.backoff.reset()
        self.health.succeeded()

    def _signal_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def _discard(self, *, graceful: bool) -> None:
        """Tear the client down completely: no task and no publish request of it survives."""
        client, self._client, self._space = self._client, None, None
        if client is not None:
            await close_client(client, self.config.timeout_s, graceful=graceful)

    # -- nodes ---------------------------------------------------------------------------------
    async def _build_fields(self, space: AddressSpace) -> None:
        """Resolve configured nodes, run discovery; put aside what cannot be used."""
        cfg = self.config
        fields = [
            _Field(mi, n.field, parse_address(n.node_id), effective(cfg, m, n))
            for mi, m in enumerate(cfg.machines)
            for n in m.nodes
        ]
        ids = await space.resolve([f.address for f in fields])
        signals = configured_signals(cfg)
        for mi, m in enumerate(cfg.machines):
            if m.discover is None:
                continue
            (root,) = await space.resolve([parse_address(m.discover.root)])
            if isinstance(root, int):
                self.log.warning("discovery_failed", machine=m.name, root=m.discover.root,
                                 status=ua.StatusCode(root).name)  # type: ignore[arg-type]  # fmt: skip
                continue
            found = [(field_name(n), i) for n, i in await space.discover(root, m.discover)]
            found = [(n, i) for n, i in dict(found).items() if n not in signals[m.name]]
            for (name, node), (unit, low, high) in zip(
                found, await space.properties([i for _, i in found]), strict=True
            ):
                address = NodeAddress(space.nsu(node))
                fields.append(_Field(mi, name, address, effective(cfg, m, None), node))
                ids.append(node)
                signals[m.name][name] = SignalInfo(name, unit, low, high)
            self.log.info("nodes_discovered", machine=m.name, fields=[n for n, _ in found])
        self._fields, self.signals = fields, signals
        for handle, (f, got) in enumerate(zip(fields, ids, strict=True), start=1):
            f.handle = handle
            if isinstance(got, int):
                self._isolate(f, got)
            else:
                f.node_id = got

    def _isolate(self, f: _Field, code: int) -> None:
        """Put a node aside: report its field bad once per episode, retry it later."""
        f.failure, f.node_id = code, None  # resolved again when retried
        f.retry_at = time.monotonic() + self.config.node_retry_s
        key = (f.machine, f.name)
        if self._reported.get(key) == code:
            return
        self._reported[key] = code
        name = ua.StatusCode(code).name  # type: ignore[arg-type]
        self.log.warning("node_failed", machine=self.config.machines[f.machine].name,
                         field=f.name, node_id=f.address.text, status=name)  # fmt: skip
        quality = {f.name: Quality.bad(code, name)}
        self._reading(f.machine, time.time_ns(), {f.name: None}, quality)

    def _recovered(self, f: _Field) -> None:
        f.failure = 0
        if self._reported.pop((f.machine, f.name), None) is not None:
            self.log.info("node_recovered", machine=self.config.machines[f.machine].name,
                          field=f.name)  # fmt: skip

    async def _retry_failed(self) -> None:
        space, now = self._space, time.monotonic()
        due = [f for f in self._fields if f.failure and f.retry_at <= now]
        if space is None or not due:
            return
        await space.load()  # a namespace may have appeared
        ok: list[_Field] = []
        for f, got in zip(due, await space.resolve([f.address for f in due]), strict=True):
            if isinstance(got, int):
                self._isolate(f, got)
            else:
                f.node_id, f.failure = got, 0
                ok.append(f)
        if ok and self.config.mode == "subscribe" and self._client is not None:
            await self._monitor(space, ok)

    # -- subscription --------------------------------------------------------------------------
    async def _subscribe(self, client: BoundedClient, space: AddressSpace) -> None:
        cfg = self.config
        keepalive = max(1, math.ceil(cfg.keepalive_s / cfg.interval_s))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=cfg.interval_s * 1000,
            RequestedLifetimeCount=max(
                3 * keepalive, math.ceil(cfg.session_timeout_s / cfg.interval_s)
            ),
            RequestedMaxKeepAliveCount=keepalive,
            PublishingEnabled=True,
        )

        def on_publish(result: ua.PublishResult) -> None:
            self._on_publish(client, result)

        create = client.uaclient.session.create_subscription(params, on_publish)
        res = await asyncio.wait_for(create, cfg.timeout_s)
        self._subscription = res.SubscriptionId
        period_s = res.RevisedPublishingInterval / 1000 * max(1, res.RevisedMaxKeepAliveCount)
        self._stale_after_s = 2 * period_s + cfg.timeout_s
        self._last_publish = time.monotonic()
        await self._monitor(
            space, [f for f in self._fields if f.node_id is not None and not f.failure]
        )

    async def _monitor(self, space: AddressSpace, fields: list[_Field]) -> None:
        """Create monitored items, split by MaxMonitoredItemsPerCall; put aside the refused."""
        for part in chunks(fields, space.max_monitored):
            items = []
            for f in part:
                s = f.settings
                mp = ua.MonitoringParameters(f.handle, s.sampling_ms, QueueSize=s.queue_size)
                if s.deadband_type:
                    mp.Filter = ua.DataChangeFilter(ua.DataChangeTrigger.StatusValue,
                                                    s.deadband_type, s.deadband_value)  # fmt: skip
                items.append(ua.MonitoredItemCreateRequest(
                    ua.ReadValueId(NodeId=f.node_id, AttributeId=AttributeIds.Value),
                    ua.MonitoringMode.Reporting, mp))  # fmt: skip
            params = ua.CreateMonitoredItemsParameters(
                # Source only: we never use the server's stamp, and each one costs a decode.
                self._subscription,
                ua.TimestampsToReturn.Source,
                items,
            )
            results = await asyncio.wait_for(
                space.session.create_monitored_items(params), self.config.timeout_s
            )
            for f, res in zip(part, results, strict=True):
                if res.StatusCode.is_good():
                    self._recovered(f)
                else:
                    self._isolate(f, int(res.StatusCode.value))

    def _on_publish(self, client: BoundedClient, result: ua.PublishResult) -> None:
        """One publish: group data changes by machine and source timestamp into Readings."""
        if client is not self._client:
            return  # a late answer to a session already discarded
        self._last_publish = time.monotonic()
        msg = result.NotificationMessage
        publish_ns = to_ns(msg.PublishTime) if msg.PublishTime else time.time_ns()
        groups: dict[tuple[int, int], tuple[dict[str, FieldValue], dict[str, Quality]]] = {}
        for data in msg.NotificationData or []:
            if isinstance(data, ua.StatusChangeNotification):
                if not data.Status.is_good():
                    self._signal_lost(f"subscription status {data.Status.name}")
                continue
            if not isinstance(data, ua.DataChangeNotification):
                continue
            fields = self._fields
            n_fields = len(fields)
            last_dt: datetime | None = None
            last_ns = publish_ns
            for item in data.MonitoredItems:
                if not 0 < item.ClientHandle <= n_fields:
                    continue
                f = fields[item.ClientHandle - 1]
                dv = item.Value
                dt = dv.SourceTimestamp or dv.ServerTimestamp
                if dt is not last_dt and dt != last_dt:  # a tick's items share one timestamp
                    last_dt, last_ns = dt, (to_ns(dt) if dt is not None else publish_ns)
                group = groups.get((f.machine, last_ns))
                if group is None:
                    group = groups[(f.machine, last_ns)] = ({}, {})
                sc, variant = dv.StatusCode, dv.Value
                if (sc is None or not sc.value) and variant is not None:
                    raw = variant.Value
                    # the common case: a good, finite double, taken as it is (NaN is marked bad)
                    if type(raw) is float and raw - raw == 0.0:
                        group[0][f.name] = raw
                        continue
                group[0][f.name], q = convert(dv)
                if q is not None:
                    group[1][f.name] = q
            self.stats.data_changes += len(data.MonitoredItems)
        for (mi, ts), (values, quality) in sorted(groups.items(), key=lambda g: g[0][1]):
            self._reading(mi, ts, values, quality)
        if groups:
            self.health.succeeded()

    async def _watch(self) -> str:
        """Keep-alive: read ServerStatus every interval (RTT), watch publishes; return why lost.

        Every interval, but not more often than :data:`KEEPALIVE_MIN_S`: at a 100 ms publishing
        interval ten reads a second cost more than the publishes they watch over.
        """
        period_s = max(self.config.interval_s, KEEPALIVE_MIN_S)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), period_s)
            space = self._space
            if self._lost.is_set() or space is None:
                return self._lost_reason or "session closed"
            try:
                await space.read([SERVER_TIME])
            except Exception as exc:
                return f"keep-alive read of ServerStatus failed: {describe(exc)}"
            silent = time.monotonic() - self._last_publish
            if silent > self._stale_after_s:
                return f"no publish response for {silent:.1f} s"
            self.health.succeeded()
            try:
                await self._retry_failed()
            except Exception as exc:
                return f"retrying failed nodes failed: {describe(exc)}"

    # -- polling -------------------------------------------------------------------------------
    async def _poll_loop(self) -> str:
        ticker = Ticker(self.config.interval_s)
        while True:
            await ticker.wait()
            self.health.missed_polls = ticker.missed
            if self._lost.is_set():
                return self._lost_reason
            try:
                for reading in await self.poll():
                    self._emit(reading)
                await self._retry_failed()
            except Exception as exc:
                self.health.failed_polls += 1
                return f"poll failed: {describe(exc)}"

    async def poll(self) -> list[Reading]:
        """Read every usable node once (split by MaxNodesPerRead); one Reading per machine."""
        space = self._space
        if space is None:
            raise ConnectorError(self.config.name, "not connected")
        active = [f for f in self._fields if f.node_id is not None and not f.failure]
        dvs = await space.read([f.node_id for f in active if f.node_id is not None])
        n = len(self.config.machines)
        values: list[dict[str, FieldValue]] = [{} for _ in range(n)]
        quality: list[dict[str, Quality]] = [{} for _ in range(n)]
        newest: list[int | None] = [None] * n
        for f, dv in zip(active, dvs, strict=True):
            code = int(dv.StatusCode.value) if dv.StatusCode is not None else 0
            if (code & 0xFFFF0000) in NODE_FAILURES:
                self._isolate(f, code)
                continue
            self._recovered(f)
            ts = timestamp_ns(dv)
            if ts is not None and (newest[f.machine] or 0) < ts:
                newest[f.machine] = ts
            values[f.machine][f.name], q = convert(dv)
            if q is not None:
                quality[f.machine][f.name] = q
        self.health.polls += 1
        self.health.succeeded()
        now = time.time_ns()
        return [
            self._make(mi, newest[mi] or now, values[mi], quality[mi])
            for mi in range(n)
            if values[mi]
        ]

    # -- output --------------------------------------------------------------------------------
    def _on_read(self, seconds: float) -> None:
        self.health.record_rtt(seconds)

    def _make(
        self, mi: int, ts: int, values: dict[str, FieldValue], quality: dict[str, Quality]
    ) -> Reading:
        self.health.readings += 1
        self.health.bad_values += len(quality)
        return Reading(self.config.machines[mi].name, ts, values, dict(self._tags[mi]), quality)

    def _reading(
        self, mi: int, ts: int, values: dict[str, FieldValue], quality: dict[str, Quality]
    ) -> None:
        self._emit(self._make(mi, ts, values, quality))

    def _emit(self, item: Reading | ConnectorError | None) -> None:
        """Queue for readings(); when full, drop the oldest and count it (never block)."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._queue.get_nowait()
            self.stats.dropped += 1
            if self.stats.dropped % 1000 == 1:
                self.log.warning("readings_dropped", dropped=self.stats.dropped)
            self._queue.put_nowait(item)
