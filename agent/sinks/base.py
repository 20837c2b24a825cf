"""The sink contract: what the forwarder needs from any northbound writer.

A sink writes one batch of line protocol per :meth:`Sink.write` and says, through
:class:`SinkError`, whether trying again later can help. Buffering, retries, splitting and
dead-lettering belong to :mod:`agent.forwarder` and :mod:`agent.spool`, so a sink stays small.
"""

from __future__ import annotations

from typing import Protocol


class SinkError(Exception):
    """A write the server did not accept (non-2xx) or never answered.

    ``status`` is the HTTP status, ``None`` for network errors and timeouts. ``retryable`` is
    true for 429, 5xx, timeouts and connection errors: the batch stays in the spool and is sent
    again after a backoff of at least ``retry_after_s`` (the server's Retry-After) when given.
    ``reason`` is the server's message, kept for logs and for the dead-letter file.
    """

    status: int | None
    retryable: bool
    retry_after_s: float | None
    reason: str

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return (
            f"SinkError({self.reason!r}, status={self.status!r}, retryable={self.retryable!r}, "
            f"retry_after_s={self.retry_after_s!r})"
        )


class Sink(Protocol):
    """Northbound: writes batches of line protocol (InfluxDB v2, InfluxDB 1.x, ...)."""

    name: str

    async def write(self, lines: bytes) -> None:
        """Send newline-separated line protocol (uncompressed); raise :class:`SinkError`."""

    async def close(self) -> None:
        """Release connections; no write follows."""


class GzipSink(Sink, Protocol):
    """A sink that also takes a body gzipped already: the spool's rows, compressed once.

    The forwarder uses :meth:`write_gzip` when ``gzip_spool`` is true (the sink's gzip level
    is the spool's, 1), else :meth:`Sink.write`.
    """

    gzip_spool: bool

    async def write_gzip(self, body: bytes) -> None:
        """Send one gzip member of newline-terminated line protocol; raise :class:`SinkError`."""
