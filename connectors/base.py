"""The connector contract, its errors, and the polling clock shared by connectors.

A connector reads :class:`~connectors.types.Reading` objects from one device endpoint. It owns
the reconnection of its one connection (exactly one owner, as Telegraf #18787 taught), so callers
only ``connect()`` once, iterate ``readings()`` until they stop, and ``close()``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from connectors.health import DeviceHealth
from connectors.types import Reading


class Connector(Protocol):
    """Southbound: one device endpoint producing Readings."""

    health: DeviceHealth

    async def connect(self) -> None:
        """Open the connection once; raise :class:`ConnectorError` when that is impossible."""

    def readings(self) -> AsyncIterator[Reading]:
        """Yield Readings until closed; reconnects on its own, never raises for a lost link."""
        ...

    async def close(self) -> None:
        """Release the connection; ``readings()`` then ends."""


class ConnectorError(Exception):
    """A device cannot be used as configured. The message says what to change.

    ``retryable`` is false for mistakes that waiting will not fix (a refused certificate, a
    wrong password, a policy the server does not offer).
    """

    def __init__(self, device: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device
        self.retryable = retryable


class DeviceConfig(BaseModel):
    """Fields every device type shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", description="device name, unique in the file"
    )
    enabled: bool = Field(True, description="false keeps the entry but does not read it")
    interval_s: float = Field(1.0, gt=0, le=3600, description="poll or publishing interval")
    timeout_s: float = Field(2.0, gt=0, le=120, description="timeout of every network operation")
    backoff_initial_s: float = Field(1.0, gt=0, description="first reconnect delay")
    backoff_max_s: float = Field(60.0, gt=0, description="reconnect delay cap")


class Ticker:
    """Wall-clock aligned ticks for polling; counts the ticks a slow cycle missed.

    Timestamps of polled readings are the scheduled tick time, so a replay of the same cycle
    writes the same point in InfluxDB (idempotent) and cycles line up across devices.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_ns = round(interval_s * 1e9)
        now = time.time_ns()
        self.next_ns = (now // self.interval_ns + 1) * self.interval_ns
        self.missed = 0

    async def wait(self) -> int:
        """Sleep until the next tick; return its scheduled time in ns since the epoch."""
        now = time.time_ns()
        if now > self.next_ns + self.interval_ns:
            skipped = (now - self.next_ns) // self.interval_ns
            self.missed += skipped
            self.next_ns += skipped * self.interval_ns
        delay = (self.next_ns - now) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        tick = self.next_ns
        self.next_ns += self.interval_ns
        return tick
