"""Fixtures starting real InfluxDB 1.x and VictoriaMetrics servers (see tests/servers.py).

A missing binary fails the test with the command that installs it: these tests are part of
``make test`` and must not be skipped silently. Every process started here is killed at
teardown, whatever the test did (and dies with pytest anyway, through PR_SET_PDEATHSIG).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.servers import InfluxDB1, ServerStartError, VictoriaMetrics

S = TypeVar("S", InfluxDB1, VictoriaMetrics)


def _start(server: S) -> S:
    try:
        server.start()
    except ServerStartError as e:
        server.kill()
        pytest.fail(str(e), pytrace=False)
    return server


@pytest.fixture(scope="module")
def influxdb1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """An influxd 1.x without auth, shared by the tests of a module (use your own database)."""
    server = InfluxDB1(tmp_path_factory.mktemp("influxdb1"))
    try:
        yield _start(server)
    finally:
        server.kill()


@pytest.fixture(scope="module")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics shared by the tests of a module (use your own measurement names)."""
    server = VictoriaMetrics(tmp_path_factory.mktemp("victoria"))
    try:
        yield _start(server)
    finally:
        server.kill()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start a private server with options: ``start_server(InfluxDB1, auth_enabled=True)``.

    For tests that stop, kill, pause or reconfigure it; killed at the end of the test.
    """
    started: list[InfluxDB1 | VictoriaMetrics] = []

    def start(kind: type[S], **options: Any) -> S:
        server = kind(tmp_path / f"{kind.__name__.lower()}-{len(started)}", **options)
        started.append(server)
        return _start(server)

    try:
        yield start
    finally:
        for server in started:
            server.resume()
            server.kill()
