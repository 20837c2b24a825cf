"""OPC UA connector configuration, node addresses, values, endpoint choice and certificates."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import ua
from asyncua.crypto import security_policies

from connectors.base import ConnectorError
from connectors.opcua import convert, field_name, timestamp_ns
from connectors.opcua_config import (
    OpcUaConfig,
    PathElement,
    effective,
    parse_address,
)
from connectors.opcua_security import (
    check_server_certificate,
    load_password,
    own_certificate,
    select_endpoint,
)
from connectors.types import Quality, QualityLevel
from connectors.validation import validate_model
from simulators.agentconfig import device_section
from simulators.opcua_security import generate_certificate
from simulators.scenario import Scenario, load_scenario
from tests.conftest import CONFIGS

HINT = (
    "not a node address: use nsu=<namespace URI>;s=<name> (or i=, g=, b=), ns=<index>;s=<name>,"
    " or a browse path such as /Objects/plant/line-1/cnc-01/spindle_speed"
)


@pytest.fixture
def demo_device() -> dict[str, Any]:
    """The demo's OPC UA device exactly as ``factory-sim print-config`` writes it."""
    scn = load_scenario(CONFIGS / "scenarios" / "demo.yaml")
    (dev,) = yaml.safe_load(device_section(scn, protocols="opcua"))["devices"]
    return dict(dev)


def secure(**extra: Any) -> dict[str, Any]:
    node = {"field": "speed", "node_id": "ns=2;s=cnc/speed"}
    return {"name": "plc", "type": "opcua", "endpoint": "opc.tcp://plc:4840",
            "machines": [{"name": "cnc", "nodes": [node]}], **extra}  # fmt: skip


def errors(data: dict[str, Any]) -> str:
    return validate_model(OpcUaConfig, data, "agent.yaml").render()


def test_print_config_output_is_accepted(demo_device: dict[str, Any]) -> None:
    cfg = OpcUaConfig.model_validate(demo_device)
    assert (cfg.security_policy, cfg.allow_insecure, cfg.mode) == ("None", True, "subscribe")
    assert cfg.machines[0].tags == {"site": "haiphong", "line": "line-1"}
    node = cfg.machines[0].nodes[0]
    assert node.node_id == "nsu=urn:factory-agent:simulator;s=haiphong/line-1/cnc-01/spindle_speed"
    assert (node.unit, node.low, node.high) == ("rpm", 0, 12000)


def test_secure_defaults() -> None:
    cfg = OpcUaConfig.model_validate(secure())
    assert (cfg.security_policy, cfg.security_mode) == ("Basic256Sha256", "SignAndEncrypt")
    assert cfg.certificate_path == Path("pki/own/cert.der")
    assert cfg.private_key_path == Path("pki/own/key.pem")
    assert cfg.max_message_bytes == 16 * 1024 * 1024


@pytest.mark.parametrize("policy", ["None", None])
def test_policy_none_needs_allow_insecure(demo_device: dict[str, Any], policy: str | None) -> None:
    del demo_device["allow_insecure"]
    demo_device["security_policy"] = policy  # YAML "None" is text, "null" is None: both mean None
    shown = repr(policy)
    assert errors(demo_device) == (
        f"agent.yaml: security_policy: {shown}: policy None sends everything in clear text,"
        " passwords included: choose Basic256Sha256, Aes128_Sha256_RsaOaep,"
        " Aes256_Sha256_RsaPss, or set allow_insecure: true (test benches only)"
    )


