"""The faster decoding functions give asyncua's own results for every input."""

from __future__ import annotations

import datetime
import random

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua import uatypes
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from connectors import opcua_speedups as fast


def outcome(fn, arg):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(arg))
    except Exception as exc:
        return ("raised", type(exc))


@pytest.mark.parametrize(
    "arg",
    [*range(-3, 70), ua.NodeId(11), ua.NodeId(30), ua.NodeId("s", 2), "11", 11.0, True, None],
)
def test_variant_type_as_asyncua(arg: object) -> None:
    assert outcome(fast.datatype_to_varianttype, arg) == outcome(fast._DATATYPE_TO_VARIANTTYPE, arg)


def test_datetime_as_asyncua_and_shared() -> None:
    rng = random.Random(5)
    edges = [-1, 0, 1, uatypes.MAX_OPC_FILETIME - 1, uatypes.MAX_OPC_FILETIME, 2**63 - 1]
    epochs = edges + [rng.randrange(0, uatypes.MAX_OPC_FILETIME) for _ in range(2000)]
    for e in epochs:
        assert fast.win_epoch_to_datetime(e) == fast._WIN_EPOCH_TO_DATETIME(e)
    assert fast.win_epoch_to_datetime(epochs[-1]) is fast.win_epoch_to_datetime(epochs[-1])
    assert len(fast._DATETIMES) <= fast.DATETIME_CACHE  # bounded


def publish_result() -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    items = []
    for m in range(3):
        ts = now + datetime.timedelta(milliseconds=m)
        values = [
            ua.Variant(1.25 + m, ua.VariantType.Double),
            ua.Variant(7, ua.VariantType.Int32),
            ua.Variant("text", ua.VariantType.String),
            ua.Variant([1.0, 2.0], ua.VariantType.Double),
            ua.Variant(True, ua.VariantType.Boolean),
        ]
        for k, v in enumerate(values):
            dv = ua.DataValue(v, SourceTimestamp=ts, ServerTimestamp=now)
            items.append(ua.MonitoredItemNotification(ClientHandle=m * 10 + k, Value=dv))
    bad = ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown))
    items.append(ua.MonitoredItemNotification(ClientHandle=99, Value=bad))
    msg = ua.NotificationMessage(
        SequenceNumber=1,
        PublishTime=now,
        NotificationData=[ua.DataChangeNotification(MonitoredItems=items)],
    )
    return struct_to_binary(ua.PublishResult(SubscriptionId=1, NotificationMessage=msg))


def test_installed_decoder_gives_the_same_publish_result(monkeypatch: pytest.MonkeyPatch) -> None:
    data = publish_result()
    monkeypatch.setattr(ua, "datatype_to_varianttype", fast._DATATYPE_TO_VARIANTTYPE)
    monkeypatch.setattr(ua, "win_epoch_to_datetime", fast._WIN_EPOCH_TO_DATETIME)
    theirs = struct_from_binary(ua.PublishResult, Buffer(data))
    fast.install()
    assert ua.datatype_to_varianttype is fast.datatype_to_varianttype
    ours = struct_from_binary(ua.PublishResult, Buffer(data))
    assert ours == theirs
    items = ours.NotificationMessage.NotificationData[0].MonitoredItems
    assert items[0].Value.Value.VariantType is ua.VariantType.Double
    assert items[1].Value.SourceTimestamp is items[0].Value.SourceTimestamp  # shared
