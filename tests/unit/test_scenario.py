"""Scenario files: every shipped scenario loads, and bad ones give the exact expected errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.validation import ConfigErrors
from simulators.cli import main
from simulators.scenario import load_scenario, parse_duration
from tests.conftest import CONFIGS, ROOT

CASES = sorted(p for p in (ROOT / "tests" / "cases" / "scenarios").iterdir() if p.is_dir())
SHIPPED = sorted((CONFIGS / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_scenario_loads(path: Path) -> None:
    scn = load_scenario(path)
    assert scn.machines


def test_demo_scenario_has_every_machine_kind() -> None:
    from simulators.models import MODELS

    scn = load_scenario(CONFIGS / "scenarios" / "demo.yaml")
    assert {m.kind for m in scn.machines} == set(MODELS)
    assert scn.faults, "the demo must show at least one fault"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_bad_scenario_reports_exact_errors(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(case)
    with pytest.raises(ConfigErrors) as info:
        load_scenario("scenario.yaml")
    expected = (case / "error.txt").read_text(encoding="utf-8").rstrip("\n")
    assert info.value.render() == expected


def test_cli_exits_2_with_the_message_and_no_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    case = ROOT / "tests" / "cases" / "scenarios" / "overlapping-port"
    monkeypatch.chdir(case)
    assert main(["validate", "scenario.yaml"]) == 2
    err = capsys.readouterr().err
    assert "modbus.port: 5020 is also opcua.port" in err
    assert "Traceback" not in err


def test_cli_override_that_makes_ports_overlap_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    demo = str(CONFIGS / "scenarios" / "demo.yaml")
    assert main(["print-config", demo, "--opcua-port", "5020"]) == 2
    assert "give each protocol its own port" in capsys.readouterr().err


def test_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "no-such-scenario.yaml"]) == 2
    assert "no-such-scenario.yaml: cannot read the file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("10m", 600.0), ("1h30m", 5400.0), ("2h", 7200.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1d", True, "-5m"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)
