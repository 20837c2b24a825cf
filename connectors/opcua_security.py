"""OPC UA sessions: opened securely (certificates, trust, endpoint, login), closed, browsed.

Our application instance certificate is generated on first start and kept (servers trust it by
its exact bytes, so a new one would have to be trusted again). A server certificate is accepted
only when the same certificate is in ``pki_dir/trusted/``; an unknown one is saved as
``pki_dir/rejected/<device>.der`` and the error says which file to move where. Every mistake
that waiting will not fix (untrusted certificate, wrong password, a policy the server does not
offer) raises :class:`~connectors.base.ConnectorError` with ``retryable=False``.

:func:`close_client` ends every task of a client (a lost one without waiting for answers), and
:func:`browse` lists a server's address space for ``factory-agent browse``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import cert_gen, security_policies
from asyncua.observer import Observer
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames, ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import SecretStr

from connectors.base import ConnectorError
from connectors.opcua_config import HAS_PROPERTY, AddressSpace, OpcUaConfig, nid, plain

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
NONE_URI = security_policies.SecurityPolicyNone.URI
LOGIN_REFUSED = frozenset({
    StatusCodes.BadUserAccessDenied,
    StatusCodes.BadIdentityTokenRejected,
    StatusCodes.BadIdentityTokenInvalid,
})  # fmt: skip
CERT_REFUSED = frozenset({
    StatusCodes.BadCertificateUntrusted,
    StatusCodes.BadCertificateInvalid,
    StatusCodes.BadCertificateUriInvalid,
    StatusCodes.BadCertificateTimeInvalid,
    StatusCodes.BadCertificateRevoked,
    StatusCodes.BadSecurityChecksFailed,
})  # fmt: skip
CERT_DAYS = 5 * 365
MIN_CHUNK = 8192  # smallest chunk a peer may use (Part 6, 7.1.2.3)


class BoundedClient(Client):
    """An asyncua client that enforces our incoming message limit.

    asyncua sends our ``max_messagesize`` in the Hello but then adopts whatever the server's
    Acknowledge says, and 0 there means unlimited; so after the Hello the limit is put back.
    """

    async def send_hello(self) -> None:
        await super().send_hello()
        protocol = self.uaclient.protocol
        if protocol is not None:
            limits = protocol._connection._limits  # private: asyncua has no public setter
            cap = self.max_messagesize
            limits.max_message_size = min(limits.max_message_size or cap, cap)
            limits.max_chunk_count = min(limits.max_chunk_count or self.max_chunkcount,
                                         self.max_chunkcount)  # fmt: skip
            limits.max_recv_buffer = min(limits.max_recv_buffer or cap, cap)


@dataclass(frozen=True, slots=True)
class OwnCertificate:
    """Our application instance certificate, its key, and the application URI it carries."""

    certificate: Path
    private_key: Path
    application_uri: str
    generated: bool


def describe(exc: BaseException) -> str:
    """A short, single-line account of a failure (status code names for OPC UA errors)."""
    if isinstance(exc, UaStatusCodeError):
        return f"{ua.StatusCode(exc.code).name} (0x{exc.code:08X})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def policy_name(uri: str) -> str:
    """``http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256`` -> ``Basic256Sha256``."""
    return uri.rsplit("#", 1)[-1]


def _certificate_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def read_certificate(data: bytes) -> x509.Certificate:
    """A certificate from PEM or DER; of a DER chain, the first (leaf) certificate."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    if len(data) > 4 and data[1] & 0x80:  # long-form length: header 2 + n bytes
        n = data[1] & 0x7F
        data = data[: 2 + n + int.from_bytes(data[2 : 2 + n], "big")]
    return x509.load_der_x509_certificate(data)


def _generate(cert_path: Path, key_path: Path, uri: str) -> None:
    """A self-signed client certificate for ``uri`` and this host; the key readable by us only."""
    key = cert_gen.generate_private_key()
    host = socket.gethostname()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), x509.DNSName(host)]
    cert = cert_gen.generate_self_signed_app_certificate(
        key, f"factory-agent@{host}", {"organizationName": "factory-agent"}, names,
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH], days=CERT_DAYS,
    )  # fmt: skip
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert_gen.dump_private_key_as_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))


