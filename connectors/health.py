"""Reconnection backoff and per-device health, shared by every connector.

:class:`Backoff` is capped exponential backoff with jitter (1 s → 60 s by default), owned by
exactly one reconnect loop per connection. :class:`DeviceHealth` counts what a plant engineer
wants to see per device and logs a device going down once and coming back once, not every retry.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from statistics import median
from typing import Any

import structlog


@dataclass
class Backoff:
    """Delays for successive reconnect attempts.

    >>> b = Backoff(initial_s=1.0, max_s=8.0, jitter=0.0)
    >>> [b.next() for _ in range(5)]
    [1.0, 2.0, 4.0, 8.0, 8.0]
    >>> b.reset(); b.next()
    1.0
    """

    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next(self) -> float:
        base = min(self.max_s, self.initial_s * self.factor**self._attempt)
        self._attempt += 1
        # Jitter only shortens the delay, so the cap holds and clients at the cap still spread.
        return base * (1.0 - self.jitter * self.rng.random())

    def after_timeout(self) -> float:
        """The delay after an attempt that timed out: the first step, not growing.

        A silent link (a 5G handover, a cut) answers nothing; each attempt has already waited
        its timeout, so probing it again soon costs little and finds the link as soon as it is
        back. Refusals and errors, which come at once, are what the growing delay is for.
        """
        return self.initial_s * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self._attempt = 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..100 (``nan`` for no values).

    >>> percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50), percentile(list(map(float, range(1, 101))), 99)
    (3.0, 99.0)
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100.0 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class DeviceHealth:
    """Connection state and counters of one device (one endpoint or one Modbus connection)."""

    device: str
    connected: bool = False
    last_good_ns: int | None = None
    consecutive_failures: int = 0
    reconnects: int = 0
    polls: int = 0
    failed_polls: int = 0
    missed_polls: int = 0
    readings: int = 0
    bad_values: int = 0
    rtt_s: deque[float] = field(default_factory=lambda: deque(maxlen=1024))
    down_since: float | None = None
    _ever_up: bool = False

    def __post_init__(self) -> None:
        self.log = structlog.get_logger(device=self.device)  # lazy: follows later configure()

    def record_rtt(self, seconds: float) -> None:
        self.rtt_s.append(seconds)

    def succeeded(self, now_ns: int | None = None) -> None:
        """A read or a data change arrived: the device is up."""
        self.consecutive_failures = 0
        self.last_good_ns = now_ns if now_ns is not None else time.time_ns()
        if not self.connected:
            self.connected = True
            if self._ever_up:
                self.reconnects += 1
                outage = time.monotonic() - (self.down_since or time.monotonic())
                self.log.info("device_recovered", outage_s=round(outage, 1))
            else:
                self.log.info("device_connected")
            self._ever_up = True
            self.down_since = None

    def failed(self, error: str) -> None:
        """A read or connect failed; logs ``device_unreachable`` once per outage."""
        self.consecutive_failures += 1
        if self.connected or self.down_since is None:
            self.down_since = time.monotonic()
            self.log.warning("device_unreachable", error=error)
        self.connected = False

    def snapshot(self) -> dict[str, Any]:
        """The figures the agent publishes as self-metrics."""
        rtts = list(self.rtt_s)
        return {
            "device": self.device,
            "connected": self.connected,
            "last_good_ns": self.last_good_ns,
            "consecutive_failures": self.consecutive_failures,
            "reconnects": self.reconnects,
            "polls": self.polls,
            "failed_polls": self.failed_polls,
            "missed_polls": self.missed_polls,
            "readings": self.readings,
            "bad_values": self.bad_values,
            "rtt_median_s": median(rtts) if rtts else float("nan"),
            "rtt_p99_s": percentile(rtts, 99),
        }
