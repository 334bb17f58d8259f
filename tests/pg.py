"""A throwaway PostgreSQL server for the test session, and throwaway databases in it.

PostgreSQL refuses to run as root, and CI runs as root, so when needed the cluster is created
and started as the ``postgres`` system user (Debian's package creates it). Each test database
is made and dropped by pytest-postgresql's DatabaseJanitor.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pytest_postgresql.janitor import DatabaseJanitor


def find_pg_bindir() -> Path | None:
    for candidate in [
        os.environ.get("TIDINGS_PG_BINDIR", ""),
        *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True),
    ]:
        if candidate and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: a port handed out for port 0
    could be handed out again (to a server's listener, to an outgoing connection) before the
    test binds it, which a port outside the range cannot."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


@dataclass
class PostgresServer:
    host: str
    port: int
    base: Path
    bindir: Path
    options: str = ""  # what pg_ctl passes to the server: port, socket dir, settings

    def url(self, dbname: str) -> str:
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{dbname}"

    @contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, empty database; its async SQLAlchemy URL."""
        name = f"tidings_{uuid.uuid4().hex[:12]}"
        janitor = DatabaseJanitor(user="postgres", host=self.host, port=self.port, dbname=name)
        janitor.init()
        try:
            yield self.url(name)
        finally:
            janitor.drop()

    def stop(self) -> None:
        _run_as_postgres(
            [str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate", "stop"]
        )
        shutil.rmtree(self.base, ignore_errors=True)

    def shut_down(self, mode: str = "fast") -> None:
        """Stop the server and wait until it is down, keeping its data for :meth:`start_again`.
        ``fast`` ends every session (clients see their connections closed), as an operator's
        ``systemctl stop postgresql`` does; ``immediate`` is a crash."""
        _run_as_postgres(
            [str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), "-m", mode, "-w",
             "stop"]
        )  # fmt: skip

    def start_again(self) -> None:
        """Start the server stopped by :meth:`shut_down`: same data, same port."""
        _pg_ctl_start(self.bindir, self.base, self.options)


def _run_as_postgres(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)


def start_postgres(data_on: Path | None = None) -> PostgresServer:
    """A new cluster; with ``data_on``, its data directory there (a small disk a test fills)
    and its WAL beside the rest, so that a full ``data_on`` fails writes with SQLSTATE 53100
    instead of stopping the server."""
    bindir = find_pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
    os.chmod(base, 0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    initdb = [str(bindir / "initdb"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
    if data_on is not None:
        if os.geteuid() == 0:
            shutil.chown(data_on, "postgres", "postgres")
        (data_on / "data").mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(data_on / "data", "postgres", "postgres")
        data.symlink_to(data_on / "data")
        initdb += ["--waldir", str(base / "wal")]
    _run_as_postgres([*initdb, "-D", str(data)])
    port = free_port()
    options = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    _pg_ctl_start(bindir, base, options)
    return PostgresServer("127.0.0.1", port, base, bindir, options)


def _pg_ctl_start(bindir: Path, base: Path, options: str) -> None:
    _run_as_postgres(
        [str(bindir / "pg_ctl"), "-D", str(base / "data"), "-o", options, "-l", str(base / "log"),
         "-w", "start"]
    )  # fmt: skip
