"""Login by X.509 user certificate: the simulator trusts the certificates a scenario lists, the
agent's OPC UA connector logs in with one over Basic256Sha256 SignAndEncrypt and reads the plant,
any other certificate is refused with a clear message, and ``factory-agent check`` says which.

Every certificate and key is generated at test time.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connectors.base import ConnectorError
from connectors.opcua import OpcUaConfig, OpcUaConnector
from connectors.types import Reading
from simulators.agentconfig import device_section
from simulators.cli import main as factory_sim
from simulators.engine import Plant
from simulators.opcua_security import CERT_FILE, OpcUaSetupError
from simulators.opcua_server import OpcUaSimServer
from simulators.scenario import Scenario, load_scenario
from tests.conftest import CONFIGS, ROOT, free_port, serving_opcua, start_sim, wait_banner

pytestmark = pytest.mark.integration
# One event loop for the module's async tests, so the simulator server (~2 s to start) is shared.
in_module_loop = pytest.mark.asyncio(loop_scope="module")

AGENT = [sys.executable, "-m", "agent.cli"]
PASSWORD_ENV = "FACTORY_SIM_OPERATOR_PASSWORD"  # noqa: S105 (a variable's name, from demo.yaml)
SECURE = {"security": ["Basic256Sha256_SignAndEncrypt"], "allow_anonymous": False}
TIMEOUT_S = 5.0


# -- certificates ---------------------------------------------------------------------------------


def make_user(folder: Path, name: str, *, pem: bool = False, key: str = "rsa") -> tuple[Path, Path]:
    """A self-signed user certificate (CN ``name``) and its key.

    DER certificate ``<name>.der`` and PEM key ``<name>-key.pem`` (the names asyncua reads by
    suffix); with ``pem`` a PEM certificate ``<name>.crt`` and PEM key ``<name>.key``, as
    openssl users name them. The key is an unencrypted RSA key; ``key="ec"`` makes a P-256 key,
    ``"encrypted"`` an RSA key under a passphrase.
    """
    folder.mkdir(parents=True, exist_ok=True)
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    private = ec.generate_private_key(ec.SECP256R1()) if key == "ec" else (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )  # fmt: skip
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(private, hashes.SHA256())
    )  # fmt: skip
    cert_path = folder / (f"{name}.crt" if pem else f"{name}.der")
    key_path = folder / (f"{name}.key" if pem else f"{name}-key.pem")
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    cert_path.write_bytes(cert.public_bytes(encoding))
    protect: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(b"passphrase") if key == "encrypted"
        else serialization.NoEncryption()
    )  # fmt: skip
    key_path.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, protect
    ))  # fmt: skip
    return cert_path, key_path


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """``maintenance`` (trusted by the server) and ``visitor`` (not trusted)."""
    folder = tmp_path_factory.mktemp("users")
    return {name: make_user(folder, name) for name in ("maintenance", "visitor")}


# -- the simulator ----------------------------------------------------------------------------


def demo(**opcua: Any) -> Scenario:
    """The demo scenario on a free port, with ``opcua`` changes."""
    data = load_scenario(CONFIGS / "scenarios" / "demo.yaml").model_dump(mode="json")
    data["opcua"].update(port=0, **opcua)
    return Scenario.model_validate(data)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure(
    tmp_path_factory: pytest.TempPathFactory, users: dict[str, tuple[Path, Path]]
) -> AsyncIterator[tuple[Plant, OpcUaSimServer]]:
    """SignAndEncrypt only, no anonymous login; user ``operator`` and maintenance's certificate."""
    opcua = {**SECURE, "cert_dir": str(tmp_path_factory.mktemp("server-pki")),
             "user_certificates": [str(users["maintenance"][0])]}  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv(PASSWORD_ENV, "s3cret")  # the demo's password user, read at start
        plant = Plant(demo(**opcua))
        async with serving_opcua(plant) as server:
            yield plant, server


def trust_server(server_cert_dir: Path, pki: Path) -> Path:
    """Put the simulator's certificate into the agent's ``pki/trusted/``; return ``pki``."""
    (pki / "trusted").mkdir(parents=True, exist_ok=True)
    shutil.copy(server_cert_dir / CERT_FILE, pki / "trusted" / "simulator.der")
    return pki


