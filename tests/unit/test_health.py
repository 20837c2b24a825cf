"""Backoff and device health: capped, jittered, and logged once per outage."""

from __future__ import annotations

import random

import pytest
import structlog.testing

from connectors.health import Backoff, DeviceHealth, percentile


def test_backoff_is_capped_and_jittered_within_bounds() -> None:
    b = Backoff(initial_s=1.0, max_s=60.0, jitter=0.2, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    assert 0.8 <= delays[0] <= 1.0
    assert all(d <= 60.0 for d in delays)
    assert delays[-1] >= 48.0  # at the cap, minus at most 20 % jitter
    assert len(set(delays)) == len(delays)  # jitter spreads reconnect storms


def test_down_and_up_are_logged_once_each() -> None:
    h = DeviceHealth("plc-7")
    with structlog.testing.capture_logs() as logs:
        h.succeeded()
        for _ in range(50):
            h.failed("timeout")
        for _ in range(5):
            h.succeeded()
    events = [e["event"] for e in logs]
    assert events == ["device_connected", "device_unreachable", "device_recovered"]
    assert h.reconnects == 1
    assert h.consecutive_failures == 0


def test_snapshot_reports_rtt_median_and_p99() -> None:
    h = DeviceHealth("plc-7")
    for ms in range(1, 101):
        h.record_rtt(ms / 1000)
    snap = h.snapshot()
    assert snap["rtt_median_s"] == 0.0505
    assert snap["rtt_p99_s"] == 0.099
    assert percentile([], 50) != percentile([], 50)  # nan for no data


def test_a_timed_out_attempt_retries_at_the_first_step_without_growing() -> None:
    b = Backoff(initial_s=1.0, max_s=60.0, jitter=0.2, rng=random.Random(2))
    for _ in range(6):
        b.next()  # refusals grew the delay to the cap
    assert all(0.8 <= b.after_timeout() <= 1.0 for _ in range(20))
    assert b.next() >= 48.0  # and the refusal path is unchanged


def test_timeouts_are_found_through_exception_causes() -> None:
    from connectors.base import ConnectorError
    from connectors.opcua import timed_out

    def fail() -> None:
        try:
            raise TimeoutError
        except TimeoutError as inner:
            raise ConnectorError("plc", "no answer") from inner

    with pytest.raises(ConnectorError) as info:
        fail()
    assert timed_out(info.value)
    assert not timed_out(ConnectorError("plc", "refused"))