async def own_certificate(cfg: OpcUaConfig) -> OwnCertificate:
    """Our certificate and key: generated once into the configured paths, then reused."""
    cert_path, key_path = cfg.certificate_path, cfg.private_key_path
    have = cert_path.is_file(), key_path.is_file()
    if have == (False, False):
        uri = cfg.default_application_uri
        try:
            await asyncio.to_thread(_generate, cert_path, key_path, uri)
        except OSError as exc:
            raise ConnectorError(cfg.name, f"cannot write {cert_path}: {exc.strerror}",
                                 retryable=False) from None  # fmt: skip
        return OwnCertificate(cert_path, key_path, uri, True)
    if not all(have):
        present, missing = (cert_path, key_path) if have[0] else (key_path, cert_path)
        raise ConnectorError(
            cfg.name,
            f"{present} exists but {missing} does not: restore it, or remove both to generate a"
            " new certificate (which the server must then trust again)",
            retryable=False,
        )
    try:
        cert = read_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConnectorError(cfg.name, f"certificate {cert_path} is unreadable: {exc}",
                             retryable=False) from None  # fmt: skip
    uris = _certificate_uris(cert)
    if cfg.application_uri is not None and cfg.application_uri not in uris:
        raise ConnectorError(
            cfg.name,
            f"certificate {cert_path} carries application URI {', '.join(uris) or '(none)'} but"
            f" application_uri is {cfg.application_uri!r}: they must match (set application_uri"
            " to the certificate's, or remove both files to generate a new certificate)",
            retryable=False,
        )
    if cert.not_valid_after_utc < datetime.now(UTC):
        raise ConnectorError(
            cfg.name,
            f"certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: remove it"
            f" and {key_path} to generate a new one (which the server must then trust again)",
            retryable=False,
        )
    return OwnCertificate(cert_path, key_path, cfg.application_uri or uris[0], False)


def _trusted(directory: Path) -> dict[bytes, x509.Certificate]:
    """The certificates in ``directory`` (DER or PEM) by SHA-256 fingerprint; others ignored."""
    out: dict[bytes, x509.Certificate] = {}
    if not directory.is_dir():
        return out
    for path in sorted(directory.iterdir()):
        try:
            cert = read_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
        out[cert.fingerprint(hashes.SHA256())] = cert
    return out


def check_server_certificate(cfg: OpcUaConfig, der: bytes) -> x509.Certificate:
    """Accept the server's certificate only if it is in ``trusted/``; else save it in rejected/."""
    trusted_dir, rejected_dir = cfg.pki_dir / "trusted", cfg.pki_dir / "rejected"
    trusted_dir.mkdir(parents=True, exist_ok=True)
    if not der:
        raise ConnectorError(cfg.name, "the server sent no certificate", retryable=False)
    cert = read_certificate(der)
    thumb = cert.fingerprint(hashes.SHA256())
    subject = cert.subject.rfc4514_string()
    if thumb in _trusted(trusted_dir):
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ConnectorError(
                cfg.name,
                f"the trusted server certificate ({subject}) is valid only from "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}:"
                " the server needs a new certificate",
                retryable=False,
            )
        return cert
    rejected = rejected_dir / f"{cfg.name}.der"
    rejected_dir.mkdir(parents=True, exist_ok=True)
    rejected.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    raise ConnectorError(
        cfg.name,
        f"the server certificate ({subject}, SHA-256 {thumb.hex()[:16]}…) is not trusted. It was"
        f" saved as {rejected}: if this is the server you expect, move that file into"
        f" {trusted_dir}/ (mv {rejected} {trusted_dir}/) and connect again",
        retryable=False,
    )


