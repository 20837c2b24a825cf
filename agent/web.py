"""The agent's local HTTP server: ``/healthz`` and ``/metrics`` (and later the review page).

It listens on localhost by default. ``/healthz`` answers 200 ``{"status": "ready"}`` or 503
``{"status": "degraded", "reasons": [...]}``; ``/metrics`` is Prometheus text.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web

from agent.monitor import Snapshot

log = structlog.get_logger(__name__)


class WebServer:
    def __init__(self, listen: str, snapshot: Callable[[], Snapshot]) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.snapshot = snapshot
        self._runner: web.AppRunner | None = None

    async def healthz(self, _: web.Request) -> web.Response:
        status, reasons = self.snapshot().health()
        return web.json_response(
            {"status": status, "reasons": reasons}, status=200 if status == "ready" else 503
        )

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(text=self.snapshot().prometheus(), content_type="text/plain",
                            charset="utf-8")  # fmt: skip

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(
                f"http.listen: cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                "choose another address or port"
            ) from None
        server = site._server  # aiohttp exposes the bound port only here
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("http_server_started", url=f"http://{self.host}:{self.port}/healthz")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
