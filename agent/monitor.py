"""Self-monitoring: what a plant engineer needs to see of each agent.

A :class:`Snapshot` is taken every ``monitor.interval_s`` (10 s): it becomes readings of the
``agent_internal`` measurement (through the same spool as the machine data), the ``/metrics``
Prometheus text and the ``/healthz`` verdict. Secrets never appear here: only counters, names
and states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from connectors.types import Reading


@dataclass
class Snapshot:
    agent: str
    time_ns: int
    uptime_s: float
    readings_in: int
    points_spooled: int
    devices: list[dict[str, Any]] = field(default_factory=list)
    sinks: list[dict[str, Any]] = field(default_factory=list)

    def readings(self) -> list[Reading]:
        """The ``agent_internal`` points: one for the agent, one per device and per sink."""
        base = {"agent": self.agent}
        out = [
            Reading(self.agent, self.time_ns, {
                "uptime_s": round(self.uptime_s, 1),
                "readings_in": self.readings_in,
                "points_spooled": self.points_spooled,
            }, {**base, "component": "agent"})
        ]  # fmt: skip
        for d in self.devices:
            fields = {k: v for k, v in d.items() if k not in ("device",) and _finite(v)}
            out.append(Reading(self.agent, self.time_ns, fields,
                               {**base, "component": "device", "device": d["device"]}))  # fmt: skip
        for s in self.sinks:
            fields = {k: v for k, v in s.items() if k not in ("sink", "last_error") and _finite(v)}
            out.append(Reading(self.agent, self.time_ns, fields,
                               {**base, "component": "sink", "sink": s["sink"]}))  # fmt: skip
        return out

    def health(self) -> tuple[str, list[str]]:
        """("ready" | "degraded", reasons)."""
        reasons = []
        for d in self.devices:
            if not d.get("connected"):
                failures = d.get("consecutive_failures", 0)
                reasons.append(f"device {d['device']} unreachable ({failures} failures in a row)")
        for s in self.sinks:
            if s.get("failing"):
                reasons.append(f"sink {s['sink']} failing: {s.get('last_error') or 'unknown'} "
                               f"(backlog {s.get('spool_points', 0)} points)")  # fmt: skip
            if s.get("dropped_points"):
                reasons.append(f"sink {s['sink']} spool over budget: "
                               f"{s['dropped_points']} oldest points dropped")  # fmt: skip
        return ("degraded" if reasons else "ready"), reasons

    def prometheus(self) -> str:
        """``/metrics`` in the Prometheus text format."""
        lines: list[str] = []

        def metric(
            name: str, kind: str, help_: str, rows: list[tuple[dict[str, str], Any]]
        ) -> None:
            lines.append(f"# HELP factory_agent_{name} {help_}")
            lines.append(f"# TYPE factory_agent_{name} {kind}")
            for labels, value in rows:
                if value is None or not _finite(value):
                    continue
                text = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
                lines.append(f"factory_agent_{name}{{{text}}} {float(value):g}")

        a = {"agent": self.agent}
        metric("uptime_seconds", "gauge", "Seconds since start.", [(a, self.uptime_s)])
        metric("readings_total", "counter", "Readings received from devices.",
               [(a, self.readings_in)])  # fmt: skip
        metric("points_spooled_total", "counter", "Points appended to the spools.",
               [(a, self.points_spooled)])  # fmt: skip
        dev = [({**a, "device": d["device"]}, d) for d in self.devices]
        metric("device_connected", "gauge", "1 when the device answers.",
               [(lb, int(bool(d.get("connected")))) for lb, d in dev])  # fmt: skip
        metric("device_reconnects_total", "counter", "Times the device came back.",
               [(lb, d.get("reconnects")) for lb, d in dev])  # fmt: skip
        metric("device_failed_polls_total", "counter", "Polls that brought nothing (gaps).",
               [(lb, d.get("failed_polls")) for lb, d in dev])  # fmt: skip
        metric("device_rtt_seconds", "gauge", "Read round-trip time (median, p99).",
               [({**lb, "quantile": q}, d.get(k)) for lb, d in dev
                for q, k in (("0.5", "rtt_median_s"), ("0.99", "rtt_p99_s"))])  # fmt: skip
        snk = [({**a, "sink": s["sink"]}, s) for s in self.sinks]
        for key, kind, help_ in (
            ("written_points", "counter", "Points the sink acknowledged (2xx)."),
            ("failed_writes", "counter", "Write attempts that failed."),
            ("rejected_points", "counter", "Points the server refused (dead-lettered)."),
            ("dropped_points", "counter", "Oldest points dropped for the disk budget."),
            ("spool_points", "gauge", "Points waiting in the spool."),
            ("spool_bytes", "gauge", "Bytes of the spool."),
            ("write_latency_seconds", "gauge", "Latency of the last write."),
        ):
            metric(f"sink_{key}", kind, help_, [(lb, s.get(key)) for lb, s in snk])
        return "\n".join(lines) + "\n"


def _finite(v: Any) -> bool:
    if isinstance(v, bool | int | str):
        return True
    return isinstance(v, float) and math.isfinite(v)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
