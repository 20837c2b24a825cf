"""Who may use the agent's HTTP server, and protection of its forms against other sites.

Two modes, chosen by the configuration (``http.listen``, ``http.token_file``):

- **localhost** (the default, no token): only this machine can connect. Requests must name a
  loopback host (``Host: 127.0.0.1:8180``, ``localhost``): a page of another site that makes
  its own name resolve to 127.0.0.1 (DNS rebinding) is refused.
- **token**: every request except ``/healthz`` carries the token from ``http.token_file``,
  either as ``Authorization: Bearer <token>`` (scripts, Prometheus) or as the session cookie
  the ``/login`` page sets (HttpOnly, SameSite=Strict, valid 12 h and until the agent
  restarts). Without it: 401, the login page for a browser, plain text for the rest. Listening
  off localhost without a token is refused by the configuration itself (``HttpConfig``).

In both modes every POST must come from a page of this server: its ``Origin`` (or
``Referer``), when sent, names this host, and its form carries the CSRF token the page embedded
(``csrf`` field or ``X-CSRF-Token`` header), an HMAC of a per-process secret and the session.
Otherwise 403 with the reason. Tokens and secrets are compared with :func:`hmac.compare_digest`
and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from agent.config import HttpConfig

log = structlog.get_logger(__name__)

SESSION_COOKIE = "factory_agent_session"
SESSION_MAX_AGE_S = 12 * 3600
MIN_TOKEN_CHARS = 16
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/healthz"})  # no token, no host check: load balancers, probes
LOGIN_PATHS = frozenset({"/login"})  # reachable without a session (with the host check)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenFileError(OSError):
    """``http.token_file`` cannot be used; the message says why and how to fix it."""


def read_token(path: Path) -> str:
    """The access token in ``path`` (surrounding whitespace stripped); refuses a weak one."""
    hint = f"e.g. `openssl rand -hex 32 > {path}`"
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenFileError(f"http.token_file: cannot read {path}: {exc.strerror}; "
                             f"create it with the access token, {hint}") from None  # fmt: skip
    except UnicodeDecodeError:
        raise TokenFileError(f"http.token_file: {path} is not text; {hint}") from None
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenFileError(f"http.token_file: {path} holds {len(token)} characters; an access "
                             f"token needs at least {MIN_TOKEN_CHARS}, {hint}")  # fmt: skip
    return token


def _host_only(host: str) -> str:
    """``127.0.0.1:8180`` -> ``127.0.0.1``; ``[::1]:8180`` -> ``[::1]``."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Access:
    """The access rules of one server: its token (or none), and its per-process secret."""

    def __init__(
        self,
        token: str | None,
        *,
        loopback_only: bool,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self.loopback_only = loopback_only
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._clock = clock

    def _mac(self, *parts: str) -> str:
        msg = "\0".join(parts).encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    # -- sessions and tokens -------------------------------------------------------------------
    def new_session(self) -> str:
        """A session cookie value: issue time and its MAC (stateless, dies with the process)."""
        assert self.token is not None
        issued = str(int(self._clock()))
        return f"{issued}.{self._mac('session', issued, self.token)}"

    def session_valid(self, value: str) -> bool:
        issued, _, mac = value.partition(".")
        if self.token is None or not issued.isdigit():
            return False
        age = self._clock() - int(issued)
        if not -60 <= age <= SESSION_MAX_AGE_S:
            return False
        return hmac.compare_digest(mac, self._mac("session", issued, self.token))

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        )

    def authenticated(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(given):
            return True
        return self.session_valid(request.cookies.get(SESSION_COOKIE, ""))

    def csrf_token(self, request: web.Request) -> str:
        """The token a form of this page must send back; bound to the browser's session."""
        return self._mac("csrf", request.cookies.get(SESSION_COOKIE, ""))

    # -- checks --------------------------------------------------------------------------------
    def host_refusal(self, request: web.Request) -> str | None:
        if not self.loopback_only or HttpConfig.is_loopback(_host_only(request.host)):
            return None
        return (f"this agent answers only to localhost, not to Host: {request.host}; "
                "open http://127.0.0.1:<port>/ on this machine")  # fmt: skip

    async def cross_site_refusal(self, request: web.Request) -> str | None:
        """Why this POST looks cross-site (None when it came from our own page)."""
        for header in ("Origin", "Referer"):
            value = request.headers.get(header)
            if value is None:
                continue
            netloc = urlsplit(value).netloc.lower() if value != "null" else "null"
            if netloc != request.host.lower():
                return (f"refused: a form sent from another site ({header}: {value}); "
                        "acknowledge from this agent's own page")  # fmt: skip
            break  # Origin wins over Referer when both are sent
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            field = form.get(CSRF_FIELD)
            given = field if isinstance(field, str) else None
        if not given or not hmac.compare_digest(given, self.csrf_token(request)):
            return ("refused: the form's CSRF token is missing or stale; reload the page and "
                    "send the form again")  # fmt: skip
        return None

    # -- the middleware and the login page -----------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        refusal = self.host_refusal(request)
        if refusal is not None:
            return _plain(403, refusal)
        public = request.path in LOGIN_PATHS or request.path.startswith("/static/")
        if not public and not self.authenticated(request):
            return self.unauthorized(request)
        if request.method not in SAFE_METHODS:
            refusal = await self.cross_site_refusal(request)
            if refusal is not None:
                log.warning("http_post_refused", path=request.path, reason=refusal)
                return _plain(403, refusal)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _secure(exc.headers)
            raise
        _secure(response.headers)
        return response

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        browser = "text/html" in request.headers.get("Accept", "")
        if browser and not request.path.startswith("/api/") and request.path != "/metrics":
            return self.login_page(request, request.path_qs, status=401)
        response = _plain(
            401,
            "401: this agent needs its access token: send the header "
            "'Authorization: Bearer <token>' (the token in http.token_file)",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="factory-agent"'
        return response

    def login_page(
        self, request: web.Request, next_path: str, *, status: int = 200, message: str = ""
    ) -> web.Response:
        esc = html.escape
        error = f'<p class="flash error" role="alert">{esc(message)}</p>' if message else ""
        body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · factory-agent</title><link rel="stylesheet" href="/static/review.css">
</head><body><main class="login">
<h1>factory-agent</h1>
<p>This agent's review page needs its access token (the text in <code>http.token_file</code>).</p>
{error}
<form method="post" action="/login" class="card">
<input type="hidden" name="{CSRF_FIELD}" value="{esc(self.csrf_token(request))}">
<input type="hidden" name="next" value="{esc(next_path)}">
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit" class="primary">Sign in</button>
</form></main></body></html>
"""
        response = web.Response(text=body, status=status, content_type="text/html")
        _secure(response.headers)
        return response

    async def get_login(self, request: web.Request) -> web.Response:
        if self.token is None:
            return _see_other("/")
        return self.login_page(request, _safe_next(request.query.get("next", "/")))

    async def post_login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token, next_path = form.get("token"), _safe_next(str(form.get("next") or "/"))
        if self.token is None:
            return _see_other(next_path)
        if not isinstance(token, str) or not self.token_matches(token):
            log.warning("http_login_failed", remote=request.remote)
            return self.login_page(request, next_path, status=401,
                                   message="That is not this agent's access token.")  # fmt: skip
        response = _see_other(next_path)
        response.set_cookie(SESSION_COOKIE, self.new_session(), max_age=SESSION_MAX_AGE_S,
                            path="/", httponly=True, samesite="Strict",
                            secure=request.secure)  # fmt: skip
        return response

    async def post_logout(self, _: web.Request) -> web.Response:
        response = _see_other("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    def add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self.middleware)
        app.router.add_get("/login", self.get_login)
        app.router.add_post("/login", self.post_login)
        app.router.add_post("/logout", self.post_logout)


def _safe_next(path: str) -> str:
    """Only a path of this server after login (never ``//evil.example`` or a URL)."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _plain(status: int, text: str) -> web.Response:
    response = web.Response(status=status, text=text + "\n", content_type="text/plain")
    _secure(response.headers)
    return response


def _secure(headers: MutableMapping[str, str]) -> None:
    """The security headers, unless the handler chose its own (the plot's CSP)."""
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
