"""A raw SMTP client for tests that must see exact bytes: pipelining, BDAT, smuggling."""

from __future__ import annotations

import contextlib
import socket
import ssl


class Wire:
    """Send raw bytes to an SMTP server and read whole (possibly multi-line) replies."""

    def __init__(self, address: tuple[str, int], timeout: float = 15) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""
        self.greeting = self.reply()

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

    def reply(self) -> str:
        """One reply; multi-line replies are joined with newlines."""
        lines = []
        while True:
            line = self.line().decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def cmd(self, command: str | bytes) -> str:
        data = command.encode() if isinstance(command, str) else command
        self.send(data + b"\r\n")
        return self.reply()

    def starttls(self) -> str:
        reply = self.cmd("STARTTLS")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock)
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