@pytest.mark.parametrize(
    ("node_id", "detail"),
    [
        ("spindle_speed", ""),
        ("nsu=urn:x", ""),
        ("nsu=urn:x;ns=2;s=a", " (give nsu= or ns=, not both)"),
        ("ns=two;s=a", ""),
        ("i=abc", ""),
        ("/Objects//cnc", " (bad path element at character 10)"),
    ],
)
def test_bad_node_id_syntax(demo_device: dict[str, Any], node_id: str, detail: str) -> None:
    demo_device["machines"][1]["nodes"][2]["node_id"] = node_id
    assert errors(demo_device) == (
        f"agent.yaml: machines[1].nodes[2].node_id: {node_id!r}: {HINT}{detail}"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"username": "op"}, "username 'op' needs exactly one of password_env or password_file"
         " (passwords are never written in the configuration)"),
        ({"username": "op", "password_env": "PW", "password_file": "/run/pw"},
         "username 'op' needs exactly one of password_env or password_file"
         " (passwords are never written in the configuration)"),
        ({"password_env": "PW"}, "password_env/password_file given without username"),
        ({"user_certificate": "u.der"}, "user_certificate and user_private_key go together"),
        ({"username": "op", "password_env": "PW", "user_certificate": "u.der",
          "user_private_key": "u.pem"}, "log in by username or by user_certificate, not both"),
        ({"deadband_abs": 1, "deadband_pct": 2}, "give deadband_abs or deadband_pct, not both"),
    ],
)  # fmt: skip
def test_login_and_deadband_mistakes(extra: dict[str, Any], message: str) -> None:
    assert errors(secure(**extra)) == f"agent.yaml: {message}"


def test_password_itself_is_not_a_key() -> None:
    assert errors(secure(username="op", password="x")) == (  # noqa: S106 (refused on purpose)
        "agent.yaml: password: unknown key (did you mean 'password_env'?)"
    )


def test_machine_mistakes(demo_device: dict[str, Any]) -> None:
    data = copy.deepcopy(demo_device)
    data["machines"][0]["nodes"].append(dict(data["machines"][0]["nodes"][0]))
    data["machines"][1]["nodes"] = []
    data["machines"].append(data["machines"][2])
    assert errors(data).splitlines() == [
        "agent.yaml: machines[0]: field 'spindle_speed' appears twice (field names must be unique)",
        "agent.yaml: machines[1]: give nodes, discover, or both",
    ]
    del data["machines"][0]["nodes"][-1]
    data["machines"][1]["discover"] = {"root": "/Objects/haiphong/line-1/imm-01"}
    assert errors(data) == (
        "agent.yaml: machine 'conveyor-01' appears twice (machine names must be unique)"
    )


def test_address_forms() -> None:
    a = parse_address("nsu=urn:factory-agent:simulator;s=haiphong/line-1/cnc-01/spindle_speed")
    assert (a.uri, a.index, a.identifier) == (
        "urn:factory-agent:simulator",
        0,
        "s=haiphong/line-1/cnc-01/spindle_speed",
    )
    b = parse_address("ns=3;i=1001")
    assert (b.uri, b.index, b.identifier, b.path) == (None, 3, "i=1001", ())
    assert parse_address("i=2258").identifier == "i=2258"
    c = parse_address("/Objects/2:plant/{http://example.com/UA/}line-1/cnc-01")
    assert c.path == (
        PathElement("Objects"),
        PathElement("plant", index=2),
        PathElement("line-1", uri="http://example.com/UA/"),
        PathElement("cnc-01"),
    )


def test_settings_nearest_level_wins() -> None:
    data = secure(sampling_interval_s=0.5, queue_size=4, deadband_pct=1.0)
    data["machines"][0].update(deadband_abs=0.2)
    data["machines"][0]["nodes"].append(
        {"field": "temp", "node_id": "ns=2;s=cnc/temp", "queue_size": 10, "deadband_pct": 5}
    )
    cfg = OpcUaConfig.model_validate(data)
    m = cfg.machines[0]
    speed, temp = (effective(cfg, m, n) for n in m.nodes)
    assert (speed.sampling_ms, speed.queue_size, speed.deadband_value) == (500.0, 4, 0.2)
    assert speed.deadband_type == ua.DeadbandType.Absolute
    assert (temp.queue_size, temp.deadband_type, temp.deadband_value) == (
        10,
        ua.DeadbandType.Percent,
        5,
    )
    bare = OpcUaConfig.model_validate(secure())
    plain = effective(bare, bare.machines[0], None)
    assert (plain.sampling_ms, plain.queue_size, plain.deadband_type) == (-1.0, 1, 0)


