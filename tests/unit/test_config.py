"""The config: TOML → frozen dataclasses, environment overrides, one-line errors.

Every refusal must be one line that starts with the key (or the file) and says what is wrong,
because that line is all an administrator sees when ``tidings serve`` will not start.
"""

from __future__ import annotations

import dataclasses
import math
import re
import socket
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from helpers import tidings, write_config
from tidings.config import (
    SECTIONS,
    Config,
    ConfigError,
    DeliveryConfig,
    DNSConfig,
    LimitsConfig,
    ListenConfig,
    QueueConfig,
    RelayConfig,
    ServerConfig,
    TLSConfig,
    build_config,
    find_config_path,
    load_config,
    parse_hostport,
    parse_size,
    to_toml,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "tidings.example.toml"


def build(data: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Config:
    return build_config(data or {}, env or {}, "/srv/tidings")


def refusal(data: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        build(data, env)
    return one_line(str(info.value))


def one_line(message: str) -> str:
    assert message, "an empty error message"
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    return message


# --- defaults and the file -----------------------------------------------------------------


def test_defaults() -> None:
    config = build()
    assert config == Config(base_dir="/srv/tidings")
    assert config.server == ServerConfig()
    assert config.listen.smtp == "127.0.0.1:2525"
    assert config.limits.max_message_size == 25 * 1024 * 1024
    assert config.limits.bare_line_endings == "reject"
    assert config.dns.nameservers == ()
    assert config.relay.port == 25
    assert config.queue.max_age == 5 * 24 * 3600
    assert config.data_path == Path("/srv/tidings/data")
    assert config.database_url == "sqlite+aiosqlite:////srv/tidings/data/tidings.db"


def test_every_section_is_a_frozen_dataclass() -> None:
    config = build()
    assert set(SECTIONS) == {
        "server", "log", "database", "tls", "listen", "dns", "relay", "limits", "delivery",
        "queue", "pop3", "imap", "mailauth", "autoconfig", "mta_sts",
    }  # fmt: skip
    for name in SECTIONS:
        section = getattr(config, name)
        assert dataclasses.is_dataclass(section)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, dataclasses.fields(section)[0].name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server = ServerConfig()  # type: ignore[misc]


def test_load_config_reads_every_kind_of_value(tmp_path: Path) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text(
        """
[server]
hostname = "mail.example.org"
data_dir = "/var/lib/tidings"

[database]
url = "postgresql://tidings:secret@db.internal:5432/tidings"

[tls]
cert = "tls/fullchain.pem"
key = "tls/privkey.pem"

[listen]
smtp = "[::]:25"

[dns]
nameservers = ["127.0.0.1:5353", "[::1]"]
timeout = 2

[relay]
port = 2526
smarthost = "smtp.provider.example:587"

[limits]
max_message_size = "50M"
max_recipients = 500
max_command_line = 1024
smtp_timeout = 120.5
bare_line_endings = "normalize"

[delivery]
recipient_delimiter = "-"
max_alias_depth = 3
max_batch = 16

[queue]
max_age = 86400
""",
        encoding="utf-8",
    )
    config = load_config(path, env={})
    assert config.base_dir == str(tmp_path.resolve())
    assert config.server == ServerConfig("mail.example.org", "/var/lib/tidings")
    assert config.data_path == Path("/var/lib/tidings")
    assert config.database_url == "postgresql+asyncpg://tidings:secret@db.internal:5432/tidings"
    assert config.tls == TLSConfig("tls/fullchain.pem", "tls/privkey.pem")
    assert config.listen == ListenConfig("[::]:25")
    assert config.dns == DNSConfig(("127.0.0.1:5353", "[::1]"), 2.0)
    assert isinstance(config.dns.timeout, float)
    assert config.relay == RelayConfig(2526, "smtp.provider.example:587")
    assert config.limits == LimitsConfig(50 * 1024**2, 500, 1024, 120.5, "normalize")
    assert config.delivery == DeliveryConfig("-", 3, 16)
    assert config.queue == QueueConfig(86400.0)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "tidings.toml"
    path.parent.mkdir()
    path.write_text('[server]\ndata_dir = "spool"\n[database]\nurl = "sqlite:///db/t.db"\n')
    config = load_config(path, env={})
    assert config.data_path == tmp_path / "etc" / "spool"
    # sqlite:///relative is relative to the file's folder; sqlite:////absolute stays absolute.
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path / 'etc' / 'db' / 't.db'}"
    config = build({"database": {"url": "sqlite:////var/db/t.db"}})
    assert config.database_url == "sqlite+aiosqlite:////var/db/t.db"


def test_to_toml_round_trips() -> None:
    config = build(
        {
            "server": {"hostname": 'odd "name" \\ here'},
            "dns": {"nameservers": ["10.0.0.1", "10.0.0.2:53"]},
            "limits": {"max_message_size": "10M", "bare_line_endings": "normalize"},
        }
    )
    again = build_config(tomllib.loads(to_toml(config)), {}, config.base_dir)
    assert again == config


# --- environment overrides -----------------------------------------------------------------

ENV_CASES = [
    # (variable, value, section, key, expected)
    ("TIDINGS_SERVER__HOSTNAME", "mx.example.org", "server", "hostname", "mx.example.org"),
    ("TIDINGS_DATABASE__URL", "postgresql://db/t", "database", "url", "postgresql://db/t"),
    ("TIDINGS_LISTEN__SMTP", "0.0.0.0:25", "listen", "smtp", "0.0.0.0:25"),
    ("TIDINGS_LISTEN__SMTP", "", "listen", "smtp", ""),  # empty disables the listener
    ("TIDINGS_DNS__NAMESERVERS", "127.0.0.1:5353", "dns", "nameservers", ("127.0.0.1:5353",)),
    ("TIDINGS_DNS__NAMESERVERS", "10.0.0.1, [::1]:53 ,", "dns", "nameservers",
     ("10.0.0.1", "[::1]:53")),
    ("TIDINGS_DNS__NAMESERVERS", "", "dns", "nameservers", ()),
    ("TIDINGS_DNS__TIMEOUT", "1.5", "dns", "timeout", 1.5),
    ("TIDINGS_DNS__TIMEOUT", "3", "dns", "timeout", 3.0),
    ("TIDINGS_RELAY__PORT", "2525", "relay", "port", 2525),
    ("TIDINGS_LIMITS__MAX_MESSAGE_SIZE", "25M", "limits", "max_message_size", 25 * 1024**2),
    ("TIDINGS_LIMITS__MAX_MESSAGE_SIZE", "512k", "limits", "max_message_size", 512 * 1024),
    ("TIDINGS_LIMITS__MAX_MESSAGE_SIZE", "1G", "limits", "max_message_size", 1024**3),
    ("TIDINGS_LIMITS__MAX_MESSAGE_SIZE", "1000", "limits", "max_message_size", 1000),
    ("TIDINGS_LIMITS__MAX_RECIPIENTS", "7", "limits", "max_recipients", 7),
    ("TIDINGS_LIMITS__SMTP_TIMEOUT", "30", "limits", "smtp_timeout", 30.0),
    ("TIDINGS_LIMITS__BARE_LINE_ENDINGS", "normalize", "limits", "bare_line_endings",
     "normalize"),
    ("TIDINGS_DELIVERY__RECIPIENT_DELIMITER", "", "delivery", "recipient_delimiter", ""),
    ("TIDINGS_QUEUE__MAX_AGE", "3600", "queue", "max_age", 3600.0),
    # Case of the variable name after the prefix does not matter.
    ("TIDINGS_Server__HostName", "mixed.example", "server", "hostname", "mixed.example"),
]  # fmt: skip


@pytest.mark.parametrize(("var", "value", "section", "key", "expected"), ENV_CASES)
def test_environment_overrides(var: str, value: str, section: str, key: str, expected: Any) -> None:
    config = build(env={var: value})
    got = getattr(getattr(config, section), key)
    assert got == expected
    assert type(got) is type(expected)


def test_environment_beats_the_file() -> None:
    config = build(
        {"limits": {"max_recipients": 5}, "server": {"hostname": "file.example"}},
        {"TIDINGS_LIMITS__MAX_RECIPIENTS": "9"},
    )
    assert config.limits.max_recipients == 9
    assert config.server.hostname == "file.example"  # untouched keys keep the file's value


@pytest.mark.parametrize(
    "env",
    [
        {"TIDINGS_CONFIG": "/etc/tidings.toml"},  # where the file is, not a key
        {"TIDINGS_LOG_LEVEL": "DEBUG"},  # no "__": not a key
        {"tidings_server__hostname": "lower.example"},  # the prefix is upper-case
        {"OTHER_SERVER__HOSTNAME": "other.example"},
        {"PATH": "/usr/bin"},
    ],
)
def test_unrelated_environment_is_ignored(env: dict[str, str]) -> None:
    assert build(env=env) == build()


def test_bools_from_the_environment() -> None:
    # No key is a bool today; the conversion exists for the ones to come.
    from tidings.config import _convert

    for text in ("1", "true", "Yes", "ON"):
        assert _convert("x.flag", bool, text, from_env=True) is True
    for text in ("0", "false", "No", "off"):
        assert _convert("x.flag", bool, text, from_env=True) is False
    assert _convert("x.flag", bool, True, from_env=False) is True
    with pytest.raises(ConfigError, match=r"^x\.flag: expected true or false, got 'maybe'$"):
        _convert("x.flag", bool, "maybe", from_env=True)
    with pytest.raises(ConfigError, match=r"^x\.flag: expected true or false"):
        _convert("x.flag", bool, "true", from_env=False)  # in TOML a bool is a bool


# --- refusals ------------------------------------------------------------------------------

BAD_VALUES = [
    # (section, key, value, the problem after "section.key: ", as a regex)
    ("server", "bogus", 1, r"unknown key"),
    ("limits", "max_message_szie", "25M", r"unknown key"),
    ("server", "hostname", 3, r"expected a string, got 3"),
    ("server", "hostname", ["a"], r"expected a string"),
    ("limits", "max_recipients", "10", r"expected an integer, got '10'"),
    ("limits", "max_recipients", True, r"expected an integer, got True"),
    ("limits", "max_recipients", 1.5, r"expected an integer, got 1\.5"),
    ("limits", "smtp_timeout", "fast", r"expected a number, got 'fast'"),
    ("limits", "smtp_timeout", False, r"expected a number"),
    ("dns", "nameservers", "1.1.1.1", r"expected a list of strings"),
    ("dns", "nameservers", [53], r"expected a list of strings"),
    # Sizes.
    ("limits", "max_message_size", "25X", r"expected a size such as 25M, got '25X'"),
    ("limits", "max_message_size", "1.5M", r"expected a size"),
    ("limits", "max_message_size", "-1", r"expected a size"),
    ("limits", "max_message_size", "", r"expected a size"),
    ("limits", "max_message_size", 2.5, r"expected a size"),
    ("limits", "max_message_size", True, r"expected a size"),
    ("limits", "max_message_size", 0, r"must be positive"),
    ("limits", "max_message_size", "0K", r"must be positive"),
    # host:port.
    ("listen", "smtp", "localhost", r"expected host:port, got 'localhost'"),
    ("listen", "smtp", "127.0.0.1:", r"expected host:port"),
    ("listen", "smtp", ":25", r"missing host in ':25'"),
    ("listen", "smtp", "127.0.0.1:65536", r"bad port in '127\.0\.0\.1:65536'"),
    ("listen", "smtp", "127.0.0.1:smtp", r"bad port"),
    ("listen", "smtp", "127.0.0.1:-1", r"bad port"),
    ("listen", "smtp", "127.0.0.1:²", r"bad port"),  # "²".isdigit(), but int("²") fails
    ("listen", "smtp", "127.0.0.1:２５", r"bad port"),  # full-width digits
    ("listen", "smtp", "::1:25", r"expected host:port"),  # an IPv6 host needs brackets
    ("listen", "smtp", "[::1]", r"expected host:port"),
    ("listen", "smtp", "[::1]25", r"expected \[host\]:port"),
    ("listen", "smtp", "[::1:25", r"expected \[host\]:port"),
    ("dns", "nameservers", ["10.0.0.1:dns"], r"bad port"),
    # Choices.
    ("limits", "bare_line_endings", "fix", r"expected one of reject, normalize, got 'fix'"),
    ("limits", "bare_line_endings", "Reject", r"expected one of"),
    # Ranges.
    ("limits", "max_recipients", 0, r"must be positive"),
    ("limits", "max_command_line", 511, r"must be at least 512"),
    ("delivery", "recipient_delimiter", "+-", r"must be one character"),
    ("delivery", "max_batch", 0, r"must be at least 1"),
    ("delivery", "max_batch", -1, r"must be at least 1"),
    ("delivery", "max_alias_depth", -1, r"must not be negative"),
    ("relay", "port", 0, r"must be between 1 and 65535"),
    ("relay", "port", 70000, r"must be between 1 and 65535"),
    ("limits", "smtp_timeout", 0, r"must be a positive number of seconds"),
    ("limits", "smtp_timeout", -5.0, r"must be a positive number"),
    ("limits", "smtp_timeout", math.nan, r"must be a positive number"),
    ("dns", "timeout", 0, r"must be a positive number"),
    ("queue", "max_age", -1, r"must be a positive number"),
    ("queue", "max_age", math.inf, r"must be a positive number"),
    # Database URLs.
    ("database", "url", "mysql://db/tidings", r"unsupported database 'mysql'"),
    ("database", "url", "tidings.db", r"not a URL: 'tidings\.db'"),
]


@pytest.mark.parametrize(("section", "key", "value", "problem"), BAD_VALUES)
def test_bad_values_are_refused_in_one_line(
    section: str, key: str, value: Any, problem: str
) -> None:
    message = refusal({section: {key: value}})
    assert re.match(rf"{section}\.{key}: {problem}", message), message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": {}}, "bogus: unknown section"),
        ({"server": 3}, "server: expected a table of keys"),
        ({"tls": {"cert": "c.pem"}}, "tls.key: tls.cert and tls.key must be given together"),
        ({"tls": {"key": "k.pem"}}, "tls.cert: tls.cert and tls.key must be given together"),
    ],
)
def test_bad_structure_is_refused_in_one_line(data: dict[str, Any], message: str) -> None:
    assert refusal(data) == message


