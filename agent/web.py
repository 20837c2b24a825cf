"""The agent's local HTTP server: ``/healthz``, ``/metrics`` and the review page.

It listens on localhost by default (``http.listen``); off localhost it needs an access token
(``http.token_file``, see :mod:`agent.access`). ``/healthz`` answers 200 ``{"status": "ready"}``
or 503 ``{"status": "degraded", "reasons": [...]}`` to anyone; ``/metrics`` is Prometheus text.
The review page (:mod:`agent.review`) is the anomaly inbox and the episode pages.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web

from agent.access import Access, read_token
from agent.config import AgentConfig, HttpConfig
from agent.monitor import Snapshot
from agent.review import Review

log = structlog.get_logger(__name__)


class WebServer:
    """The HTTP server of one agent; :meth:`start` binds it, :meth:`stop` closes it."""

    def __init__(self, config: AgentConfig, snapshot: Callable[[], Snapshot]) -> None:
        host, _, port = config.http.listen.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.config = config
        self.snapshot = snapshot
        self.access: Access | None = None
        self.review: Review | None = None
        self._runner: web.AppRunner | None = None

    async def healthz(self, _: web.Request) -> web.Response:
        status, reasons = self.snapshot().health()
        return web.json_response(
            {"status": status, "reasons": reasons}, status=200 if status == "ready" else 503
        )

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(text=self.snapshot().prometheus(), content_type="text/plain",
                            charset="utf-8")  # fmt: skip

    def app(self) -> web.Application:
        """The application: access rules first, then health, metrics and the review page."""
        token_file = self.config.http.token_file
        token = read_token(token_file) if token_file is not None else None
        self.access = Access(token, loopback_only=HttpConfig.is_loopback(self.host))
        self.review = Review(self.config, self.snapshot, self.access)
        app = web.Application()
        self.access.add_routes(app)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        self.review.add_routes(app)
        return app

    async def start(self) -> None:
        app = self.app()
        assert self.review is not None
        self.review.open()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise OSError(
                f"http.listen: cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                "choose another address or port"
            ) from None
        server = site._server  # aiohttp exposes the bound port only here
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("http_server_started", url=f"http://{self.url_host}:{self.port}/",
                 token=self.access is not None and self.access.token is not None)  # fmt: skip

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.review is not None:
            self.review.close()
