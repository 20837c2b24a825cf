"""The loopback fault proxy for connector tests; it lives in :mod:`simulators.faultproxy`.

Kept here so the tests' ``from tests.faultproxy import FaultProxy`` keeps working;
``factory-agent bench --latency MS --jitter MS`` uses the same proxy.
"""

from simulators.faultproxy import FaultProxy

__all__ = ["FaultProxy"]
