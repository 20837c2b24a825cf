"""A loopback TCP proxy that misbehaves on demand: a 5G link rehearsed on one machine.

toxiproxy is not available here and ``tc netem`` is not in this kernel, so the connector tests
and ``factory-agent bench --latency MS --jitter MS`` put this between a client and our
simulators:

- ``latency_s`` ± ``jitter_s`` added to every chunk, each way (order preserved per direction);
- ``cut()``: a silent cut, connections stay open but nothing passes (new connections are
  accepted by the kernel and then hear nothing, as behind a dead 5G link);
- ``restore()``: traffic passes again on the same connections;
- ``reset()``: every open connection is aborted (RST), as after a NAT or firewall restart.

It imports nothing from the project; ``tests/faultproxy.py`` re-exports it for the tests.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    latency_s: float = 0.0
    jitter_s: float = 0.0
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    passing: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_forwarded: int = 0
    connections: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.passing.set()
        self._rng = random.Random(self.seed)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        self.passing.clear()

    def restore(self) -> None:
        self.passing.set()

    def reset(self) -> None:
        for w in list(self._writers):
            sock = w.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Forward chunks in order, each delayed by latency ± jitter, dropped while cut."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.passing.is_set() and not dst.is_closing():
                    dst.write(data)
                    self.bytes_forwarded += len(data)

        sender = asyncio.create_task(deliver())
        last_due = 0.0
        try:
            while data := await src.read(65536):
                if not self.passing.is_set():
                    continue  # silently dropped
                delay = self.latency_s + self._rng.uniform(-self.jitter_s, self.jitter_s)
                last_due = max(last_due, loop.time() + max(0.0, delay))  # keep order
                queue.put_nowait((last_due, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            await asyncio.gather(sender, return_exceptions=True)
            if not dst.is_closing():
                dst.close()
            self._writers.discard(dst)
