"""A throwaway PostgreSQL server for the test session, and throwaway databases in it.

PostgreSQL refuses to run as root, and CI runs as root, so when needed the cluster is created
and started as the ``postgres`` system user (Debian's package creates it). Each test database
is made and dropped by pytest-postgresql's DatabaseJanitor.
"""

from __future__ import annotations

import glob
import os
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    host: str
    port: int
    base: Path
    bindir: Path

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


def _run_as_postgres(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)


def start_postgres() -> PostgresServer:
    bindir = find_pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
    os.chmod(base, 0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    _run_as_postgres(
        [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--no-sync"]
    )  # fmt: skip
    port = free_port()
    options = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    _run_as_postgres(
        [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"),
         "-w", "start"]
    )  # fmt: skip
    return PostgresServer("127.0.0.1", port, base, bindir)