BAD_ENV = [
    # (variable, value, the key named, the problem)
    ("TIDINGS_SERVER__BOGUS", "1", "server.bogus", r"unknown key"),
    ("TIDINGS_LIMITS__MAX_RECIPIENTS", "ten", "limits.max_recipients", r"expected an integer"),
    ("TIDINGS_LIMITS__MAX_RECIPIENTS", "1.5", "limits.max_recipients", r"expected an integer"),
    ("TIDINGS_LIMITS__SMTP_TIMEOUT", "soon", "limits.smtp_timeout", r"expected a number"),
    ("TIDINGS_LIMITS__SMTP_TIMEOUT", "nan", "limits.smtp_timeout", r"must be a positive"),
    ("TIDINGS_LIMITS__MAX_MESSAGE_SIZE", "big", "limits.max_message_size",
     r"expected a size such as 25M, got 'big'"),
    ("TIDINGS_LIMITS__MAX_MESSAGE_SIZE", "25T", "limits.max_message_size", r"expected a size"),
    ("TIDINGS_LIMITS__BARE_LINE_ENDINGS", "strip", "limits.bare_line_endings",
     r"expected one of reject, normalize"),
    ("TIDINGS_LISTEN__SMTP", "nowhere", "listen.smtp", r"expected host:port, got 'nowhere'"),
    ("TIDINGS_DNS__NAMESERVERS", "127.0.0.1:5353,10.0.0.1:x", "dns.nameservers",
     r"bad port in '10\.0\.0\.1:x'"),
    ("TIDINGS_TLS__CERT", "/etc/ssl/cert.pem", "tls.key", r"tls\.cert and tls\.key must be given"),
    ("TIDINGS_RELAY__PORT", "0", "relay.port", r"must be between 1 and 65535"),
]  # fmt: skip


