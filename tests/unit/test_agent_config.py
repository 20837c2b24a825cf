"""The agent's configuration: every shipped file loads, bad files give exact errors, env wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config
from agent.configdoc import example_config
from connectors.validation import ConfigErrors
from tests.conftest import CONFIGS, ROOT

CASES = sorted(p for p in (ROOT / "tests" / "cases" / "config").iterdir() if p.is_dir())
AGENT_CONFIGS = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", AGENT_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    assert load_config(path).devices


def test_example_config_is_current() -> None:
    text = (CONFIGS / "example.yaml").read_text(encoding="utf-8")
    assert text == example_config(), (
        "regenerate: factory-agent example-config > configs/example.yaml"
    )


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_bad_config_reports_exact_errors(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(case)
    with pytest.raises(ConfigErrors) as info:
        load_config("config.yaml")
    assert info.value.render() == (case / "error.txt").read_text(encoding="utf-8").rstrip("\n")


def test_validate_exits_2_without_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT / "tests" / "cases" / "config" / "typo-keys")
    assert main(["validate", "-c", "config.yaml"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'port'?" in err and "Traceback" not in err


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTORY_AGENT__SPOOL__MAX_BYTES", "2000000")
    monkeypatch.setenv("FACTORY_AGENT__AGENT__NAME", "from-env")
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.spool.max_bytes == 2_000_000
    assert cfg.agent.name == "from-env"
    assert cfg.agent.tags == {"site": "haiphong"}  # the rest of the section is the file's


def test_bad_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACTORY_AGENT__SPOOL__FSYNC", "sometimes")
    with pytest.raises(ConfigErrors, match=r"spool\.fsync: 'sometimes' is not one of"):
        load_config(CONFIGS / "demo.yaml")


def test_data_dir_override(tmp_path: Path) -> None:
    assert load_config(CONFIGS / "demo.yaml", data_dir=tmp_path).agent.data_dir == tmp_path


def test_indexed_environment_variable_changes_one_key_of_one_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg_file = tmp_path / "agent.yaml"
    text = (CONFIGS / "demo.yaml").read_text()
    cfg_file.write_text(
        text
        + "sinks:\n  - {name: central, type: influxdb, url: 'http://i:8086', org: o, bucket: b}\n"
    )
    monkeypatch.setenv("FACTORY_AGENT__SINKS__0__TOKEN", "s3cret")
    monkeypatch.setenv("FACTORY_AGENT__DEVICES__1__PORT", "5555")
    cfg = load_config(cfg_file)
    assert cfg.sinks[0].url == "http://i:8086" and cfg.sinks[0].token is not None
    assert cfg.sinks[0].token.get_secret_value() == "s3cret"
    assert cfg.devices[1].port == 5555 and cfg.devices[0].type == "opcua"
    monkeypatch.setenv("FACTORY_AGENT__SINKS__4__TOKEN", "x")
    with pytest.raises(
        ConfigErrors,
        match=r"FACTORY_AGENT__SINKS__4__TOKEN: sinks has 1 entries; '4' is not one of 0..0",
    ):
        load_config(cfg_file)
