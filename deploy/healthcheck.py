#!/usr/bin/env python3
"""The container's HEALTHCHECK: exit 0 if the running Tidings answers, 1 if not.

It reads the same configuration as ``tidings serve`` (the file at $TIDINGS_CONFIG and the
TIDINGS_* variables) and asks the HTTP listener (``listen.http``) for ``/healthz``, which
answers 200 only while the database is reachable. Without an HTTP listener it waits for the SMTP
listener's 220 greeting instead. A listener bound to every address (0.0.0.0, ::) is reached over
loopback. Standard library only (urllib): the slim image has neither curl nor wget.
"""

from __future__ import annotations

import socket
import sys
import urllib.request

from tidings.config import find_config_path, load_config, parse_hostport

TIMEOUT = 5.0


def reachable(address: str) -> tuple[str, int]:
    """(host, port) to connect to for a listener configured as ``host:port``."""
    host, port = parse_hostport(address)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def check_http(address: str) -> None:
    host, port = reachable(address)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # urlopen raises for anything but a 2xx answer (HTTPError), or no answer at all.
    with urllib.request.urlopen(f"http://{netloc}/healthz", timeout=TIMEOUT) as response:
        response.read()


def check_smtp(address: str) -> None:
    with socket.create_connection(reachable(address), timeout=TIMEOUT) as sock:
        greeting = sock.recv(512)
        sock.sendall(b"QUIT\r\n")
    if not greeting.startswith(b"220"):
        raise OSError(f"SMTP greeting {greeting[:60]!r}")


def main() -> int:
    try:
        config = load_config(find_config_path(None))
        http = getattr(config.listen, "http", "")
        if http:
            check_http(http)
        elif config.listen.smtp:
            check_smtp(config.listen.smtp)
    except Exception as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