@pytest.mark.parametrize(("var", "value", "key", "problem"), BAD_ENV)
def test_bad_environment_is_refused_in_one_line(
    var: str, value: str, key: str, problem: str
) -> None:
    message = refusal(env={var: value})
    assert re.match(rf"{re.escape(key)}: {problem}", message), message


def test_unknown_section_in_the_environment() -> None:
    assert refusal(env={"TIDINGS_BOGUS__X": "1"}) == "TIDINGS_BOGUS__X: unknown section 'bogus'"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert one_line(str(info.value)) == (
        f"{path}: no such config file (write one with `tidings init`)"
    )


def test_unreadable_file(tmp_path: Path) -> None:
    # A folder where the file should be (chmod 000 would not stop root, who runs CI).
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}: cannot read: .+", one_line(str(info.value)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server\n", r"not valid TOML: Expected ']' .*\(at line 1, column 8\)"),
        ('[server]\nhostname = "a\n', r"not valid TOML: .*line 2"),
        ("[server]\nhostname = 'a'\nhostname = 'b'\n", r"not valid TOML: .*line 3"),
        ('a = """\nnever closed\n', r"not valid TOML: Unterminated string"),
    ],
)
def test_invalid_toml(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert re.match(rf"{re.escape(str(path))}: {message}", one_line(str(info.value)))


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "tidings.toml"
    data = b'[server]\nhostname = "caf\xe9"\n'  # Latin-1, as an old editor saves it
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    position = data.index(b"\xe9")
    assert one_line(str(info.value)) == f"{path}: not valid TOML: not UTF-8 at byte {position}"


# --- the small parsers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("100", 100),
        ("1K", 1024),
        ("1k", 1024),
        ("25M", 25 * 1024**2),
        ("25MB", 25 * 1024**2),
        ("25MiB", 25 * 1024**2),
        (" 25 M ", 25 * 1024**2),
        ("2G", 2 * 1024**3),
        ("2gb", 2 * 1024**3),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5M", "-1", "1T", "25 X", "1KiBB", "ten", "1 000"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a size such as 25M"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "default_port", "expected"),
    [
        ("127.0.0.1:25", None, ("127.0.0.1", 25)),
        ("0.0.0.0:0", None, ("0.0.0.0", 0)),
        ("mail.example.org:587", None, ("mail.example.org", 587)),
        ("[::1]:993", None, ("::1", 993)),
        ("[::]:25", None, ("::", 25)),
        (" 127.0.0.1:25 ", None, ("127.0.0.1", 25)),
        ("10.0.0.1", 53, ("10.0.0.1", 53)),
        ("[2001:db8::53]", 53, ("2001:db8::53", 53)),
        ("2001:db8::53", 53, ("2001:db8::53", 53)),  # bare IPv6: the whole text is the host
        ("10.0.0.1:5353", 53, ("10.0.0.1", 5353)),
    ],
)
def test_parse_hostport(text: str, default_port: int | None, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, default_port) == expected


