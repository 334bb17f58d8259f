"""SASL PLAIN/LOGIN decoding and the auth-failure limiter (shared by POP3 and, later, IMAP)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.auth import (
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
    AuthFailureLimiter,
    SaslError,
    client_key,
    decode_base64,
    decode_plain,
)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (b"\0alice@example.org\0secret", ("alice@example.org", "secret")),
        (b"alice@example.org\0alice@example.org\0pw", ("alice@example.org", "pw")),
        (b"ALICE@example.org\0alice@example.org\0pw", ("alice@example.org", "pw")),
        (b"\0b\xc3\xb6b\0p\xc3\xa4ss word", ("böb", "päss word")),
    ],
)
def test_decode_plain(response: bytes, expected: tuple[str, str]) -> None:
    assert decode_plain(response) == expected


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (b"", "Malformed"),
        (b"alice\0secret", "Malformed"),
        (b"\0\0secret", "Malformed"),
        (b"\0alice\0", "Malformed"),
        (b"\0a\0b\0c", "Malformed"),
        (b"bob\0alice\0secret", "Authorization identity"),
        (b"\0\xff\0secret", "not UTF-8"),
    ],
)
def test_decode_plain_refuses(response: bytes, reason: str) -> None:
    with pytest.raises(SaslError, match=reason):
        decode_plain(response)


@pytest.mark.parametrize("text", ["!!!!", "YWJj ZA==", "YWJjZA", "YWJjZA===", "é"])
def test_decode_base64_is_strict(text: str) -> None:
    with pytest.raises(SaslError):
        decode_base64(text)


@given(st.binary(max_size=200))
def test_decode_base64_round_trips(data: bytes) -> None:
    assert decode_base64(base64.b64encode(data).decode()) == data


def test_login_challenges() -> None:
    assert LOGIN_USERNAME_CHALLENGE == "VXNlcm5hbWU6"
    assert LOGIN_PASSWORD_CHALLENGE == "UGFzc3dvcmQ6"


def test_client_key() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("not an ip") == "not an ip"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_per_ip_and_window() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(3, 0, 60, clock)
    for i in range(3):
        assert not limiter.blocked("192.0.2.1", f"user{i}@example.org")
        limiter.record_failure("192.0.2.1", f"user{i}@example.org")
    assert limiter.blocked("192.0.2.1")
    assert limiter.blocked("192.0.2.1", "someone@example.org")
    assert not limiter.blocked("192.0.2.2", "user0@example.org")  # per-account limit is off
    clock.now += 59
    assert limiter.blocked("192.0.2.1")
    clock.now += 2
    assert not limiter.blocked("192.0.2.1")


def test_limiter_per_account_across_addresses() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(100, 2, 60, clock)
    limiter.record_failure("192.0.2.1", "Alice@example.org")
    limiter.record_failure("198.51.100.9", "alice@example.org")
    assert limiter.blocked("203.0.113.5", "alice@EXAMPLE.org")
    assert not limiter.blocked("203.0.113.5", "bob@example.org")
    assert not limiter.blocked("203.0.113.5")


def test_limiter_counts_an_ipv6_slash_64_as_one_client() -> None:
    limiter = AuthFailureLimiter(2, 0, 60, Clock())
    limiter.record_failure("2001:db8::1")
    limiter.record_failure("2001:db8::2")
    assert limiter.blocked("2001:db8::ffff")
    assert not limiter.blocked("2001:db8:0:1::1")


def test_limiter_memory_is_bounded() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(5, 5, 60, clock)
    limiter.MAX_KEYS = 100
    for i in range(1000):
        limiter.record_failure(f"10.0.{i // 256}.{i % 256}", f"u{i}@example.org")
    assert len(limiter._failures) <= 102


def test_parallel_attempts_cannot_all_pass_the_check() -> None:
    """Attempts count from the moment they start: ten at once against a limit of three."""
    limiter = AuthFailureLimiter(3, 0, 300.0, clock=lambda: 1000.0)
    allowed = [limiter.try_attempt("192.0.2.1", "alice@example.org") for _ in range(10)]
    assert allowed == [True, True, True] + [False] * 7
    # A success gives its attempt back; failures keep theirs.
    limiter.withdraw("192.0.2.1", "alice@example.org")
    assert limiter.try_attempt("192.0.2.1", "alice@example.org")
    assert not limiter.try_attempt("192.0.2.1", "alice@example.org")


def test_attempts_in_progress_are_told_apart_from_failures() -> None:
    """A client opening many sessions at once waits for its other logins; a guesser whose
    failures fill the budget is refused."""
    limiter = AuthFailureLimiter(2, 0, 300.0, clock=lambda: 1000.0)
    assert limiter.try_attempt("192.0.2.1") and limiter.try_attempt("192.0.2.1")
    assert not limiter.try_attempt("192.0.2.1")
    assert not limiter.failed_out("192.0.2.1")  # only in progress: worth waiting for
    limiter.withdraw("192.0.2.1")  # one succeeded
    assert limiter.try_attempt("192.0.2.1")
    limiter.settle("192.0.2.1")
    limiter.settle("192.0.2.1")  # both failed
    assert limiter.failed_out("192.0.2.1")
    assert not limiter.try_attempt("192.0.2.1")
