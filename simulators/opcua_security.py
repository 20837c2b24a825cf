"""Security for the OPC UA simulator: policies, the server certificate and user logins.

The simulator accepts **any** client application certificate (self-signed or not, never checked
against a trust list): it is a test double for plant equipment, and making every test and demo
set up a PKI would cost more than it shows. What it does enforce: only the security policies
listed in ``opcua.security`` (including refusing sessions on an unsecured channel when ``None``
is not listed, which asyncua alone does not do), anonymous access only when allowed,
username/password logins checked against passwords read at start from env vars or files, and
X.509 user certificate logins (an X509IdentityToken) for exactly the certificates listed in
``opcua.user_certificates`` (compared whole, like asyncua's ``CertificateUserManager``; no chain,
no dates), offered on the endpoints only when that list is not empty.
"""

from __future__ import annotations

import hmac
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from simulators.scenario import OpcUaSpec, SecurityName

#: Scenario security names -> asyncua policy types.
POLICIES: dict[SecurityName, ua.SecurityPolicyType] = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes256_Sha256_RsaPss_Sign": ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    "Aes256_Sha256_RsaPss_SignAndEncrypt": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    "Aes128_Sha256_RsaOaep_Sign": ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    "Aes128_Sha256_RsaOaep_SignAndEncrypt": (
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt
    ),
}

CERT_FILE = "opcua-server-cert.der"
KEY_FILE = "opcua-server-key.pem"
_RENEW_BEFORE = timedelta(days=7)


class OpcUaSetupError(Exception):
    """The OPC UA part of a scenario cannot be served; the message names the field."""


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """Where the server certificate and key are, and the application URI they carry."""

    certificate: Path
    private_key: Path
    application_uri: str
    generated: bool


def needs_certificate(spec: OpcUaSpec) -> bool:
    """Whether any listed policy needs a server certificate (all but ``None`` do)."""
    return any(name != "None" for name in spec.security)


def generate_certificate(
    certificate: Path,
    private_key: Path,
    application_uri: str,
    *,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    client: bool = False,
    days: int = 365,
) -> None:
    """Write a self-signed OPC UA application certificate (DER) and its RSA key (PEM).

    The subject alternative names carry ``application_uri`` (OPC UA requires it to match the
    application's URI), the machine's hostname and ``hosts`` (DNS names or IP addresses). With
    ``client=True`` the certificate is for a client application (tests use that).
    """
    key = cert_gen.generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in dict.fromkeys((socket.gethostname(), *hosts)):
        try:
            names.append(x509.IPAddress(ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "factory-agent simulator" if not client else "factory-agent test client",
        {"organizationName": "factory-agent"},
        names,
        extended=[usage, ExtendedKeyUsageOID.CLIENT_AUTH] if not client else [usage],
        days=days,
    )
    private_key.parent.mkdir(parents=True, exist_ok=True)
    certificate.parent.mkdir(parents=True, exist_ok=True)
    key_pem = cert_gen.dump_private_key_as_pem(key)
    fd = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.DER))


def read_certificate(path: Path) -> x509.Certificate:
    """Load a certificate in DER or PEM form."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def certificate_uris(cert: x509.Certificate) -> list[str]:
    """The URIs in a certificate's subject alternative names (the application URI is one)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def _reusable(cert_path: Path, key_path: Path, application_uri: str, host: str) -> bool:
    """Whether a certificate generated earlier still fits: same URI and host, not expiring."""
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = read_certificate(cert_path)
    except ValueError:
        return False
    if application_uri not in certificate_uris(cert):
        return False
    if cert.not_valid_after_utc - _RENEW_BEFORE < datetime.now(UTC):
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = {str(h) for h in san.get_values_for_type(x509.DNSName)}
    hosts |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return host in hosts or host in ("0.0.0.0", "::", "")  # noqa: S104 (comparing, not binding)


