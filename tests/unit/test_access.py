"""Access rules without a server: sessions expire, are bound to the process and the token."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from agent.access import SESSION_MAX_AGE_S, Access, _safe_next
from agent.config import HttpConfig

TOKEN = secrets.token_hex(16)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lasts_its_max_age_then_expires() -> None:
    clock = Clock()
    access = Access(TOKEN, loopback_only=False, clock=clock)
    cookie = access.new_session()
    clock.now += SESSION_MAX_AGE_S
    assert access.session_valid(cookie)
    clock.now += 1
    assert not access.session_valid(cookie)


def test_a_session_is_worth_nothing_to_another_process_or_token() -> None:
    clock = Clock()
    access = Access(TOKEN, loopback_only=False, clock=clock)
    cookie = access.new_session()
    restarted = Access(TOKEN, loopback_only=False, clock=clock)  # a new per-process secret
    other_token = Access(secrets.token_hex(16), loopback_only=False, clock=clock,
                         secret=access._secret)  # fmt: skip
    assert access.session_valid(cookie)
    assert not restarted.session_valid(cookie)
    assert not other_token.session_valid(cookie)
    issued, _, mac = cookie.partition(".")
    assert not access.session_valid(f"{int(issued) + 1}.{mac}")  # the time is signed too
    assert not access.session_valid("")
    assert not Access(None, loopback_only=True).session_valid(cookie)


def test_token_comparison_ignores_surrounding_whitespace_only() -> None:
    access = Access(TOKEN, loopback_only=False)
    assert access.token_matches(f" {TOKEN}\n")
    assert not access.token_matches(TOKEN[:-1])
    assert not access.token_matches(TOKEN.upper())
    assert not Access(None, loopback_only=True).token_matches("")


@pytest.mark.parametrize(
    ("given", "expected"),
    [("/anomalies?state=open", "/anomalies?state=open"), ("//evil.example/", "/"),
     ("/\\evil.example", "/"), ("https://evil.example/", "/"), ("", "/")],
)  # fmt: skip
def test_login_redirects_only_to_this_server(given: str, expected: str) -> None:
    assert _safe_next(given) == expected


@pytest.mark.parametrize(
    ("listen", "needs_token"),
    [("127.0.0.1:8180", False), ("localhost:8180", False), ("[::1]:8180", False),
     (":8180", False), ("127.5.0.1:8180", False), ("0.0.0.0:8180", True), ("[::]:8180", True),
     ("10.20.0.5:8180", True), ("agent.plant.example:8180", True)],
)  # fmt: skip
def test_only_loopback_may_listen_without_a_token(listen: str, needs_token: bool) -> None:
    assert HttpConfig.is_loopback(listen.rpartition(":")[0]) is not needs_token
    if needs_token:
        with pytest.raises(ValueError, match=r"needs an access token: set http.token_file"):
            HttpConfig(listen=listen)
        HttpConfig(listen=listen, enabled=False)  # not served at all: nothing to protect
    HttpConfig(listen=listen, token_file=Path("/etc/factory-agent/http-token"))


@pytest.mark.parametrize("listen", ["8180", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000"])
def test_listen_must_be_host_and_port(listen: str) -> None:
    with pytest.raises(ValueError, match=r"is not host:port, e.g. 127.0.0.1:8180"):
        HttpConfig(listen=listen)
