"""POP3 command lines → typed commands (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH).

Pure: bytes in, a frozen dataclass or a :class:`ParseError` out, never another exception, so
the session never has to guess what a hostile line did. Which commands a state allows is the
session's business, not the parser's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# RFC 2449 §4: a command line is at most 255 octets with its CRLF. Clients with long passwords
# overstep it, so Tidings accepts twice that before calling a line too long.
MAX_COMMAND_LINE = 512
# A SASL response line (RFC 5034 §4) may be longer than a command: base64 of a long password.
MAX_SASL_LINE = 8192
# Message numbers above this cannot name a message; refusing them early bounds int() work.
_MAX_NUMBER_DIGITS = 10


class ParseError(Exception):
    """A line that is not a valid command; the text is the reason sent after ``-ERR``."""


@dataclass(frozen=True, slots=True)
class User:
    name: str


@dataclass(frozen=True, slots=True)
class Pass:
    password: str


@dataclass(frozen=True, slots=True)
class Auth:
    """``AUTH`` alone asks for the mechanism list (as Outlook does); else a SASL exchange."""

    mechanism: str | None
    initial_response: str | None = None


@dataclass(frozen=True, slots=True)
class Stat:
    pass


@dataclass(frozen=True, slots=True)
class List:
    msg: int | None = None


@dataclass(frozen=True, slots=True)
class Retr:
    msg: int


@dataclass(frozen=True, slots=True)
class Dele:
    msg: int


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Top:
    msg: int
    lines: int


@dataclass(frozen=True, slots=True)
class Uidl:
    msg: int | None = None


@dataclass(frozen=True, slots=True)
class Capa:
    pass


@dataclass(frozen=True, slots=True)
class Stls:
    pass


Command = (
    User | Pass | Auth | Stat | List | Retr | Dele | Noop | Rset | Quit | Top | Uidl | Capa | Stls
)
_Parser = Callable[[list[str]], Command]


def strip_line_end(line: bytes) -> bytes:
    """The line without its CRLF (a bare LF is accepted as the end too, as most servers do)."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def parse_command(line: bytes) -> Command:
    """Parse one command line (with or without its line end) into a command.

    RFC 1939 §3: a keyword of three or four characters, case-insensitive, then arguments
    separated by single spaces. PASS takes the rest of the line, spaces included, because
    passwords may contain them (RFC 1939 §7 PASS discussion).
    """
    line = strip_line_end(line)
    if len(line) + 2 > MAX_COMMAND_LINE:
        raise ParseError("Line too long")
    if not line:
        raise ParseError("Empty command")
    if b"\0" in line or b"\r" in line or b"\n" in line:
        raise ParseError("Control characters in command")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("Command is not UTF-8") from None
    keyword, _, rest = text.partition(" ")
    keyword = keyword.upper()
    if keyword == "PASS":
        if not rest:
            raise ParseError("PASS needs a password")
        return Pass(rest)
    args = rest.split(" ") if rest else []
    if "" in args:
        raise ParseError("Arguments are separated by single spaces")
    parse = _PARSERS.get(keyword)
    if parse is None:
        shown = keyword if keyword.isascii() and keyword.isprintable() else repr(keyword)
        raise ParseError(f"Unknown command: {shown[:20]}")
    return parse(args)


def parse_number(text: str) -> int:
    """A message number: ASCII decimal digits only (RFC 1939 §3: ``msg`` is numeric)."""
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_NUMBER_DIGITS:
        raise ParseError(f"Invalid message number: {text[:20]!r}")
    return int(text)


def _arity(args: list[str], least: int, most: int, usage: str) -> None:
    if not least <= len(args) <= most:
        raise ParseError(f"Syntax: {usage}")


def _no_args(command: Command, name: str) -> _Parser:
    def parse(args: list[str]) -> Command:
        _arity(args, 0, 0, name)
        return command

    return parse


def _msg(cls: type[Retr] | type[Dele], name: str) -> _Parser:
    def parse(args: list[str]) -> Command:
        _arity(args, 1, 1, f"{name} msg")
        return cls(parse_number(args[0]))

    return parse


def _optional_msg(cls: type[List] | type[Uidl], name: str) -> _Parser:
    def parse(args: list[str]) -> Command:
        _arity(args, 0, 1, f"{name} [msg]")
        return cls(parse_number(args[0]) if args else None)

    return parse


def _user(args: list[str]) -> Command:
    _arity(args, 1, 1, "USER name")
    return User(args[0])


def _top(args: list[str]) -> Command:
    _arity(args, 2, 2, "TOP msg n")
    return Top(parse_number(args[0]), parse_number(args[1]))


def _auth(args: list[str]) -> Command:
    _arity(args, 0, 2, "AUTH mechanism [initial-response]")
    if not args:
        return Auth(None)
    mechanism = args[0].upper()
    if not mechanism.isascii() or not all(c.isalnum() or c in "-_" for c in mechanism):
        raise ParseError("Invalid mechanism name")
    return Auth(mechanism, args[1] if len(args) == 2 else None)


_PARSERS: dict[str, _Parser] = {
    "USER": _user,
    "AUTH": _auth,
    "STAT": _no_args(Stat(), "STAT"),
    "LIST": _optional_msg(List, "LIST"),
    "RETR": _msg(Retr, "RETR"),
    "DELE": _msg(Dele, "DELE"),
    "NOOP": _no_args(Noop(), "NOOP"),
    "RSET": _no_args(Rset(), "RSET"),
    "QUIT": _no_args(Quit(), "QUIT"),
    "TOP": _top,
    "UIDL": _optional_msg(Uidl, "UIDL"),
    "CAPA": _no_args(Capa(), "CAPA"),
    "STLS": _no_args(Stls(), "STLS"),
}