def server_certificate(spec: OpcUaSpec, application_uri: str) -> ServerCertificate:
    """Find or make the server certificate.

    Given ``opcua.certificate``/``opcua.private_key``: use them, and take the application URI from
    the certificate (clients check that the two match). Otherwise generate a self-signed one into
    ``opcua.cert_dir`` (kept and reused across restarts while it still fits); the caller puts a
    temporary directory there when the scenario names none.
    """
    if spec.certificate is not None and spec.private_key is not None:
        for field, path in (("certificate", spec.certificate), ("private_key", spec.private_key)):
            if not path.is_file():
                raise OpcUaSetupError(f"opcua.{field}: {str(path)!r} is not a readable file")
        try:
            cert = read_certificate(spec.certificate)
        except ValueError as exc:
            msg = f"opcua.certificate: {str(spec.certificate)!r} is not a DER or PEM certificate"
            raise OpcUaSetupError(msg) from exc
        uris = certificate_uris(cert)
        return ServerCertificate(
            spec.certificate, spec.private_key, uris[0] if uris else application_uri, False
        )
    directory = spec.cert_dir
    if directory is None:
        raise OpcUaSetupError("opcua.cert_dir: needed to generate a server certificate")
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    host = spec.host
    if _reusable(cert_path, key_path, application_uri, host):
        return ServerCertificate(cert_path, key_path, application_uri, False)
    hosts: tuple[str, ...] = ("localhost", str(IPv4Address("127.0.0.1")))
    if host and host not in hosts and host not in ("0.0.0.0", "::"):  # noqa: S104
        hosts = (*hosts, host)
    try:
        generate_certificate(cert_path, key_path, application_uri, hosts=hosts)
    except OSError as exc:
        raise OpcUaSetupError(f"opcua.cert_dir: cannot write {str(directory)!r}: {exc}") from exc
    return ServerCertificate(cert_path, key_path, application_uri, True)


@dataclass(frozen=True, slots=True)
class Logins:
    """Passwords read at start, and the users left out because their env var is unset."""

    passwords: dict[str, str]
    skipped: list[str]


def load_passwords(spec: OpcUaSpec, environ: Mapping[str, str] | None = None) -> Logins:
    """Read every user's password once, at start.

    A user whose ``password_env`` variable is unset is left out (the scenario can define a login
    that only exists when its secret is provided), with a message naming the field in
    :attr:`Logins.skipped`. An unreadable ``password_file`` is an error, and so is ending up with
    no way to log in at all.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    skipped: list[str] = []
    for i, user in enumerate(spec.users):
        where = f"opcua.users[{i}]"
        if user.password_env is not None:
            value = env.get(user.password_env)
            if value is None:
                skipped.append(
                    f"{where}.password_env: environment variable {user.password_env!r} is not"
                    f" set, so user {user.name!r} cannot log in"
                )
                continue
        elif user.password_file is not None:
            try:
                value = user.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                path = str(user.password_file)
                msg = f"{where}.password_file: cannot read {path!r}: {exc.strerror}"
                raise OpcUaSetupError(msg) from exc
        else:
            raise OpcUaSetupError(f"{where}: give exactly one of password_env or password_file")
        out[user.name] = value
    if not out and not spec.allow_anonymous and not spec.user_certificates:
        detail = "; ".join(skipped) or "no users are defined"
        raise OpcUaSetupError(
            f"opcua.users: anonymous access is off and nobody can log in ({detail})"
        )
    return Logins(out, skipped)


def load_user_certificates(spec: OpcUaSpec) -> dict[bytes, str]:
    """The certificates accepted for user logins, read at start: SHA-256 fingerprint -> name.

    A user's name is the certificate's subject common name, else its file name. A file that
    cannot be read or is no certificate is an error naming its ``opcua.user_certificates`` entry.
    """
    out: dict[bytes, str] = {}
    for i, path in enumerate(spec.user_certificates):
        where = f"opcua.user_certificates[{i}]"
        try:
            cert = read_certificate(path)
        except OSError as exc:
            msg = f"{where}: cannot read {str(path)!r}: {exc.strerror} (give a certificate file)"
            raise OpcUaSetupError(msg) from exc
        except ValueError as exc:
            msg = f"{where}: {str(path)!r} is not a DER or PEM certificate"
            raise OpcUaSetupError(msg) from exc
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        out[cert.fingerprint(hashes.SHA256())] = str(names[0].value) if names else path.name
    return out


class UserCertificateToken(bytes):
    """The certificate of an X509IdentityToken whose signature asyncua has verified.

    ``secured`` says whether the session's channel is secured: for this token asyncua hands the
    user manager the token's certificate where it hands over the channel's for other logins.
    """

    secured: bool = False

    def fingerprint(self) -> bytes:
        """SHA-256 of the user's certificate (the first one: issuers may follow it)."""
        der = bytes(self)
        if len(der) > 4 and der[1] & 0x80:  # long-form DER length: header 2 + n bytes
            n = der[1] & 0x7F
            der = der[: 2 + n + int.from_bytes(der[2 : 2 + n], "big")]
        return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256())