def device(scn: Scenario, endpoint: str, pki: Path, **login: Any) -> OpcUaConfig:
    """What ``factory-sim print-config`` says for ``scn``, secured, logging in with ``login``."""
    (dev,) = yaml.safe_load(device_section(scn, protocols="opcua"))["devices"]
    for key in ("username", "password_env", "password_file", "allow_insecure"):
        dev.pop(key, None)
    dev.update({"endpoint": endpoint, "pki_dir": str(pki), "timeout_s": 1.0, "mode": "poll",
                "security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt", **login})  # fmt: skip
    return OpcUaConfig.model_validate(dev)


def by_certificate(
    secure: tuple[Plant, OpcUaSimServer], pki: Path, cert: Path, key: Path
) -> OpcUaConnector:
    plant, server = secure
    assert server.spec.cert_dir is not None
    trust_server(server.spec.cert_dir, pki)
    cfg = device(plant.scenario, server.endpoint, pki, user_certificate=str(cert),
                 user_private_key=str(key))  # fmt: skip
    return OpcUaConnector(cfg)


async def read_once(conn: OpcUaConnector, plant: Plant, server: OpcUaSimServer) -> list[Reading]:
    """Connect, move the plant one step on, poll once, close."""
    await conn.connect()
    try:
        assert conn.health.connected
        plant.step()
        await server.publish(plant)
        return await conn.poll()
    finally:
        await conn.close()


def assert_plant_values(readings: list[Reading], plant: Plant) -> None:
    """Every field of every reading is the plant's current value of that signal."""
    machines = {m.name: m for m in plant.machines}
    assert {r.machine for r in readings} == set(machines)
    for r in readings:
        m = machines[r.machine]
        assert set(r.fields) == {s.name for s in m.signals}, r.machine
        for sig, value in zip(m.signals, m.values, strict=True):
            assert r.fields[sig.name] == value, (r.machine, sig.name)


# -- logging in -----------------------------------------------------------------------------------


@in_module_loop
async def test_trusted_user_certificate_logs_in_and_reads_the_plant(
    secure: tuple[Plant, OpcUaSimServer], users: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    plant, server = secure
    conn = by_certificate(secure, tmp_path / "pki", *users["maintenance"])
    assert_plant_values(await read_once(conn, plant, server), plant)
    assert server.certificate_users == ["maintenance"]
    assert "logins: user operator, certificate of maintenance)" in server.describe()


@in_module_loop
async def test_pem_certificate_and_key_under_any_file_name(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # user.crt / user.key in PEM: asyncua alone reads anything not called .pem as DER
    cert, key = make_user(tmp_path / "user", "shift-lead", pem=True)
    opcua = {**SECURE, "cert_dir": str(tmp_path_factory.mktemp("server-pki")), "users": [],
             "user_certificates": [str(cert)]}  # fmt: skip
    plant = Plant(demo(**opcua))
    server = OpcUaSimServer(plant, port=0)
    await server.start()
    try:
        assert server.users == []  # the certificate is the only way in
        conn = by_certificate((plant, server), tmp_path / "pki", cert, key)
        assert_plant_values(await read_once(conn, plant, server), plant)
    finally:
        await server.stop()


@in_module_loop
async def test_untrusted_user_certificate_is_refused_with_a_clear_message(
    secure: tuple[Plant, OpcUaSimServer], users: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    plant, server = secure
    cert, key = users["visitor"]
    conn = by_certificate(secure, tmp_path / "pki", cert, key)
    with pytest.raises(ConnectorError) as err:
        await conn.connect()
    await conn.close()  # what the agent does before trying the device again
    assert not err.value.retryable
    assert str(err.value) == (
        f"demo-opcua: login with user certificate {cert} refused (BadUserAccessDenied"
        " (0x801F0000)): the server does not accept it as a user (have it added to its trusted"
        " user certificates)"
    )
    # nothing broke: the server goes on serving the trusted certificate
    conn = by_certificate(secure, tmp_path / "pki", *users["maintenance"])
    assert_plant_values(await read_once(conn, plant, server), plant)


@in_module_loop
async def test_password_login_unchanged_beside_certificates(
    secure: tuple[Plant, OpcUaSimServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant, server = secure
    assert server.spec.cert_dir is not None
    pki = trust_server(server.spec.cert_dir, tmp_path / "pki")
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    cfg = device(plant.scenario, server.endpoint, pki, username="operator",
                 password_env=PASSWORD_ENV)  # fmt: skip
    assert_plant_values(await read_once(OpcUaConnector(cfg), plant, server), plant)


@in_module_loop
@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("other key", "user_private_key: {key} is not the key of user_certificate {cert}"),
        ("ec", "user_private_key: {key} is not an RSA key: OPC UA user certificates with these"
               " security policies are RSA"),
        ("encrypted", "user_private_key: {key} is encrypted: give the key without a passphrase"
                      " (readable by the agent only)"),
        ("not a certificate", "user_certificate: {cert} is not a DER or PEM certificate"),
        ("missing key", "user_private_key: cannot read {key}: No such file or directory"),
        ("missing certificate", "user_certificate: cannot read {cert}: No such file or directory"),
    ],
)  # fmt: skip
async def test_unusable_certificate_or_key_is_named_before_logging_in(
    secure: tuple[Plant, OpcUaSimServer],
    users: dict[str, tuple[Path, Path]],
    tmp_path: Path,
    problem: str,
    message: str,
) -> None:
    cert, key = users["maintenance"]
    if problem == "other key":
        key = users["visitor"][1]
    elif problem in ("ec", "encrypted"):
        cert, key = make_user(tmp_path, "odd", key=problem)
    elif problem == "not a certificate":
        cert = tmp_path / "notes.der"
        cert.write_text("not a certificate")
    elif problem == "missing key":
        key = tmp_path / "gone.pem"
    else:
        cert = tmp_path / "gone.der"
    conn = by_certificate(secure, tmp_path / "pki", cert, key)
    with pytest.raises(ConnectorError) as err:
        await conn.connect()
    await conn.close()
    assert not err.value.retryable
    assert str(err.value) == "demo-opcua: " + message.format(cert=cert, key=key)


# -- what the server offers and enforces ------------------------------------------------------------


def token_types(endpoints: list[ua.EndpointDescription]) -> dict[str, set[str]]:
    """Security policy name and mode -> the user token types offered there."""
    return {
        f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]} {ep.SecurityMode.name}": {
            t.TokenType.name for t in ep.UserIdentityTokens
        }
        for ep in endpoints
    }