def select_endpoint(
    cfg: OpcUaConfig, endpoints: list[ua.EndpointDescription]
) -> ua.EndpointDescription:
    """The endpoint with our policy, mode and kind of login; else say what is offered."""
    insecure = cfg.security_policy == "None"
    uri = NONE_URI if insecure else POLICIES[cfg.security_policy].URI
    mode = ua.MessageSecurityMode.None_ if insecure else ua.MessageSecurityMode[cfg.security_mode]
    match = [ep for ep in endpoints if ep.SecurityPolicyUri == uri and ep.SecurityMode == mode]
    if not match:
        offered = sorted({
            "None" if ep.SecurityPolicyUri == NONE_URI
            else f"{policy_name(ep.SecurityPolicyUri)} {ep.SecurityMode.name}"
            for ep in endpoints
        })  # fmt: skip
        wanted = "None" if insecure else f"{cfg.security_policy} {cfg.security_mode}"
        raise ConnectorError(
            cfg.name,
            f"the server does not offer security {wanted}; it offers: "
            f"{', '.join(offered) or 'nothing'} (set security_policy and security_mode)",
            retryable=False,
        )
    kind = (
        ua.UserTokenType.UserName if cfg.username is not None
        else ua.UserTokenType.Certificate if cfg.user_certificate is not None
        else ua.UserTokenType.Anonymous
    )  # fmt: skip
    for ep in match:
        if any(t.TokenType == kind for t in ep.UserIdentityTokens or []):
            return ep
    accepted = sorted({t.TokenType.name for ep in match for t in ep.UserIdentityTokens or []})
    hint = {
        ua.UserTokenType.Anonymous: "set username with password_env or password_file",
        ua.UserTokenType.UserName: "remove username, or use user_certificate",
    }.get(kind, "log in another way")
    raise ConnectorError(
        cfg.name,
        f"the server does not accept {kind.name} logins on this endpoint (it accepts:"
        f" {', '.join(accepted) or 'none'}): {hint}",
        retryable=False,
    )


def load_password(cfg: OpcUaConfig) -> SecretStr | None:
    """The login password, read at connect time from the environment or a file."""
    if cfg.password_env is not None:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise ConnectorError(cfg.name, f"password_env: environment variable "
                                 f"{cfg.password_env!r} is not set", retryable=False)  # fmt: skip
        return SecretStr(value)
    if cfg.password_file is not None:
        try:
            return SecretStr(cfg.password_file.read_text(encoding="utf-8").rstrip("\r\n"))
        except OSError as exc:
            raise ConnectorError(cfg.name, f"password_file: cannot read {cfg.password_file}: "
                                 f"{exc.strerror}", retryable=False) from None  # fmt: skip
    return None


