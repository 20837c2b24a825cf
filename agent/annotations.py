"""Acknowledgements to InfluxDB: the journal's outbox drained into measurement
``anomaly_annotation``.

Whoever acknowledges an episode (the review page in the agent, or ``factory-agent anomalies ack``
from another process, even while the agent is stopped) writes only to the journal. The running
agent takes what is pending every few seconds, encodes one point per acknowledgement (at the
acknowledgement's time; tags: the episode's tags, ``machine`` and ``verdict``; fields
``episode_id``, ``who``, ``note``, ``text``, ``action`` and the episode's start and end), and
rewrites the episode's own ``anomaly`` point with ``state="acknowledged"`` and the verdict, puts
them into the spools, and only then marks them done. A crash in between spools an
annotation twice: the same series and time, so InfluxDB keeps one.

>>> from agent.journal import Annotation
>>> a = Annotation(7, "cnc-01-5", 2_000, "ana", "acknowledge", "confirmed", "bearing replaced",
...                "cnc-01", {"line": "l1"}, 5, 900)
>>> annotation_line(a, Encoder(ANNOTATION_MEASUREMENT))
b'anomaly_annotation,line=l1,machine=cnc-01,verdict=confirmed episode_id="cnc-01-5",who="ana",\
note="bearing replaced",text="Confirmed fault (ana): bearing replaced",action="acknowledge",\
episode_start_ns=5i,episode_end_ns=900i 2000'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.journal import Annotation, Journal
from agent.lineprotocol import Encoder
from connectors.types import Reading

ANNOTATION_MEASUREMENT = "anomaly_annotation"


def annotation_line(a: Annotation, encoder: Encoder) -> bytes | None:
    tags = {**a.tags, "machine": a.machine}
    if a.verdict:
        tags["verdict"] = a.verdict
    fields: dict[str, Any] = {
        "episode_id": a.episode_id,
        "who": a.who,
        "note": a.note,
        "text": a.text(),
        "action": a.action,
        "episode_start_ns": a.episode_start_ns,
        "episode_end_ns": a.episode_end_ns or 0,
    }
    return encoder.encode(Reading(a.machine, a.time_ns, fields, tags))


def acknowledged_line(a: Annotation, encoder: Encoder) -> bytes | None:
    """The episode's ``anomaly`` point (same series and time) marked acknowledged: InfluxDB
    merges these fields into it, so dashboards see the state the journal has."""
    fields: dict[str, Any] = {"state": "acknowledged", "acked_by": a.who}
    if a.verdict:
        fields["verdict"] = a.verdict
    return encoder.encode(Reading(a.machine, a.episode_start_ns, fields, dict(a.tags)))


def forward_annotations(
    journal: Journal,
    spool: Callable[[list[bytes]], None],
    encoder: Encoder,
    episodes: Encoder | None = None,
) -> int:
    """Spool every pending acknowledgement (and, with ``episodes``, the episode's new state),
    then mark it; return how many."""
    pending = journal.pending_annotations()
    if not pending:
        return 0
    lines = [line for a in pending if (line := annotation_line(a, encoder)) is not None]
    if episodes is not None:
        lines += [line for a in pending if (line := acknowledged_line(a, episodes)) is not None]
    spool(lines)  # durable before the outbox forgets them
    journal.mark_annotated([a.audit_id for a in pending])
    return len(pending)