# -- values ----------------------------------------------------------------------------------

T = datetime(2026, 1, 5, 6, 0, 1, 250000, tzinfo=UTC)
T_NS = 1_767_592_801_250_000_000


def dv(value: Any, status: int = 0, vtype: ua.VariantType | None = None) -> ua.DataValue:
    variant = ua.Variant(value, vtype) if vtype is not None else ua.Variant(value)
    return ua.DataValue(variant, ua.StatusCode(status), SourceTimestamp=T)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "value", "quality"),
    [
        (dv(21.5), 21.5, None),
        (dv(7, vtype=ua.VariantType.Int32), 7, None),
        (dv(True), True, None),
        (dv(ua.LocalizedText("run")), "run", None),
        (dv(None, 0x808C0000), None, Quality.bad(0x808C0000, "BadSensorFailure")),
        (dv(21.5, 0x80310000), None, Quality.bad(0x80310000, "BadNoCommunication")),
        (dv(21.5, 0x408F0000), 21.5,
         Quality.uncertain(0x408F0000, "UncertainNoCommunicationLastUsableValue")),
        (dv(math.nan), None, Quality.bad(0, "nan")),
        (dv(None, vtype=ua.VariantType.Null), None, Quality.bad(0, "no value")),
        (dv([1.0, 2.0]), None, Quality.bad(0, "unsupported value type list")),
    ],
)  # fmt: skip
def test_values_marked_never_invented(
    data: ua.DataValue, value: object, quality: Quality | None
) -> None:
    assert convert(data) == (value, quality)


def test_timestamps_and_field_names() -> None:
    assert timestamp_ns(dv(1.0)) == T_NS
    naive = ua.DataValue(ua.Variant(1.0), ServerTimestamp=T.replace(tzinfo=None))  # type: ignore[arg-type]
    assert timestamp_ns(naive) == T_NS  # no source timestamp: the server's, naive means UTC
    assert timestamp_ns(ua.DataValue(ua.Variant(1.0))) is None
    assert [field_name(n) for n in ("Spindle Speed", "temp.1", "2nd")] == [
        "Spindle_Speed",
        "temp_1",
        "_2nd",
    ]
    assert QualityLevel.BAD.value == "bad"


# -- endpoint choice, password, certificates -------------------------------------------------

NONE = security_policies.SecurityPolicyNone.URI
B256 = security_policies.SecurityPolicyBasic256Sha256.URI


def endpoint(uri: str, mode: str, *tokens: ua.UserTokenType) -> ua.EndpointDescription:
    return ua.EndpointDescription(
        SecurityPolicyUri=uri,
        SecurityMode=ua.MessageSecurityMode[mode],
        UserIdentityTokens=[ua.UserTokenPolicy(TokenType=t) for t in tokens],
    )


def test_endpoint_choice_names_what_the_server_offers() -> None:
    offered = [
        endpoint(NONE, "None_", ua.UserTokenType.Anonymous),
        endpoint(B256, "Sign", ua.UserTokenType.UserName),
        endpoint(B256, "SignAndEncrypt", ua.UserTokenType.UserName),
    ]
    cfg = OpcUaConfig.model_validate(secure(username="op", password_env="PW"))  # noqa: S106
    assert select_endpoint(cfg, offered) is offered[2]
    with pytest.raises(ConnectorError) as err:
        select_endpoint(cfg.model_copy(update={"security_policy": "Aes256_Sha256_RsaPss"}), offered)
    assert str(err.value) == (
        "plc: the server does not offer security Aes256_Sha256_RsaPss SignAndEncrypt; it offers:"
        " Basic256Sha256 Sign, Basic256Sha256 SignAndEncrypt, None"
        " (set security_policy and security_mode)"
    )
    with pytest.raises(ConnectorError) as err:
        select_endpoint(OpcUaConfig.model_validate(secure()), offered)
    assert str(err.value) == (
        "plc: the server does not accept Anonymous logins on this endpoint (it accepts:"
        " UserName): set username with password_env or password_file"
    )
    assert not err.value.retryable