def load_user_certificate(cfg: OpcUaConfig) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The login certificate and its key, PEM or DER by content whatever the file is called.

    (asyncua goes by the name: only ``.pem`` is read as PEM, so ``user.crt``/``user.key`` failed
    with an ASN.1 parse error.) Checked here, where the error can name the file: the key is an
    unencrypted RSA key (the OPC UA user token signatures are RSA) and belongs to the certificate
    (else the server answers only BadIdentityTokenInvalid).
    """
    cert_path, key_path = cfg.user_certificate, cfg.user_private_key
    assert cert_path is not None, "open_client calls this only with a user certificate"
    assert key_path is not None, "the configuration requires the key with the certificate"

    def error(text: str) -> ConnectorError:
        return ConnectorError(cfg.name, text, retryable=False)

    try:
        cert = read_certificate(cert_path.read_bytes())
    except OSError as exc:
        raise error(f"user_certificate: cannot read {cert_path}: {exc.strerror}") from None
    except ValueError:
        raise error(f"user_certificate: {cert_path} is not a DER or PEM certificate") from None
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise error(f"user_private_key: cannot read {key_path}: {exc.strerror}") from None
    pem = data.lstrip().startswith(b"-----BEGIN")
    load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        key = load(data, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise error(f"user_private_key: {key_path} is encrypted: give the key without a"
                    " passphrase (readable by the agent only)") from None  # fmt: skip
    except ValueError:
        raise error(f"user_private_key: {key_path} is not a PEM or DER private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise error(f"user_private_key: {key_path} is not an RSA key: OPC UA user certificates"
                    " with these security policies are RSA")  # fmt: skip
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise error(f"user_private_key: {key_path} is not the key of user_certificate {cert_path}")
    return cert, key


def refusal(cfg: OpcUaConfig, exc: UaStatusCodeError) -> ConnectorError | None:
    """A clear, non-retryable error for a refused login or certificate; ``None`` otherwise."""
    code = describe(exc)
    if exc.code in LOGIN_REFUSED:
        if cfg.username is not None:
            what = f"login as {cfg.username!r} refused ({code}): check the user name and"
            return ConnectorError(cfg.name, f"{what} password_env/password_file", retryable=False)
        if cfg.user_certificate is not None:
            msg = (
                f"login with user certificate {cfg.user_certificate} refused ({code}): the server"
                " does not accept it as a user (have it added to its trusted user certificates)"
            )
            return ConnectorError(cfg.name, msg, retryable=False)
        msg = f"anonymous login refused ({code}): set username with password_env or password_file"
        return ConnectorError(cfg.name, msg, retryable=False)
    if exc.code in CERT_REFUSED:
        return ConnectorError(
            cfg.name,
            f"the server refused our certificate {cfg.certificate_path} ({code}): make the server"
            " trust it (many servers keep it in their rejected list until it is moved to trusted)",
            retryable=False,
        )
    return None


async def open_client(cfg: OpcUaConfig, observer: Observer | None = None) -> BoundedClient:
    """Connect, check the server, log in; a ready session or an exception (never half open)."""
    client = BoundedClient(cfg.endpoint, timeout=cfg.timeout_s, watchdog_intervall=3600.0)
    client.name = client.description = "factory-agent"
    client.product_uri = "urn:factory-agent"
    client.session_timeout = round(cfg.session_timeout_s * 1000)
    client.max_messagesize = cfg.max_message_bytes
    client.max_chunkcount = math.ceil(cfg.max_message_bytes / MIN_CHUNK) + 1
    if observer is not None:
        client.uaclient.observer = observer
    budget = cfg.timeout_s * 4
    try:
        endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), budget)
        endpoint = select_endpoint(cfg, endpoints)
        if cfg.security_policy == "None":
            client.application_uri = cfg.default_application_uri
        else:
            own = await own_certificate(cfg)
            client.application_uri = own.application_uri
            server_cert = check_server_certificate(cfg, endpoint.ServerCertificate or b"")
            await client.set_security(
                POLICIES[cfg.security_policy], own.certificate, own.private_key,
                server_certificate=server_cert.public_bytes(serialization.Encoding.DER),
                mode=ua.MessageSecurityMode[cfg.security_mode],
            )  # fmt: skip
        password = load_password(cfg)
        if cfg.username is not None and password is not None:
            client.set_user(cfg.username)
            client.set_password(password.get_secret_value())
        if cfg.user_certificate is not None and cfg.user_private_key is not None:
            client.user_certificate, client.user_private_key = load_user_certificate(cfg)
        await asyncio.wait_for(client.connect(), budget)
    except UaStatusCodeError as exc:
        client.disconnect_socket()
        clear = refusal(cfg, exc)
        if clear is not None:
            raise clear from None
        raise
    except BaseException:
        client.disconnect_socket()
        raise
    return client


# -- closing -------------------------------------------------------------------------------------

_TEARDOWN_LOGGERS = ("ua_session.UaSession", "ua_client.UaClient", "ua_client.UASocketProtocol")
_TEARDOWN_NOISE = ("connection is closed", "connection wasn't established", "is already done")


def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a task unless it is done (``None`` is fine)."""
    if task is not None and not task.done():
        task.cancel()


