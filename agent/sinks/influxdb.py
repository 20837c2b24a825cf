"""InfluxDB sinks: the v2 write API (through influxdb-client) and the 1.x ``/write`` endpoint.

Both send one batch of line protocol per :meth:`write`, gzip-compressed by us at ``gzip_level``
(level 1, the default, through ISA-L when installed: ~3.4x less CPU than zlib's level 1, which
costs a ninth of the level 9 influxdb-client uses, for ~20% more bytes; see
benchmarks/bench_sinks.py). At level 1 the
forwarder hands them the spool's rows as one gzip body instead (:meth:`write_gzip`; the rows
were compressed once at append, see :mod:`agent.deflate`). Both turn the outcome into a
:class:`~agent.sinks.base.SinkError` the forwarder can act on:

==========================  =========  ==========================================================
outcome                     retryable  notes
==========================  =========  ==========================================================
2xx                         --         returns
429, 5xx                    yes        ``retry_after_s`` from Retry-After (seconds or HTTP date)
timeout, connection error   yes        ``status`` None; the reason names the URL
400, 422                    no         reason = the server's message (a bad line: dead-letter it;
                                       1.x has written the good lines of the batch)
413                         no         the forwarder splits the batch
401, 403, 404               no         configuration (token, grants, database): alarm, keep data
==========================  =========  ==========================================================

A 1.x "retention policy not found" is a 500, so retryable like any 5xx, although only an
operator fixes it; its reason says how.

influxdb-client's batching and retries are not used (its WriteApi keeps failed batches in memory
for 180 s, then drops them): buffering and retries belong to the forwarder and the spool. Its
async client posts our bytes as they are through ``WriteService.post_write_async``.

Secrets are :class:`~pydantic.SecretStr` or files, and are never put in a log line, a reason or
a URL: the 1.x sink authenticates with a Basic header, not ``u``/``p`` query parameters.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.rest import ApiException
from influxdb_client.service.ping_service import PingService
from influxdb_client.service.write_service import WriteService
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from agent.deflate import gzip_compress
from agent.sinks.base import SinkError

Precision = Literal["ns", "us", "ms", "s"]
# InfluxDB 1.x spells them n/u/ms/s; 1.6 takes an unknown value (us) for ns, without a word.
_V1_PRECISION = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
_CONTENT_TYPE = "text/plain; charset=utf-8"
REASON_MAX_CHARS = 500
ERROR_BODY_MAX_BYTES = 64 * 1024
GZIP_IN_THREAD_BYTES = 64 * 1024
GZIP = {"Content-Encoding": "gzip"}
SPOOL_GZIP_LEVEL = 1  # at this level the spool's compressed rows are sent as they are
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
# influxdb-client ships py.typed, but its generated services and close() carry no annotations
_WriteService: Any = WriteService
_PingService: Any = PingService


class _SinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="base URL of the server, e.g. http://influxdb:8086")
    precision: Precision = Field("ns", description="unit of the timestamps in the lines")
    gzip_level: int = Field(
        1,
        ge=0,
        le=9,
        description="gzip level of request bodies; 0 = off; 1: the spool's rows as stored",
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="timeout of every request")
    verify_tls: bool = Field(True, description="verify the server's certificate (https)")
    ca_file: Path | None = Field(None, description="CA bundle for https; default: system CAs")

    @field_validator("url")
    @classmethod
    def _plain_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise ValueError("put credentials in token/username/password, not in the URL")
        return url.rstrip("/")


class InfluxV2Config(_SinkConfig):
    """InfluxDB v2 write API: InfluxDB 2.x, 3.x, Cloud, 1.8+ (compatibility), VictoriaMetrics.

    For InfluxDB 1.8 use ``bucket: database/retention_policy``, ``org: "-"`` and
    ``token: username:password``. Without token (nor token_file) no Authorization header is
    sent, as a VictoriaMetrics without ``-httpAuth`` expects.
    """

    type: Literal["influxdb"]
    name: str = Field("influxdb", pattern=NAME_PATTERN, description="sink name, unique in the file")
    org: str = Field(min_length=1, description="organization (name or ID); '-' for 1.8")
    bucket: str = Field(min_length=1, description="bucket (name or ID)")
    token: SecretStr | None = Field(None, description="API token; prefer token_file or env")
    token_file: Path | None = Field(None, description="file holding the API token")

    @model_validator(mode="after")
    def _one_token(self) -> InfluxV2Config:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        return self


class InfluxV1Config(_SinkConfig):
    """InfluxDB 1.x ``/write`` endpoint (database + retention policy, user/password)."""

    type: Literal["influxdb_v1"]
    name: str = Field("influxdb_v1", pattern=NAME_PATTERN, description="sink name, unique")
    database: str = Field(min_length=1, description="database to write into")
    retention_policy: str | None = Field(None, description="retention policy; default: the db's")
    username: str | None = Field(None, description="user (auth-enabled servers)")
    password: SecretStr | None = Field(None, description="password; prefer password_file or env")
    password_file: Path | None = Field(None, description="file holding the password")

    @model_validator(mode="after")
    def _one_password(self) -> InfluxV1Config:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.username is None and (self.password or self.password_file):
            raise ValueError("a password needs a username")
        return self


def read_secret(value: SecretStr | None, path: Path | None, what: str) -> str | None:
    """The secret given inline or in a file (stripped of surrounding whitespace), or None."""
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as e:
        hint = (
            f"a systemd credential exists only inside its service: elsewhere, point {what} at "
            "the file itself"
            if str(path).startswith("/run/credentials/")
            else f"create the file or fix {what}"
        )
        raise SinkError(f"cannot read {what} {path}: {e.strerror} ({hint})") from None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), or None.

    >>> parse_retry_after("120"), parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
    (120.0, 0.0)
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def server_message(body: bytes | str | None, status: int) -> str:
    """The error message of a response body: JSON ``error``/``message`` or the text itself."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    text = text.strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        message = doc.get("message") or doc.get("error")
        if isinstance(message, str) and message:
            text = message
            lines = doc.get("data")  # InfluxDB 3: the rejected lines of a partial write
            if isinstance(lines, list) and lines and isinstance(lines[0], dict):
                first = lines[0]
                text += f" (line {first.get('line_number')}: {first.get('error_message')})"
    if not text:
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = "error"
    return text if len(text) <= REASON_MAX_CHARS else text[:REASON_MAX_CHARS] + "…"