def test_password_comes_from_env_or_file_and_is_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = "OPCUA_TEST_PW"
    cfg = OpcUaConfig.model_validate(secure(username="op", password_env=env))
    monkeypatch.delenv("OPCUA_TEST_PW", raising=False)
    with pytest.raises(ConnectorError, match="password_env: environment variable 'OPCUA_TEST_PW'"
                       " is not set"):  # fmt: skip
        load_password(cfg)
    monkeypatch.setenv("OPCUA_TEST_PW", "s3cret")
    secret = load_password(cfg)
    assert secret is not None and secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(secret) and "s3cret" not in str(secret)
    (tmp_path / "pw").write_text("from-file\n")
    cfg = OpcUaConfig.model_validate(secure(username="op", password_file=str(tmp_path / "pw")))
    assert (load_password(cfg) or secret).get_secret_value() == "from-file"


async def test_own_certificate_is_generated_once_and_kept(tmp_path: Path) -> None:
    cfg = OpcUaConfig.model_validate(secure(pki_dir=str(tmp_path), application_uri="urn:a:agent"))
    first = await own_certificate(cfg)
    again = await own_certificate(cfg)
    assert first.generated and not again.generated
    assert first.application_uri == again.application_uri == "urn:a:agent"
    assert (tmp_path / "own" / "key.pem").stat().st_mode & 0o077 == 0
    other = cfg.model_copy(update={"application_uri": "urn:b:agent"})
    with pytest.raises(ConnectorError, match="carries application URI urn:a:agent but"):
        await own_certificate(other)
    default = cfg.model_copy(update={"application_uri": None})
    assert (await own_certificate(default)).application_uri == "urn:a:agent"  # from the cert


def test_unknown_server_certificate_is_saved_and_trusted_once_moved(tmp_path: Path) -> None:
    cert, key = tmp_path / "server.der", tmp_path / "server.pem"
    generate_certificate(cert, key, "urn:plc")
    cfg = OpcUaConfig.model_validate(secure(pki_dir=str(tmp_path / "pki")))
    with pytest.raises(ConnectorError) as err:
        check_server_certificate(cfg, cert.read_bytes())
    rejected = tmp_path / "pki" / "rejected" / "plc.der"
    trusted = tmp_path / "pki" / "trusted"
    assert f"move that file into {trusted}/ (mv {rejected} {trusted}/)" in str(err.value)
    rejected.rename(trusted / "plc.der")
    assert check_server_certificate(cfg, cert.read_bytes()).subject.rfc4514_string()


def test_print_config_writes_the_login_when_anonymous_is_off(tmp_path: Path) -> None:
    base = load_scenario(CONFIGS / "scenarios" / "demo.yaml").model_dump()

    def printed(**opcua: Any) -> dict[str, Any]:
        data = {**base, "opcua": {**base["opcua"], **opcua}}
        (dev,) = yaml.safe_load(device_section(Scenario.model_validate(data), "opcua"))["devices"]
        return dict(dev)

    anonymous = printed()
    assert "username" not in anonymous and "password_env" not in anonymous
    by_env = printed(allow_anonymous=False)
    assert (by_env["username"], by_env["password_env"]) == (
        "operator",
        "FACTORY_SIM_OPERATOR_PASSWORD",
    )
    OpcUaConfig.model_validate(by_env)  # a device the agent accepts as it is
    secret = tmp_path / "pw"
    by_file = printed(allow_anonymous=False, users=[{"name": "qa", "password_file": str(secret)}])
    assert (by_file["username"], by_file["password_file"]) == ("qa", str(secret))
    cert = tmp_path / "user.der"
    text = device_section(
        Scenario.model_validate(
            {
                **base,
                "opcua": {
                    **base["opcua"],
                    "allow_anonymous": False,
                    "users": [],
                    "security": ["Basic256Sha256_SignAndEncrypt"],
                    "user_certificates": [str(cert)],
                },
            }
        ),
        "opcua",
    )
    assert f"#   {cert}" in text and "# user_certificate: ..." in text
