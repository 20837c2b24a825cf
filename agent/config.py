"""The agent's configuration: one YAML file per deployment, environment variables override.

Loaded with pydantic-settings. ``FACTORY_AGENT__SPOOL__MAX_BYTES=2000000000`` overrides
``spool.max_bytes``; list entries are addressed by position
(``FACTORY_AGENT__SINKS__0__URL``). Secrets (InfluxDB token, OPC UA and InfluxDB passwords) are
``SecretStr`` and come from the environment or from ``*_file`` paths; they are never logged.

Every problem of a file is reported at once, each with its path, the bad value and a hint, and
unknown keys get a "did you mean" (:mod:`connectors.validation`).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent.sinks.influxdb import InfluxV1Config, InfluxV2Config
from connectors.modbus import ModbusConfig
from connectors.opcua_config import OpcUaConfig
from connectors.validation import ConfigErrors, Problem, load_yaml, problems_from_validation

DeviceConfig = Annotated[ModbusConfig | OpcUaConfig, Field(discriminator="type")]
SinkConfig = Annotated[InfluxV2Config | InfluxV1Config, Field(discriminator="type")]

#: Where the agent keeps its spool, history, journal and certificates unless told otherwise.
#: Relative to the working directory, so ``demo``, ``run`` and ``anomalies`` started from the
#: same place share it; the systemd unit sets ``/var/lib/factory-agent``.
DEFAULT_DATA_DIR = Path("factory-agent-data")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Section):
    name: str = Field("factory-agent", description="this agent's name (tag `agent`)")
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="spool, history, journal, pki")
    tags: dict[str, str] = Field(
        default_factory=dict, description="tags added to every reading, e.g. site"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    measurement: str = Field("machine", description="InfluxDB measurement of machine readings")


class SpoolConfig(_Section):
    max_bytes: int = Field(
        1_073_741_824, ge=1_000_000, description="disk budget per sink; oldest dropped beyond"
    )
    fsync: Literal["always", "interval", "never"] = Field(
        "interval", description="durability against power loss (see README)"
    )
    fsync_interval_s: float = Field(1.0, gt=0, le=60, description="for fsync: interval")
    newest_first: bool = Field(False, description="deliver the newest backlog first")
    batch_points: int = Field(5000, ge=1, le=100_000, description="points per write")
    batch_interval_s: float = Field(1.0, gt=0, le=60, description="longest wait to fill a batch")
    append_interval_s: float = Field(
        0.5, gt=0, le=10, description="longest a reading waits before it is spooled"
    )


class HistoryConfig(_Section):
    enabled: bool = Field(True, description="keep recent readings on disk for the review page")
    max_bytes: int = Field(268_435_456, ge=1_000_000, description="disk budget of the history")
    retention_h: float = Field(72.0, gt=0, description="hours of readings to keep at most")


class HttpConfig(_Section):
    listen: str = Field("127.0.0.1:8180", description="health, metrics and review page")
    enabled: bool = Field(True, description="serve /healthz, /metrics and the review page")
    token_file: Path | None = Field(
        None, description="file holding the access token; required off localhost"
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        _, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{listen!r} is not host:port, e.g. 127.0.0.1:8180")
        return listen

    @model_validator(mode="after")
    def _token_off_localhost(self) -> HttpConfig:
        host = self.listen.rpartition(":")[0]
        if self.enabled and self.token_file is None and not self.is_loopback(host):
            raise ValueError(
                f"listen {self.listen!r} is reachable from other machines, so the review page "
                "needs an access token: set http.token_file to a file holding one (e.g. "
                "`openssl rand -hex 32 > /etc/factory-agent/http-token`), "
                "or listen on 127.0.0.1"
            )
        return self

    @staticmethod
    def is_loopback(host: str) -> bool:
        """Whether ``host`` (of ``host:port``; empty means 127.0.0.1) is this machine only.

        >>> [HttpConfig.is_loopback(h) for h in ("", "127.0.0.1", "localhost", "[::1]", "::")]
        [True, True, True, True, False]
        """
        host = host.strip("[]").lower()
        if host in ("", "localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything


class MonitorConfig(_Section):
    interval_s: float = Field(10.0, gt=0, le=3600, description="self-metrics period")
    measurement: str = Field("agent_internal", description="measurement of self-metrics")


class AlarmSection(_Section):
    on_delay_s: float = Field(5.0, ge=0, description="score above the limit this long to open")
    off_delay_s: float = Field(60.0, ge=0, description="score below clear_ratio this long to close")
    clear_ratio: float = Field(0.8, gt=0, le=1, description="hysteresis: clears below this x limit")
    instant_ratio: float = Field(4.0, ge=1, description="opens at once above this x limit")
    max_per_hour: int = Field(6, ge=1, description="episodes per machine per hour, then suppressed")
    reopen_s: float = Field(300.0, ge=0, description="same cause again within this: re-open")
    chatter_count: int = Field(3, ge=2, description="episodes of one cause in chatter_window_s ...")
    chatter_window_s: float = Field(600.0, gt=0, description="... that shelve that cause")
    shelve_s: float = Field(1800.0, ge=0, description="how long a chattering cause is shelved")


CheckName = Literal["limits", "baseline", "rate", "flatline", "gap"]
#: The robust baseline is off by default: process signals that step with demand (a conveyor's
#: load) raise it; the multivariate model judges those through their relations instead.
DEFAULT_CHECKS: tuple[CheckName, ...] = ("limits", "rate", "flatline", "gap")


class AnalyticsSection(_Section):
    enabled: bool = Field(True, description="local anomaly detection")
    detector: Literal["pca-t2q", "iforest", "none"] = Field(
        "pca-t2q", description="per-machine multivariate model"
    )
    checks: list[CheckName] = Field(
        default_factory=lambda: list(DEFAULT_CHECKS),
        description="per-signal detectors",
    )
    step_s: float = Field(1.0, gt=0, le=3600, description="scoring step, seconds of machine time")
    warmup_s: float = Field(1800.0, gt=0, description="machine time of normal running to learn")
    warmup_rows: int = Field(300, ge=30, description="and at least this many steps")
    quantile: float = Field(0.999, gt=0.5, le=1, description="limits: this quantile of training")
    margin: float = Field(1.5, ge=1, description="limits: times this head room")
    relearn_factor: int = Field(
        4, ge=1, le=64,
        description="keep learning: refit as normal running doubles, to this x warm-up (1: off)",
    )  # fmt: skip
    scores: bool = Field(True, description="write scores as measurement anomaly_score")
    exclude: list[str] = Field(default_factory=list, description="machines not analysed")
    alarm: AlarmSection = Field(default_factory=AlarmSection)  # type: ignore[arg-type]


class AgentConfig(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(
        env_prefix="FACTORY_AGENT__",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        nested_model_default_partial_update=True,
    )

    agent: AgentSection = Field(default_factory=AgentSection)  # type: ignore[arg-type]
    devices: list[DeviceConfig] = Field(default_factory=list, description="machines to read")
    sinks: list[SinkConfig] = Field(
        default_factory=list, description="where to forward (none: the local history only)"
    )
    spool: SpoolConfig = Field(default_factory=SpoolConfig)  # type: ignore[arg-type]
    history: HistoryConfig = Field(default_factory=HistoryConfig)  # type: ignore[arg-type]
    http: HttpConfig = Field(default_factory=HttpConfig)  # type: ignore[arg-type]
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)  # type: ignore[arg-type]
    analytics: AnalyticsSection = Field(default_factory=AnalyticsSection)  # type: ignore[arg-type]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment is merged into the file's data by load_config (apply_environment):
        # pydantic-settings would replace a whole list from one indexed variable
        # (FACTORY_AGENT__SINKS__0__TOKEN dropped every other key of the sinks).
        return (init_settings,)

    def data_path(self, *parts: str) -> Path:
        return self.agent.data_dir.joinpath(*parts)


def _check(cfg: AgentConfig, errors: ConfigErrors) -> None:
    """Rules across entries: unique names, and what every device needs."""
    for kind, items in (("devices", cfg.devices), ("sinks", cfg.sinks)):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.name in seen:
                errors.add(f"{kind}[{i}].name", f"{item.name!r} is already used by "
                           f"{kind}[{seen[item.name]}]; names must be unique")  # fmt: skip
            seen.setdefault(item.name, i)
    if not any(d.enabled for d in cfg.devices):
        errors.add("devices", "no enabled device: add one (see configs/example.yaml) or "
                   "generate them with `factory-sim print-config`")  # fmt: skip


ENV_PREFIX = "FACTORY_AGENT__"


def apply_environment(
    data: dict[str, Any], environ: Mapping[str, str], errors: ConfigErrors
) -> dict[str, Any]:
    """Merge ``FACTORY_AGENT__A__B__0__C=value`` variables into the file's data (env wins).

    Keys are lower-cased; a number addresses an existing list entry. A value starting with
    ``[`` or ``{`` is read as JSON (a whole list or mapping); anything else stays text for the
    validators to convert.
    """
    out: dict[str, Any] = json.loads(json.dumps(data, default=str))
    for name in sorted(k for k in environ if k.startswith(ENV_PREFIX)):
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        raw = environ[name]
        try:
            value: Any = json.loads(raw) if raw[:1] in ("[", "{") else raw
        except json.JSONDecodeError as exc:
            errors.add(name, f"not valid JSON: {exc.msg}")
            continue
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    errors.add(name, f"{'.'.join(parts[:i])} has {len(node)} entries; "
                               f"{part!r} is not one of 0..{len(node) - 1}")  # fmt: skip
                    break
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                errors.add(name, f"{'.'.join(parts[:i])} is not a section")
                break
    return out


def load_config(path: Path | str, *, data_dir: Path | None = None) -> AgentConfig:
    """Load, override from the environment, validate; raise :class:`ConfigErrors` with all."""
    path = Path(path)
    data: Any = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigErrors(
            str(path), [Problem("", "the file must hold a mapping of keys to values")]
        )
    errors = ConfigErrors(str(path))
    data = apply_environment(data, os.environ, errors)
    if errors.problems:
        raise errors
    if data_dir is not None:
        data = {**data, "agent": {**(data.get("agent") or {}), "data_dir": str(data_dir)}}
    try:
        cfg = AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigErrors(str(path), problems_from_validation(AgentConfig, exc)) from None
    _check(cfg, errors)
    if errors.problems:
        raise errors
    return cfg