def http_error(
    status: int, message: str, headers: Mapping[str, str] | None, hint: str | None = None
) -> SinkError:
    """Classify a non-2xx answer (see the module's table)."""
    if status in (400, 422):
        return SinkError(message, status=status)
    reason = f"HTTP {status}: {message}" + (f"; {hint}" if hint else "")
    if status == 429 or status >= 500:
        retry_after = parse_retry_after((headers or {}).get("Retry-After"))
        return SinkError(reason, status=status, retryable=True, retry_after_s=retry_after)
    return SinkError(reason, status=status)


def transport_error(exc: BaseException, url: str, timeout_s: float) -> SinkError:
    """A timeout or a connection failure: retryable, no status."""
    if isinstance(exc, TimeoutError):
        return SinkError(f"no answer from {url} within {timeout_s:g} s", retryable=True)
    detail = str(exc) or type(exc).__name__
    return SinkError(f"cannot reach {url}: {detail}", retryable=True)


async def encode(lines: bytes, gzip_level: int) -> tuple[bytes, dict[str, str]]:
    """The request body and its Content-Encoding header (if any).

    Bodies over :data:`GZIP_IN_THREAD_BYTES` are compressed in a worker thread (zlib releases
    the GIL): a 5,000-point batch takes ~6 ms at level 1, ~55 ms at level 9, which the event
    loop, busy with acquisition, should not wait for.
    """
    if gzip_level == 0:
        return lines, {}
    if len(lines) > GZIP_IN_THREAD_BYTES:
        body = await asyncio.to_thread(gzip_compress, lines, gzip_level)
    else:
        body = gzip_compress(lines, gzip_level)
    return body, GZIP