class _SimSession(InternalSession):
    """A session that remembers whether its ActivateSession came over a secured channel."""

    channel_secured = False

    def activate_session(
        self, params: ua.ActivateSessionParameters, peer_certificate: bytes | None
    ) -> ua.ActivateSessionResult:
        self.channel_secured = bool(peer_certificate)
        return super().activate_session(params, peer_certificate)


_ANONYMOUS = User(role=UserRole.Anonymous)


class SimInternalServer(InternalServer):
    """asyncua's internal server, marking user certificate logins for :class:`SimUserManager`.

    Without the mark, ``get_user`` could not tell an X509IdentityToken from an anonymous login
    on a channel secured with the same certificate, nor whether that token came over an
    unsecured channel.
    """

    def create_session(
        self, name: str, user: User = _ANONYMOUS, external: bool = False
    ) -> InternalSession:
        return _SimSession(
            self, self.aspace, self.subscription_service, name, user=user, external=external
        )

    def verify_x509_token(
        self, isession: Any, token: ua.X509IdentityToken, signature: ua.SignatureData
    ) -> bytes:
        checked = UserCertificateToken(super().verify_x509_token(isession, token, signature))
        checked.secured = bool(getattr(isession, "channel_secured", False))
        return checked


class SimUserManager:
    """asyncua user manager: anonymous if allowed, passwords, user certificates; read-only users.

    asyncua calls :meth:`get_user` on ActivateSession with the client's channel certificate;
    an empty one means the channel is unsecured. When the ``None`` policy is not
    offered such a session is refused here, because asyncua 2.1 otherwise lets a client skip
    the offered endpoints and activate a session on the discovery-only unsecured channel. A
    user certificate login arrives as a :class:`UserCertificateToken` (with
    :class:`SimInternalServer`): accepted when the certificate is one of ``certificates``.
    """

    def __init__(
        self,
        passwords: dict[str, str],
        *,
        allow_anonymous: bool,
        allow_unsecured: bool,
        certificates: Mapping[bytes, str] | None = None,
    ) -> None:
        self._passwords = {name: pw.encode() for name, pw in passwords.items()}
        self._allow_anonymous = allow_anonymous
        self._allow_unsecured = allow_unsecured
        self._certificates = dict(certificates or {})

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        """Return the user for these credentials, or ``None`` to refuse (BadUserAccessDenied)."""
        del iserver  # required by asyncua's interface
        if isinstance(certificate, UserCertificateToken):  # an X.509 user login, signature ok
            if not certificate.secured and not self._allow_unsecured:
                return None
            name = self._certificates.get(certificate.fingerprint())
            return None if name is None else User(role=UserRole.User, name=name)
        if not certificate and not self._allow_unsecured:  # None or b"": unsecured channel
            return None
        if username is None:
            return User(role=UserRole.User, name=None) if self._allow_anonymous else None
        expected = self._passwords.get(username)
        given = (password or "").encode()
        # compare even for unknown users so timing does not reveal which names exist
        ok = hmac.compare_digest(given, expected if expected is not None else b"\0" + given)
        return User(role=UserRole.User, name=username) if ok and expected is not None else None