class _DropClosedWarnings(logging.Filter):
    """Drops asyncua's teardown noise: "connection is closed", a late answer to a cancelled read."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(noise in msg for noise in _TEARDOWN_NOISE)


@contextlib.contextmanager
def _quiet_teardown() -> Iterator[None]:
    quiet = _DropClosedWarnings()
    loggers = [logging.getLogger(f"asyncua.client.{name}") for name in _TEARDOWN_LOGGERS]
    for lg in loggers:
        lg.addFilter(quiet)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(quiet)


async def close_client(client: Client, timeout_s: float, *, graceful: bool) -> None:
    """Close a client and end all of its tasks; with ``graceful`` close its session first.

    Not graceful (the link is lost): its publish task is cancelled before the socket is dropped,
    so no publish request of this session stays in flight and nothing waits for answers.
    """
    publish = client.uaclient.session._publish_task  # private: asyncua exposes no handle
    if not graceful:
        cancel(publish)
        client.disconnect_socket()
    with _quiet_teardown(), contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), timeout_s * 2)
    client.disconnect_socket()
    if publish is not None and not publish.done():
        publish.cancel()
        await asyncio.wait({publish}, timeout=timeout_s)


# -- browse ------------------------------------------------------------------------------------


class BrowseRow(NamedTuple):
    """One node of ``factory-agent browse``: id (nsu= form), path, class, data type, unit."""

    node_id: str
    path: str
    node_class: str
    data_type: str
    unit: str


async def browse(
    endpoint: str,
    depth: int = 6,
    *,
    timeout_s: float = 5.0,
    device: OpcUaConfig | None = None,
    include_server: bool = False,
) -> list[BrowseRow]:
    """The address space below Objects, ``depth`` levels deep (properties left out).

    Anonymous and unsecured unless ``device`` gives the security and login to use. The Server
    object (diagnostics, thousands of nodes) is skipped unless ``include_server``. Paths use the
    browse path syntax of node addresses, so a row's path or node id can be pasted into a config.
    Raises ConnectorError for a refusal or an OPC UA fault, OSError (TimeoutError included) when
    the server cannot be reached.
    """
    cfg = device or OpcUaConfig.model_construct(
        name=endpoint, type="opcua", endpoint=endpoint, timeout_s=timeout_s,
        security_policy="None", allow_insecure=True, machines=[],
    )  # fmt: skip
    try:
        client = await open_client(cfg)
        try:
            space = AddressSpace(client, cfg.timeout_s)
            await space.load()
            return await _walk(space, depth, include_server)
        finally:
            await close_client(client, cfg.timeout_s, graceful=True)
    except UaError as exc:  # a refusal or a fault: one message, like the connector's
        raise ConnectorError(cfg.name, f"cannot browse: {describe(exc)}", retryable=False) from None


async def _walk(space: AddressSpace, depth: int, include_server: bool) -> list[BrowseRow]:
    skip = set() if include_server else {nid(ObjectIds.Server)}
    level: list[tuple[ua.NodeId, str]] = [(nid(ObjectIds.ObjectsFolder), "/Objects")]
    seen = {level[0][0]}
    found: list[tuple[ua.NodeId, str, str]] = []
    for _ in range(depth):
        below: list[tuple[ua.NodeId, str]] = []
        for (_, path), refs in zip(level, await space.children([n for n, _ in level]), strict=True):
            for r in refs:
                node = plain(r.NodeId)
                if r.ReferenceTypeId == HAS_PROPERTY or node in seen or node in skip:
                    continue
                seen.add(node)
                child = f"{path}/{r.BrowseName.Name}"
                found.append((node, child, r.NodeClass.name))
                below.append((node, child))
        level = below
    variables = [n for n, _, c in found if c == "Variable"]
    dvs = await space.read(variables, AttributeIds.DataType)
    types = [dv.Value.Value if dv.Value else None for dv in dvs]
    props = await space.properties(variables)
    extra: dict[ua.NodeId, tuple[str, str]] = {}
    for node, dtype, (unit, _, _) in zip(variables, types, props, strict=True):
        name = ""
        if isinstance(dtype, ua.NodeId):
            ident = dtype.Identifier
            if dtype.NamespaceIndex == 0 and isinstance(ident, int):
                name = ObjectIdNames.get(ident, "")
            name = name or space.nsu(dtype)
        extra[node] = (name, unit)
    rows = [BrowseRow(space.nsu(n), p, c, *extra.get(n, ("", ""))) for n, p, c in found]
    return sorted(rows, key=lambda r: r.path)