def _hint_v2(status: int, config: InfluxV2Config) -> str | None:
    return {
        401: "check the token (InfluxDB 1.8: username:password)",
        403: f"the token may not write to bucket {config.bucket!r}",
        404: f"check org {config.org!r} and bucket {config.bucket!r} (InfluxDB 1.8: bucket is "
        "database/retention_policy; before 1.8 there is no v2 API: use type influxdb_v1)",
        413: "the batch is larger than the server accepts",
    }.get(status)


class InfluxV2Sink:
    """Writes batches through the v2 write API with influxdb-client's async client."""

    def __init__(self, config: InfluxV2Config) -> None:
        self.config = config
        self.gzip_spool = config.gzip_level == SPOOL_GZIP_LEVEL
        self.name = config.name
        self._token = read_secret(config.token, config.token_file, "token_file")
        self._client: Any = None  # InfluxDBClientAsync, built in the loop
        self._service: Any = None  # WriteService bound to the async client's ApiClientAsync

    def __repr__(self) -> str:
        return f"InfluxV2Sink(name={self.name!r}, url={self.config.url!r})"

    def _writer(self) -> Any:
        if self._service is None:  # the async client must be built inside the event loop
            c = self.config
            self._client = InfluxDBClientAsync(
                url=c.url, token=self._token or "", org=c.org, timeout=round(c.timeout_s * 1000),
                enable_gzip=False, verify_ssl=c.verify_tls,
                ssl_ca_cert=str(c.ca_file) if c.ca_file else None,
            )  # fmt: skip
            self._service = _WriteService(self._client.api_client)
        return self._service

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        c = self.config
        kwargs = {"content_encoding": headers["Content-Encoding"]} if headers else {}
        try:
            async with asyncio.timeout(c.timeout_s):
                await self._writer().post_write_async(
                    org=c.org, bucket=c.bucket, body=body, precision=c.precision,
                    content_type=_CONTENT_TYPE, **kwargs,
                )  # fmt: skip
        except ApiException as e:
            message = server_message(e.body, e.status)
            raise http_error(e.status, message, e.headers, _hint_v2(e.status, c)) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise transport_error(e, c.url, c.timeout_s) from None

    async def write(self, lines: bytes) -> None:
        """Send one batch; raise :class:`SinkError` unless the server accepted it (2xx)."""
        if lines:
            await self._post(*await encode(lines, self.config.gzip_level))

    async def write_gzip(self, body: bytes) -> None:
        """Send one batch gzipped already (the spool's rows); as :meth:`write`."""
        await self._post(body, GZIP)

    async def check(self) -> str:
        """Ping the server and try an empty write (org, bucket, token); a line for people."""
        c = self.config
        self._writer()
        version = "version unknown"
        try:
            async with asyncio.timeout(c.timeout_s):
                info = await _PingService(self._client.api_client).get_ping_async(
                    _return_http_data_only=False
                )
            version = info[2].get("X-Influxdb-Version") or version
        except ApiException:
            pass  # some servers want a token on /ping or have none; the write below tells
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise transport_error(e, c.url, c.timeout_s) from None
        try:
            await self._post(b"", {})
        except SinkError as e:
            if e.status != 400:  # InfluxDB 2.0 refuses empty writes, after checking the token
                raise
        return f"{self.name}: {c.url} ({version}): bucket {c.bucket!r} of org {c.org!r} writable"

    async def close(self) -> None:
        client, self._client, self._service = self._client, None, None
        if client is not None:
            await client.close()


def _hint_v1(status: int, message: str, config: InfluxV1Config) -> str | None:
    db, rp, user = config.database, config.retention_policy, config.username
    if status == 404 and "database not found" in message:
        return f'create it with CREATE DATABASE "{db}"'
    if "retention policy not found" in message:
        return (
            f'create it with CREATE RETENTION POLICY "{rp}" ON "{db}" DURATION 52w REPLICATION 1'
            ", or leave retention_policy empty"
        )
    if status == 401:
        return "check username and password" if user else "the server needs username/password"
    if status == 403:
        return f'grant it with GRANT WRITE ON "{db}" TO "{user}"'
    if status == 413:
        return "the batch is larger than max-body-size ([http] in influxdb.conf)"
    return None