def test_find_config_path() -> None:
    env = {"TIDINGS_CONFIG": "/etc/tidings/tidings.toml"}
    assert find_config_path("given.toml", env) == Path("given.toml")
    assert find_config_path(None, env) == Path("/etc/tidings/tidings.toml")
    assert find_config_path(None, {}) == Path("tidings.toml")
    assert find_config_path(None, {"TIDINGS_CONFIG": ""}) == Path("tidings.toml")


# --- config/tidings.example.toml -----------------------------------------------------------

_DEFAULT_LINE = re.compile(r"^#\s*Default:\s*(?P<value>.*?)\s{2,}Env:\s*(?P<env>\S+)\s*$")
_KEY_LINE = re.compile(r"^(?:#\s*)?(?P<key>[a-z0-9_]+)\s*=")
_SECTION_LINE = re.compile(r"^\[(?P<section>[a-z0-9_]+)\]\s*$")


def _example_by_section() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        m = _SECTION_LINE.match(line)
        if m:
            current = sections.setdefault(m.group("section"), [])
        else:
            current.append(line.strip())
    return sections


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.listen.smtp == "0.0.0.0:25"
    assert config.relay.port == 25
    assert not config.database.url or config.database.url.startswith("postgresql")


def test_example_config_documents_every_key() -> None:
    """Every field of every section: a ``key =`` line (commented out or not) in its section,
    and a ``# Default: <value>  Env: TIDINGS_<SECTION>__<KEY>`` line whose default is the
    code's. Adding a key to config.py without documenting it here fails this test."""
    sections = _example_by_section()
    defaults = Config()
    problems: list[str] = []
    for section, cls in SECTIONS.items():
        lines = sections.get(section)
        if lines is None:
            problems.append(f"[{section}] is missing")
            continue
        keys = {m.group("key") for m in map(_KEY_LINE.match, lines) if m}
        documented = {
            m.group("env"): m.group("value") for m in map(_DEFAULT_LINE.match, lines) if m
        }
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            env = f"TIDINGS_{section.upper()}__{f.name.upper()}"
            if f.name not in keys:
                problems.append(f"{key}: no `{f.name} =` line in [{section}]")
            if env not in documented:
                problems.append(f"{key}: no `# Default: ...  Env: {env}` line in [{section}]")
                continue
            try:
                value = tomllib.loads(f"v = {documented[env]}")["v"]
                shown = getattr(build({section: {f.name: value}}), section)
            except (tomllib.TOMLDecodeError, ConfigError) as e:
                problems.append(f"{key}: documented default {documented[env]} is unusable: {e}")
                continue
            actual = getattr(getattr(defaults, section), f.name)
            if getattr(shown, f.name) != actual:
                problems.append(f"{key}: documented default {documented[env]}, code has {actual!r}")
    unknown = set(sections) - set(SECTIONS)
    problems += [f"[{s}] is not a section of the config" for s in sorted(unknown)]
    assert not problems, "\n".join(problems)


