"""The Tidings configuration: one TOML file → frozen dataclasses.

Every key can be overridden by an environment variable ``TIDINGS_<SECTION>__<KEY>`` so that
containers need no file edits; a list is written comma-separated. Anything wrong — an unknown
key, a value of the wrong type — raises :class:`ConfigError` whose text names the key and the
problem in one line, because that line is all an administrator sees when ``serve`` refuses to
start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "TIDINGS_"


class ConfigError(Exception):
    """A configuration problem, worded for the administrator: ``key: problem``."""


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "localhost"
    data_dir: str = "data"
    # Seconds SIGTERM waits for SMTP DATA transactions and relay attempts under way.
    shutdown_grace: float = 10.0


@dataclass(frozen=True)
class LogConfig:
    # DEBUG, INFO, WARNING or ERROR; re-read on SIGHUP. --log-level wins when given.
    level: str = "INFO"
    # "text" or "json" (one object per line). --log-format wins when given.
    format: str = "text"


@dataclass(frozen=True)
class DatabaseConfig:
    # Empty: SQLite in <data_dir>/tidings.db.
    url: str = ""


@dataclass(frozen=True)
class TLSConfig:
    # Both empty: a self-signed certificate is generated in <data_dir>/tls/.
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class ListenConfig:
    # "host:port"; an empty string disables the listener; port 0 picks a free port.
    smtp: str = "127.0.0.1:2525"
    # Message submission with STARTTLS (RFC 6409; 587 in production) and over implicit TLS
    # (RFC 8314; 465 in production).
    submission: str = "127.0.0.1:5587"
    submissions: str = "127.0.0.1:5465"
    # POP3 with STLS (RFC 2595), and POP3 over implicit TLS (RFC 8314).
    pop3: str = "127.0.0.1:1110"
    pop3s: str = "127.0.0.1:1995"
    # IMAP with STARTTLS (RFC 3501; 143 in production) and over implicit TLS (RFC 8314; 993).
    imap: str = "127.0.0.1:1143"
    imaps: str = "127.0.0.1:1993"
    # HTTP (80 in production) and HTTPS (443, with the mail listeners' certificate): client
    # autoconfiguration, the MTA-STS policy, /metrics and /healthz.
    http: str = "127.0.0.1:8080"
    https: str = "127.0.0.1:8443"


@dataclass(frozen=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True)
class RelayConfig:
    port: int = 25
    smarthost: str = ""
    # Credentials for the smarthost (AUTH PLAIN, only over TLS); both empty: no AUTH.
    smarthost_username: str = ""
    smarthost_password: str = ""
    # Seconds to wait for a remote MX to connect or answer one command.
    timeout: float = 60.0
    # A PEM bundle of CA certificates trusted besides the system's, to verify remote MX hosts
    # (MTA-STS, the smarthost) and MTA-STS policy servers. Empty: the system store only.
    ca_file: str = ""


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_command_line: int = 512
    smtp_timeout: float = 300.0
    # What to do with a bare CR or LF inside message data: "reject" or "normalize".
    bare_line_endings: str = "reject"
    # Seconds a POP3 client may stay idle before it is logged out (RFC 1939 §3: at least 600).
    pop3_timeout: float = 600.0
    # Seconds an IMAP client may stay idle, IDLE included, before it is logged out (RFC 3501
    # §5.4: at least 30 minutes once logged in); before login the limit is a tenth of it.
    imap_timeout: float = 1800.0
    # Longest IMAP command line, and largest literal outside APPEND (LOGIN, SEARCH strings).
    # APPEND is limited by max_message_size (RFC 7889 APPENDLIMIT).
    imap_max_line: int = 65536
    imap_max_literal: int = 65536
    # Failed logins (POP3, IMAP): the pause before a failure is answered, and how many failures
    # per client address and per account within auth_failure_window lock further attempts out.
    auth_failure_delay: float = 2.0
    auth_max_failures_per_ip: int = 10
    auth_max_failures_per_account: int = 30
    auth_failure_window: float = 300.0
    # Open connections over every listener: in all, and from one client address (IPv6 clients
    # are counted per /64). A connection past either limit is told so and closed at once.
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    # Slow-client defence: a command (its data and literals included) still arriving after
    # command_deadline seconds must be averaging min_transfer_rate bytes/s (0: no check).
    command_deadline: float = 60.0
    min_transfer_rate: int = 1024
    # Per session: protocol errors (SMTP 4xx/5xx replies to commands, IMAP BAD, POP3 -ERR)
    # and commands that move no mail (SMTP NOOP/RSET/VRFY/HELP/EHLO, anything before login on
    # IMAP and POP3) before the session is closed.
    max_errors: int = 20
    max_junk_commands: int = 100


@dataclass(frozen=True)
class DeliveryConfig:
    recipient_delimiter: str = "+"
    max_alias_depth: int = 10
    # Most accepted messages committed together in one transaction (group commit).
    max_batch: int = 64


@dataclass(frozen=True)
class ImapConfig:
    # Allow LOGIN and AUTHENTICATE on port 143 before STARTTLS (passwords in clear text).
    allow_insecure_auth: bool = False


@dataclass(frozen=True)
class Pop3Config:
    # DELE only flags the message \\Deleted (hidden from POP3, still seen by IMAP) instead of
    # expunging it at QUIT.
    keep_on_server: bool = False
    # Allow USER/PASS and AUTH on port 110 before STLS (passwords in clear text).
    allow_insecure_auth: bool = False


@dataclass(frozen=True)
class MailAuthConfig:
    # Check SPF, DKIM and DMARC on port 25 and write Authentication-Results.
    enabled: bool = True
    # Clients in these networks (this host, a trusted relay) are not checked, as Postfix's
    # mynetworks: their mail is taken as it is.
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # The strictest DMARC disposition applied: "reject", "quarantine" (never reject) or
    # "none" (only record the verdict).
    dmarc_max_disposition: str = "reject"
    # ARC sealers (ARC-Seal d= domains, e.g. a mailing list host) whose passing chain lets a
    # message that fails DMARC be delivered anyway (RFC 8617 §7.2, RFC 7489 §7.2 "forwarded").
    trusted_arc_sealers: tuple[str, ...] = ()
    # Judge DKIM, ARC and DMARC in a process of their own (checker.py), on another core than
    # the server's event loop; false: in the server's process.
    check_process: bool = True


@dataclass(frozen=True)
class AutoconfigConfig:
    # The ports mail clients are told to use (autoconfig, autodiscover, .mobileconfig): the
    # public ones, which differ from listen.* behind NAT or a container's port mapping.
    # 0 leaves a service out; so does an empty listen.* for it.
    imaps: int = 993
    imap: int = 143
    pop3s: int = 995
    pop3: int = 110
    submissions: int = 465
    submission: int = 587


@dataclass(frozen=True)
class MtaStsConfig:
    # The policy served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt (RFC 8461 §3.2):
    # "testing", "enforce" or "none", and how many seconds senders may cache it.
    mode: str = "testing"
    max_age: int = 604800
    # Outbound: honour other domains' MTA-STS policies (RFC 8461 §5).
    outbound: bool = True
    # The HTTPS port policies are fetched from: 443. Only tests change it.
    policy_port: int = 443


@dataclass(frozen=True)
class QueueConfig:
    max_age: float = 5 * 24 * 3600.0
    # Seconds between attempts after a temporary failure; the last one repeats.
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
    # Seconds a claimed message stays reserved for the worker sending it (renewed while it
    # sends); after a crash the message is tried again once this has passed.
    lease: float = 60.0
    # Outbound SMTP connections open at once in this process, and at most per domain.
    max_connections: int = 20
    connections_per_domain: int = 4
    # Messages one process holds in memory to relay at once; more wait in the queue table.
    max_in_flight: int = 1000


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    pop3: Pop3Config = field(default_factory=Pop3Config)
    imap: ImapConfig = field(default_factory=ImapConfig)
    mailauth: MailAuthConfig = field(default_factory=MailAuthConfig)
    autoconfig: AutoconfigConfig = field(default_factory=AutoconfigConfig)
    mta_sts: MtaStsConfig = field(default_factory=MtaStsConfig)
    # Where the file was read from; relative paths in it are relative to its folder.
    base_dir: str = "."

    @property
    def data_path(self) -> Path:
        return resolve_path(self.base_dir, self.server.data_dir)

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL: SQLite in the data dir unless a URL is given."""
        if not self.database.url:
            return f"sqlite+aiosqlite:///{self.data_path / 'tidings.db'}"
        return async_database_url(self.database.url, self.base_dir)


SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name != "base_dir"
}

# Keys whose values are sizes in bytes and may be written "25M", "512K", "1G".
SIZE_KEYS = {
    ("limits", "max_message_size"),
    ("limits", "imap_max_line"),
    ("limits", "imap_max_literal"),
}
CHOICES = {
    ("limits", "bare_line_endings"): ("reject", "normalize"),
    ("log", "level"): ("DEBUG", "INFO", "WARNING", "ERROR"),
    ("log", "format"): ("text", "json"),
    ("mailauth", "dmarc_max_disposition"): ("reject", "quarantine", "none"),
    ("mta_sts", "mode"): ("testing", "enforce", "none"),
}


def resolve_path(base_dir: str, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def async_database_url(url: str, base_dir: str = ".") -> str:
    """Map plain ``sqlite://`` / ``postgresql://`` URLs onto the async drivers Tidings uses."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"database.url: not a URL: {url!r}")
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        path = rest[1:] if rest.startswith("/") else rest
        if path and not path.startswith("/") and path != ":memory:":
            path = str(resolve_path(base_dir, path))
        return f"sqlite+aiosqlite:///{path}"
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        return f"postgresql+asyncpg://{rest}"
    raise ConfigError(f"database.url: unsupported database {scheme!r} (use sqlite or postgresql)")


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"25M"`` → 26214400. Raises ValueError on anything else."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"expected a size such as 25M, got {text!r}")
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]


def _convert(key: str, hint: Any, value: Any, from_env: bool) -> Any:
    """Check (and for environment strings, parse) one value against its field's type."""
    section, _, name = key.partition(".")
    if (section, name) in SIZE_KEYS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return parse_size(value)
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
        raise ConfigError(f"{key}: expected a size such as 25M, got {value!r}")
    origin = typing.get_origin(hint)
    if origin is tuple and typing.get_args(hint)[0] is float:
        if from_env and isinstance(value, str):
            try:
                return tuple(float(v) for v in value.split(",") if v.strip())
            except ValueError:
                pass
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{key}: expected a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if origin is tuple:
        if from_env and isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    if hint is bool:
        if from_env and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if from_env and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        choices = CHOICES.get((section, name))
        if choices and value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # pragma: no cover


def _section_from(section: str, cls: type[Any], values: Mapping[str, Any], from_env: bool) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{section}.{name}"
        if name not in known:
            raise ConfigError(f"{key}: unknown key")
        kwargs[name] = _convert(key, hints[name], value, from_env)
    return kwargs


def build_config(data: Mapping[str, Any], env: Mapping[str, str], base_dir: str) -> Config:
    """Build and validate a Config from parsed TOML and the environment."""
    merged: dict[str, dict[str, tuple[Any, bool]]] = {}
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{section}: unknown section")
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a table of keys")
        merged[section] = {k: (v, False) for k, v in values.items()}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        section, _, name = var[len(ENV_PREFIX) :].lower().partition("__")
        if section not in SECTIONS:
            if section == "config":
                continue
            raise ConfigError(f"{var}: unknown section {section!r}")
        merged.setdefault(section, {})[name] = (value, True)
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = merged.get(section, {})
        kwargs: dict[str, Any] = {}
        for name, (value, from_env) in values.items():
            kwargs.update(_section_from(section, cls, {name: value}, from_env))
        sections[section] = cls(**kwargs)
    config = Config(**sections, base_dir=base_dir)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Checks that need more than one value's type."""
    for name in (f.name for f in dataclasses.fields(ListenConfig)):
        address = getattr(config.listen, name)
        if address:
            try:
                parse_hostport(address)
            except ValueError as e:
                raise ConfigError(f"listen.{name}: {e}") from None
    for ns in config.dns.nameservers:
        try:
            parse_hostport(ns, default_port=53)
        except ValueError as e:
            raise ConfigError(f"dns.nameservers: {e}") from None
    if bool(config.tls.cert) != bool(config.tls.key):
        missing = "tls.key" if config.tls.cert else "tls.cert"
        raise ConfigError(f"{missing}: tls.cert and tls.key must be given together")
    if config.limits.max_message_size <= 0:
        raise ConfigError("limits.max_message_size: must be positive")
    if config.limits.max_recipients <= 0:
        raise ConfigError("limits.max_recipients: must be positive")
    if config.limits.max_command_line < 512:
        raise ConfigError("limits.max_command_line: must be at least 512 (RFC 5321 4.5.3.1.4)")
    if len(config.delivery.recipient_delimiter) > 1:
        raise ConfigError("delivery.recipient_delimiter: must be one character or empty")
    if config.delivery.max_alias_depth < 0:
        raise ConfigError("delivery.max_alias_depth: must not be negative")
    for key, count in (
        ("limits.auth_max_failures_per_ip", config.limits.auth_max_failures_per_ip),
        ("limits.auth_max_failures_per_account", config.limits.auth_max_failures_per_account),
        ("limits.max_connections", config.limits.max_connections),
        ("limits.max_connections_per_ip", config.limits.max_connections_per_ip),
        ("limits.min_transfer_rate", config.limits.min_transfer_rate),
        ("limits.max_errors", config.limits.max_errors),
        ("limits.max_junk_commands", config.limits.max_junk_commands),
    ):
        if count < 0:
            raise ConfigError(f"{key}: must not be negative (0 turns the limit off)")
    delay = config.limits.auth_failure_delay
    if not (math.isfinite(delay) and delay >= 0):
        raise ConfigError("limits.auth_failure_delay: must be a number of seconds, 0 or more")
    if config.delivery.max_batch < 1:
        raise ConfigError("delivery.max_batch: must be at least 1")
    for key, size in (
        ("limits.imap_max_line", config.limits.imap_max_line),
        ("limits.imap_max_literal", config.limits.imap_max_literal),
    ):
        if size < 1024:
            raise ConfigError(f"{key}: must be at least 1024 bytes, got {size}")
    if not config.queue.retry_schedule:
        raise ConfigError("queue.retry_schedule: needs at least one interval")
    for key, count in (
        ("queue.max_connections", config.queue.max_connections),
        ("queue.connections_per_domain", config.queue.connections_per_domain),
        ("queue.max_in_flight", config.queue.max_in_flight),
    ):
        if count < 1:
            raise ConfigError(f"{key}: must be at least 1")
    if config.relay.smarthost:
        try:
            parse_hostport(config.relay.smarthost, default_port=25)
        except ValueError as e:
            raise ConfigError(f"relay.smarthost: {e}") from None
    if bool(config.relay.smarthost_username) != bool(config.relay.smarthost_password):
        raise ConfigError(
            "relay.smarthost_password: relay.smarthost_username and relay.smarthost_password "
            "must be given together"
        )
    if not 1 <= config.relay.port <= 65535:
        raise ConfigError(f"relay.port: must be between 1 and 65535, got {config.relay.port}")
    for key, seconds in (
        ("dns.timeout", config.dns.timeout),
        ("server.shutdown_grace", config.server.shutdown_grace),
        ("limits.smtp_timeout", config.limits.smtp_timeout),
        ("limits.pop3_timeout", config.limits.pop3_timeout),
        ("limits.imap_timeout", config.limits.imap_timeout),
        ("limits.auth_failure_window", config.limits.auth_failure_window),
        ("limits.command_deadline", config.limits.command_deadline),
        ("queue.max_age", config.queue.max_age),
        ("queue.lease", config.queue.lease),
        ("relay.timeout", config.relay.timeout),
        *(("queue.retry_schedule", s) for s in config.queue.retry_schedule),
    ):
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(f"{key}: must be a positive number of seconds, got {seconds!r}")
    for network in config.mailauth.trusted_networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"mailauth.trusted_networks: not a network: {network!r} (use e.g. 10.0.0.0/8)"
            ) from None
    for f in dataclasses.fields(AutoconfigConfig):
        port = getattr(config.autoconfig, f.name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"autoconfig.{f.name}: must be a port (0 leaves it out), got {port}")
    # RFC 8461 §3.2: max_age is at most 31557600 (about a year).
    if not 0 < config.mta_sts.max_age <= 31557600:
        raise ConfigError(
            f"mta_sts.max_age: must be 1 to 31557600 seconds, got {config.mta_sts.max_age}"
        )
    if not 1 <= config.mta_sts.policy_port <= 65535:
        raise ConfigError(
            f"mta_sts.policy_port: must be between 1 and 65535, got {config.mta_sts.policy_port}"
        )
    if config.database.url:
        async_database_url(config.database.url)


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``"127.0.0.1:25"`` / ``"[::1]:25"`` → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [host]:port, got {text!r}")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"expected host:port, got {text!r}")
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {text!r}")
    if not host:
        raise ValueError(f"missing host in {text!r}")
    return host, int(port_text)


def find_config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("TIDINGS_CONFIG"):
        return Path(env["TIDINGS_CONFIG"])
    return Path("tidings.toml")


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate the config file at ``path``."""
    env = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (write one with `tidings init`)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 at byte {e.start}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return build_config(data, env, str(path.resolve().parent))


def to_toml(config: Config) -> str:
    """Render a Config as TOML (every key), for ``tidings init``."""
    lines: list[str] = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for f in dataclasses.fields(getattr(config, section)):
            lines.append(f"{f.name} = {_toml_value(getattr(getattr(config, section), f.name))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def replace_section(config: Config, section: str, **changes: Any) -> Config:
    """A copy of ``config`` with some keys of one section changed (tests, ``init``)."""
    return dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **changes)}
    )


__all__ = [
    "Config",
    "ConfigError",
    "build_config",
    "find_config_path",
    "load_config",
    "parse_hostport",
    "parse_size",
    "to_toml",
]