def _ssl_context(config: _SinkConfig) -> ssl.SSLContext | None:
    if not config.url.startswith("https://"):
        return None
    ctx = ssl.create_default_context(cafile=config.ca_file)
    if not config.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class InfluxV1Sink:
    """Writes batches to InfluxDB 1.x ``/write`` with aiohttp (influxdb-client has no 1.x path)."""

    def __init__(self, config: InfluxV1Config) -> None:
        self.config = config
        self.gzip_spool = config.gzip_level == SPOOL_GZIP_LEVEL
        self.name = config.name
        password = read_secret(config.password, config.password_file, "password_file")
        self._headers = {"Content-Type": _CONTENT_TYPE}
        if config.username is not None:  # aiohttp.BasicAuth is deprecated (aiohttp 3.14)
            pair = f"{config.username}:{password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        self._params = {"db": config.database, "precision": _V1_PRECISION[config.precision]}
        if config.retention_policy:
            self._params["rp"] = config.retention_policy
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"InfluxV1Sink(name={self.name!r}, url={self.config.url!r})"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # built lazily: a session belongs to the running loop
            ctx = _ssl_context(self.config)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                connector=aiohttp.TCPConnector(ssl=ctx if ctx is not None else True),
                headers=self._headers,
            )
        return self._session

    async def _request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None,
        body: bytes | None = None, headers: Mapping[str, str] | None = None,
    ) -> tuple[int, str, Mapping[str, str]]:  # fmt: skip
        """One request; (status, server message if not 2xx, headers). Transport errors raise."""
        c = self.config
        try:
            async with (
                asyncio.timeout(c.timeout_s),
                self._http().request(
                    method, c.url + path, params=params, data=body,
                    headers=headers,
                ) as resp,
            ):  # fmt: skip
                if 200 <= resp.status < 300:
                    return resp.status, "", resp.headers
                body = await resp.content.read(ERROR_BODY_MAX_BYTES)
                return resp.status, server_message(body, resp.status), resp.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise transport_error(e, c.url, c.timeout_s) from None

    async def _post_write(self, body: bytes, headers: dict[str, str]) -> None:
        status, message, resp_headers = await self._request(
            "POST", "/write", params=self._params, body=body, headers=headers
        )
        if not 200 <= status < 300:
            raise http_error(status, message, resp_headers, _hint_v1(status, message, self.config))

    async def write(self, lines: bytes) -> None:
        """Send one batch; raise :class:`SinkError` unless the server accepted it (2xx)."""
        if lines:
            await self._post_write(*await encode(lines, self.config.gzip_level))

    async def write_gzip(self, body: bytes) -> None:
        """Send one batch gzipped already (the spool's rows); as :meth:`write`."""
        await self._post_write(body, GZIP)

    async def check(self) -> str:
        """Ping, then an empty write: database, retention policy and grants; a line for people."""
        c = self.config
        status, message, headers = await self._request("GET", "/ping")
        if status != 204:
            raise SinkError(f"{c.url}/ping answered {status} {message}: is this InfluxDB 1.x?")
        version = headers.get("X-Influxdb-Version") or "version unknown"
        await self._post_write(b"", {})
        who = f" as {c.username!r}" if c.username else ""
        return f"{self.name}: {c.url} (InfluxDB {version}): database {c.database!r} writable{who}"

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def build_sink(config: InfluxV2Config | InfluxV1Config) -> InfluxV2Sink | InfluxV1Sink:
    """The explicit sink factory: config ``type`` → sink class.

    Reads the sink's secret files: :class:`SinkError` naming the sink when one cannot be read.
    """
    try:
        if isinstance(config, InfluxV2Config):
            return InfluxV2Sink(config)
        return InfluxV1Sink(config)
    except SinkError as exc:
        raise SinkError(f"sink {config.name}: {exc}") from None