def test_example_config_keys_all_exist() -> None:
    """The other way round: no key in the example that the code does not know."""
    for section, lines in _example_by_section().items():
        hints = typing.get_type_hints(SECTIONS[section])
        for line in lines:
            m = _KEY_LINE.match(line)
            if m:
                assert m.group("key") in hints, f"{section}.{m.group('key')} is not a key"


# --- `tidings serve` refusing to start -----------------------------------------------------


def test_serve_with_a_bad_config_says_which_key(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, f"sqlite:///{tmp_path / 't.db'}", limits={"bare_line_endings": "fix"}
    )
    result = tidings(path, "serve", timeout=30)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "tidings: limits.bare_line_endings: expected one of reject, normalize, got 'fix'"
    ]
    assert result.stdout == ""


def test_serve_with_a_bad_environment_override_says_which_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 't.db'}")
    result = tidings(path, "serve", env={"TIDINGS_LIMITS__MAX_MESSAGE_SIZE": "lots"}, timeout=30)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "tidings: limits.max_message_size: expected a size such as 25M, got 'lots'"
    ]


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")


def test_serve_on_a_port_in_use_says_listen_smtp(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(
            tmp_path, f"sqlite:///{tmp_path / 't.db'}", listen={"smtp": f"127.0.0.1:{port}"}
        )
        result = tidings(path, "serve", timeout=60)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert lines, "nothing on stderr"
    # The refusal is the last line; anything before it is the server's own log.
    assert re.fullmatch(
        rf"tidings: listen\.smtp: cannot listen on 127\.0\.0\.1:{port}: .*in use.*",
        lines[-1],
        re.IGNORECASE,
    ), lines[-1]
    assert all(_LOG_LINE.match(line) for line in lines[:-1]), lines
