"""Two hot spots of asyncua's binary decoding, replaced by equivalent faster functions.

Profiling the agent on a subscription of 1,500 nodes (``factory-agent bench --protocol opcua``)
put ~75 % of its CPU in asyncua decoding publish responses, and a third of that in two small
functions called for every data change:

- ``ua.datatype_to_varianttype(n)`` builds the ``VariantType`` of each value by calling the
  enum class (``VariantType(n)``, ~1 µs of enum machinery); here a dict lookup;
- ``ua.win_epoch_to_datetime(t)`` makes a new ``datetime`` for each source and server
  timestamp, though all the values of one machine at one tick share their timestamps; here
  the last few thousand are kept (a ``datetime`` is immutable, so sharing one is safe).

:func:`install` swaps them in the ``asyncua.ua`` namespace, where the decoder looks them up at
each call; the results are the same for every input (tests/unit/test_opcua_speedups.py
compares them with asyncua's own over the whole input range). Idempotent.

>>> from asyncua import ua
>>> install()
>>> ua.datatype_to_varianttype(11) is ua.VariantType.Double
True
>>> t = 133_000_000_000_000_000  # 100 ns ticks since 1601: in 2022
>>> ua.win_epoch_to_datetime(t) is ua.win_epoch_to_datetime(t)
True
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from asyncua import ua
from asyncua.ua import uatypes

#: asyncua's own functions, kept for everything but the fast cases
_DATATYPE_TO_VARIANTTYPE = uatypes.datatype_to_varianttype
_WIN_EPOCH_TO_DATETIME = uatypes.win_epoch_to_datetime

_VARIANT_TYPES: dict[int, ua.VariantType] = {t.value: t for t in ua.VariantType}
_DATETIMES: dict[int, datetime] = {}
#: timestamps kept: a publish response's distinct timestamps, many times over
DATETIME_CACHE = 4096


def datatype_to_varianttype(int_type: Any) -> Any:
    """``VariantType`` of a built-in type id (0..25) by lookup; anything else as asyncua does."""
    if type(int_type) is int:
        vtype = _VARIANT_TYPES.get(int_type)
        if vtype is not None:
            return vtype
    return _DATATYPE_TO_VARIANTTYPE(int_type)


def win_epoch_to_datetime(epch: int) -> datetime:
    """asyncua's conversion of a FILETIME (100 ns since 1601), remembered for the next value."""
    dt = _DATETIMES.get(epch)
    if dt is None:
        dt = _WIN_EPOCH_TO_DATETIME(epch)
        if len(_DATETIMES) >= DATETIME_CACHE:
            _DATETIMES.clear()
        _DATETIMES[epch] = dt
    return dt


def install() -> None:
    """Use the functions above in asyncua's decoder (this process, every client and server)."""
    ua.datatype_to_varianttype = datatype_to_varianttype
    ua.win_epoch_to_datetime = win_epoch_to_datetime
