"""A raw IMAP client for tests that must see exact responses: literals, untagged data, IDLE."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from dataclasses import dataclass, field

_LITERAL = re.compile(rb"\{(\d+)\}$")


@dataclass
class Reply:
    """The untagged responses of one command (literals inline) and its tagged status line."""

    untagged: list[bytes] = field(default_factory=list)
    status: str = ""
    text: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def lines(self, kind: bytes) -> list[bytes]:
        """Untagged responses whose keyword (after ``* `` or ``* n ``) is ``kind``."""
        out = []
        for line in self.untagged:
            words = line.split(b" ", 3)
            if (len(words) > 1 and words[1].upper() == kind.upper()) or (
                len(words) > 2 and words[1].isdigit() and words[2].upper() == kind.upper()
            ):
                out.append(line)
        return out

    def __str__(self) -> str:
        body = b"\n".join([*self.untagged, self.status.encode() + b" " + self.text])
        return body.decode("utf-8", "replace")


class Wire:
    """One IMAP connection spoken by hand."""

    def __init__(
        self,
        address: tuple[str, int],
        tls: ssl.SSLContext | None = None,
        timeout: float = 15,
        source: str | None = None,
    ) -> None:
        sock = socket.create_connection(
            address, timeout=timeout, source_address=(source, 0) if source else None
        )
        self.sock: socket.socket = (
            tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
        )
        self.buffer = b""
        self.counter = 0
        self.greeting = self.response()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; pending {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed inside a literal")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def response(self) -> bytes:
        """One whole response line, with any literals it carries spliced in."""
        line = self.line()
        while True:
            m = _LITERAL.search(line)
            if m is None:
                return line
            data = self.exact(int(m.group(1)))
            line = line + b"\r\n" + data + self.line()

    def start_tls(self, context: ssl.SSLContext) -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def next_tag(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def command(self, text: str | bytes, *, literals: list[bytes] | None = None) -> Reply:
        """Send ``tag text`` and read to its tagged reply. ``{n}`` placeholders in ``text`` are
        sent as synchronising literals with the bytes from ``literals`` in order."""
        tag = self.next_tag()
        data = text.encode() if isinstance(text, str) else text
        pieces = data.split(b"\x00") if literals else [data]
        reply = Reply()
        self.send(tag.encode() + b" " + pieces[0])
        for piece, literal in zip(pieces[1:], literals or [], strict=True):
            self.send(b"{%d}\r\n" % len(literal))
            while True:
                line = self.response()
                if line.startswith(b"+"):
                    break
                if line.startswith(tag.encode() + b" "):
                    return self._tagged(reply, tag, line)
                reply.untagged.append(line)
            self.send(literal + piece)
        self.send(b"\r\n")
        return self.read_until(tag, reply)

    def read_until(self, tag: str, reply: Reply | None = None) -> Reply:
        reply = reply or Reply()
        while True:
            line = self.response()
            if line.startswith(tag.encode() + b" "):
                return self._tagged(reply, tag, line)
            reply.untagged.append(line)

    @staticmethod
    def _tagged(reply: Reply, tag: str, line: bytes) -> Reply:
        rest = line[len(tag) + 1 :]
        status, _, text = rest.partition(b" ")
        reply.status = status.decode()
        reply.text = text
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