@in_module_loop
async def test_certificate_login_is_offered_only_when_certificates_are_listed(
    secure: tuple[Plant, OpcUaSimServer],
) -> None:
    _, server = secure
    endpoints = await Client(server.endpoint, timeout=TIMEOUT_S).connect_and_get_server_endpoints()
    assert token_types(endpoints) == {"Basic256Sha256 SignAndEncrypt": {"UserName", "Certificate"}}
    (token,) = [t for t in endpoints[0].UserIdentityTokens if t.TokenType.name == "Certificate"]
    assert token.SecurityPolicyUri == SecurityPolicyBasic256Sha256.URI  # the login is signed

    plain = OpcUaSimServer(Plant(demo(users=[])), port=0)  # the demo's security, no logins
    await plain.start()
    try:
        endpoints = await Client(
            plain.endpoint, timeout=TIMEOUT_S
        ).connect_and_get_server_endpoints()
    finally:
        await plain.stop()
    offered = token_types(endpoints)
    assert len(offered) == 5  # None and Basic256Sha256/Aes256_Sha256_RsaPss, Sign and Encrypt
    assert all(types == {"Anonymous"} for types in offered.values()), offered


@in_module_loop
async def test_certificate_login_on_an_unsecured_channel_is_refused(
    secure: tuple[Plant, OpcUaSimServer],
    users: dict[str, tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client that skips the offered endpoints and logs in with a trusted certificate on the
    # discovery-only unsecured channel, signing what a secured client signs (the server's
    # certificate and nonce): the token is valid, the channel is not what the server offers.
    _, server = secure
    assert server.spec.cert_dir is not None

    def any_endpoint(*_: object) -> ua.EndpointDescription:
        token = ua.UserTokenPolicy(PolicyId="certificate", TokenType=ua.UserTokenType.Certificate,
                                   SecurityPolicyUri=SecurityPolicyBasic256Sha256.URI)  # fmt: skip
        return ua.EndpointDescription(UserIdentityTokens=[token])

    monkeypatch.setattr(Client, "find_endpoint", staticmethod(any_endpoint))
    c = Client(server.endpoint, timeout=TIMEOUT_S)
    cert, key = users["maintenance"]
    await c.load_client_certificate(str(cert))
    await c.load_private_key(key)
    await c.connect_socket()
    try:
        await c.send_hello()
        await c.open_secure_channel()
        await c.create_session()
        c.security_policy.peer_certificate = (server.spec.cert_dir / CERT_FILE).read_bytes()
        with pytest.raises(UaStatusCodeError) as err:
            await c.activate_session(certificate=c.user_certificate)
    finally:
        c.disconnect_socket()
    assert err.value.code == StatusCodes.BadUserAccessDenied


# -- scenario errors ----------------------------------------------------------------------------


def test_scenario_names_a_missing_certificate_and_a_policy_that_cannot_sign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load((CONFIGS / "scenarios" / "demo.yaml").read_text())
    missing = tmp_path / "nobody.der"
    data["opcua"].update(security=["None"], user_certificates=[str(missing)])
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    assert factory_sim(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        f"opcua.user_certificates[0]: {str(missing)!r} is not a file (give the path of a user's"
        " certificate, DER or PEM)"
    ) in err
    assert (
        "opcua.user_certificates: a user certificate login is signed with a policy: add one other"
        " than None to opcua.security, e.g. Basic256Sha256_SignAndEncrypt"
    ) in err
    assert "Traceback" not in err


@in_module_loop
async def test_a_file_that_is_no_certificate_stops_the_start_naming_it(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("maintenance: ask the shift lead")
    server = OpcUaSimServer(Plant(demo(**SECURE, user_certificates=[str(notes)])), port=0)
    with pytest.raises(OpcUaSetupError) as err:
        await server.start()
    await server.stop()
    assert str(err.value) == (
        f"opcua.user_certificates[0]: {str(notes)!r} is not a DER or PEM certificate"
    )


# -- factory-agent check ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, users: dict[str, tuple[Path, Path]]
) -> Iterator[tuple[int, Path]]:
    """``factory-sim run`` on a scenario file trusting maintenance's certificate: (port, cert dir)."""
    folder = tmp_path_factory.mktemp("sim")
    data = yaml.safe_load((CONFIGS / "scenarios" / "demo.yaml").read_text())
    data["opcua"].update(SECURE, users=[], cert_dir=str(folder / "pki"),
                         user_certificates=[str(users["maintenance"][0])])  # fmt: skip
    data["modbus"]["enabled"] = False
    scenario = folder / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(data))
    port = free_port()
    proc = start_sim(str(scenario), "--opcua-port", str(port), "--speed", "1",
                     "--duration", "300", "--labels", os.devnull)  # fmt: skip
    try:
        banner = wait_banner(proc)
        assert "logins: certificate of maintenance)" in banner
        yield port, folder / "pki"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


def agent_config(tmp_path: Path, port: int, cert: Path, key: Path) -> Path:
    """configs/demo.yaml's OPC UA device, secured, logging in with ``cert``."""
    cfg = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    (dev,) = [d for d in cfg["devices"] if d["type"] == "opcua"]
    del dev["allow_insecure"]
    dev.update(endpoint=f"opc.tcp://127.0.0.1:{port}", security_policy="Basic256Sha256",
               security_mode="SignAndEncrypt", pki_dir=str(tmp_path / "pki"),
               user_certificate=str(cert), user_private_key=str(key))  # fmt: skip
    cfg["devices"] = [dev]
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def check(config: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, "check", "-c", str(config), "--timeout", "5", "--data-dir",
                           str(data_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_check_reports_the_certificate_login_working_and_refused(
    served: tuple[int, Path], users: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    port, server_pki = served
    trust_server(server_pki, tmp_path / "pki")

    out = check(agent_config(tmp_path, port, *users["maintenance"]), tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    (line,) = out.stdout.splitlines()
    assert line.startswith("ok") and "device demo-opcua" in line and "3/3 machines" in line

    cert, key = users["visitor"]
    out = check(agent_config(tmp_path, port, cert, key), tmp_path)
    assert out.returncode == 2
    (line,) = out.stdout.splitlines()
    assert line.startswith("FAIL") and "device demo-opcua" in line
    assert f"login with user certificate {cert} refused (BadUserAccessDenied" in line
    assert "Traceback" not in out.stderr
