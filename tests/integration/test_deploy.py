"""Deployment: the Dockerfile's steps without Docker, the compose file, the systemd unit.

No container engine runs here, so the image is tested by doing what its Dockerfile does: build
the wheel, install it with its dependencies in a fresh virtualenv, give the interpreter
cap_net_bind_service, and run the entrypoint (``tidings init`` on first start, then ``serve``,
which migrates) as an unprivileged user, on ports below 1024. The compose file is checked by
Debian's docker-compose (``config -q`` needs no engine), the unit by ``systemd-analyze``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import imaplib
import os
import pwd
import random
import re
import shutil
import signal
import smtplib
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import READY
from tidings.config import ConfigError, ListenConfig, build_config, parse_hostport
from tidings.store.db import SCHEMA_HEAD

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PRODUCTION_PORTS = {25, 465, 587, 143, 993, 110, 995, 80, 443}
CAP_NET_BIND_SERVICE = 1 << 10


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stderr}"
    return result


# --- the Dockerfile's configuration --------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", (ROOT / "Dockerfile").read_text())
    result = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            env.update(item.split("=", 1) for item in rest.split())
    return env


def tidings_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("TIDINGS_")}


def test_dockerfile_config_is_valid_and_exposes_its_listeners() -> None:
    env = dockerfile_env()
    config = build_config({}, tidings_env(env), "/")  # an unknown key would raise ConfigError
    assert str(config.data_path) == "/var/lib/tidings"
    assert env["TIDINGS_CONFIG"] == "/var/lib/tidings/tidings.toml"
    listening = {parse_hostport(v)[1] for k, v in env.items() if k.startswith("TIDINGS_LISTEN__")}
    assert listening == PRODUCTION_PORTS
    exposed = {
        int(p) for word, rest in dockerfile_instructions() if word == "EXPOSE" for p in rest.split()
    }
    assert exposed == PRODUCTION_PORTS
    words = dict(dockerfile_instructions())
    assert words["USER"] == "tidings"
    assert words["VOLUME"] == "/var/lib/tidings"
    assert "tidings-healthcheck" in words["HEALTHCHECK"]
    assert sum(word == "FROM" for word, _ in dockerfile_instructions()) == 2  # multi-stage
    runs = " ".join(rest for word, rest in dockerfile_instructions() if word == "RUN")
    assert "setcap cap_net_bind_service=+ep" in runs
    # The data volume (database, generated key, config) is the user's alone.
    assert "install -d -o tidings -g tidings -m 0700 /var/lib/tidings" in runs
    with pytest.raises(ConfigError, match="unknown key"):
        build_config({}, {"TIDINGS_LISTEN__SMPT": "0.0.0.0:25"}, "/")


# --- docker-compose.yml ----------------------------------------------------------------------


def compose(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    return subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True, text=True, check=False, cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", **env},
    )  # fmt: skip


COMPOSE_ENV = {"POSTGRES_PASSWORD": "0123abcd", "TIDINGS_HOSTNAME": "mail.example.org"}


def test_compose_file_is_valid() -> None:
    result = compose("config", "-q", **COMPOSE_ENV)
    assert result.returncode == 0, result.stderr
    # Without a database password and a host name it refuses to start, saying which is missing.
    result = compose("config", "-q")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "TIDINGS_HOSTNAME" in result.stderr


def test_compose_services() -> None:
    result = compose("config", **COMPOSE_ENV)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    postgres, server = services["postgres"], services["tidings"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data:rw") for v in postgres["volumes"])
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    # docker-compose writes the long syntax; the file itself has "25:25".
    published = {int(p["published"]) for p in server["ports"]}
    assert published == PRODUCTION_PORTS
    assert any(v.startswith("data:/var/lib/tidings") for v in server["volumes"])
    env = server["environment"]
    assert env["TIDINGS_DATABASE__URL"] == "postgresql://tidings:0123abcd@postgres/tidings"
    config = build_config({}, tidings_env({**dockerfile_env(), **env}), "/")
    assert config.server.hostname == "mail.example.org"
    assert config.database_url.startswith("postgresql+asyncpg://tidings:0123abcd@postgres/")
    assert server["cap_add"] == ["NET_BIND_SERVICE"]
    assert server["cap_drop"] == ["ALL"]


# --- the systemd unit ------------------------------------------------------------------------


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (DEPLOY / "tidings.service").read_text()
    for line in (
        "User=tidings",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/tidings",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert line in text.splitlines(), line
    # verify insists that ExecStart's program exists: point it at one that does.
    unit = tmp_path / "tidings.service"
    unit.write_text(text.replace("/opt/tidings/bin/tidings", shutil.which("true") or "/bin/true"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    # verify exits 0 even for unknown keys and bad values; it names the file in its warnings.
    ours = [line for line in result.stderr.splitlines() if "tidings.service" in line]
    assert result.returncode == 0 and not ours, result.stderr
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for tidings\.service: ([\d.]+)", result.stdout)
    if m:  # systemd >= 250
        assert float(m.group(1)) < 3.0, result.stdout


# --- the health check --------------------------------------------------------------------------


def healthcheck(env: dict[str, str]) -> int:
    full = {"PATH": os.environ.get("PATH", ""), **env}
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py")], env=full, capture_output=True,
        check=False, timeout=30,
    ).returncode  # fmt: skip


@contextlib.contextmanager
def http_server(status: int) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_healthcheck_asks_healthz(tmp_path: Path) -> None:
    base = {"TIDINGS_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("")
    for status, expected in ((200, 0), (503, 1)):
        with http_server(status) as port:
            assert healthcheck({**base, "TIDINGS_LISTEN__HTTP": f"0.0.0.0:{port}"}) == expected
    assert healthcheck({**base, "TIDINGS_LISTEN__HTTP": f"127.0.0.1:{free_port()}"}) == 1


def test_healthcheck_without_http_listener_checks_smtp(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text("")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def greet() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"220 mx ESMTP\r\n")
                conn.recv(64)

        thread = threading.Thread(target=greet, daemon=True)
        thread.start()
        env = {
            "TIDINGS_CONFIG": str(config),
            "TIDINGS_LISTEN__SMTP": f"0.0.0.0:{port}",
            "TIDINGS_LISTEN__HTTP": "",
        }
        assert healthcheck(env) == 0
        thread.join(5)
    env["TIDINGS_LISTEN__SMTP"] = f"127.0.0.1:{free_port()}"
    assert healthcheck(env) == 1


# --- the image's steps, without Docker ---------------------------------------------------------


@dataclasses.dataclass
class Runner:
    """Runs commands as the unprivileged user (nobody when the test runs as root)."""

    uid: int
    gid: int

    @property
    def prefix(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        # Not --no-new-privs: like `no-new-privileges` in Docker it would void the file capability.
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]

    def can_run(self, python: str) -> bool:
        check = "import sys, venv; sys.exit(sys.version_info < (3, 11))"
        result = subprocess.run(
            [*self.prefix, python, "-c", check], capture_output=True, check=False,
            cwd="/", timeout=30,
        )  # fmt: skip
        return result.returncode == 0


def unprivileged() -> Runner:
    if os.geteuid() != 0:
        return Runner(os.getuid(), os.getgid())
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root")
    try:
        nobody = pwd.getpwnam("nobody")
        return Runner(nobody.pw_uid, nobody.pw_gid)
    except KeyError:
        return Runner(65534, 65534)


def base_python(runner: Runner) -> str:
    """An interpreter the unprivileged user can run (a pyenv Python under /root is not one)."""
    candidates = [os.path.realpath(sys.executable)]
    for name in ("python3.13", "python3.12", "python3.11", "python3"):
        for folder in ("/usr/local/bin", "/usr/bin"):
            candidates.append(str(Path(folder) / name))
    for python in dict.fromkeys(candidates):
        if os.access(python, os.X_OK) and runner.can_run(python):
            return python
    pytest.skip("no Python >= 3.11 with venv that an unprivileged user can run")


def free_privileged_ports(count: int) -> list[int]:
    """Ports below 1024 free on loopback (the test runs as root to find them)."""
    ports: list[int] = []
    for port in random.sample(range(600, 1024), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    pytest.skip("no free ports below 1024 on loopback")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def wait_ready(process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            m = READY.search(line)
            if m:
                return dict(item.split("=", 1) for item in m.group(1).split())
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}:\n{text}")
        time.sleep(0.05)
    raise AssertionError(f"the server did not become ready:\n{log.read_text(errors='replace')}")


def hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def check_private(top: Path, uid: int) -> None:
    """Everything under ``top`` belongs to ``uid`` and nobody else may read it."""
    for path in [top, *top.rglob("*")]:
        st = path.lstat()
        assert st.st_uid == uid, f"{path} belongs to uid {st.st_uid}"
        mode = stat.S_IMODE(st.st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {mode:o}"


def test_wheel_in_fresh_virtualenv_runs_unprivileged() -> None:
    runner = unprivileged()
    python = base_python(runner)
    work = Path(tempfile.mkdtemp(prefix="tidings-deploy-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        # The unprivileged user must reach the virtualenv (pytest's tmp_path is root's, 0700).
        work.chmod(0o755)
        # 1. The build stage: the wheel, from a copy of the sources (no build/ in the checkout).
        source = work / "source"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, source)
        shutil.copytree(
            ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"),
             str(source)])  # fmt: skip
        (wheel,) = (work / "dist").glob("tidings-*.whl")

        # 2. The final stage: a fresh interpreter environment with the wheel and its
        # dependencies (from pip's index and cache, as the image's build stage gets them). The
        # virtualenv has its own copy of the interpreter (--copies), so the capability below is
        # given to it and not to the system's Python; this test's pip installs into it.
        venv = work / "venv"
        run([python, "-m", "venv", "--copies", "--without-pip", str(venv)])
        run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "-q", str(wheel)])  # fmt: skip
        bin_dir = work / "bin"
        bin_dir.mkdir()
        for script, name in (("docker-entrypoint.sh", "tidings-entrypoint"),
                             ("healthcheck.py", "tidings-healthcheck")):  # fmt: skip
            shutil.copy(DEPLOY / script, bin_dir / name)
            (bin_dir / name).chmod(0o755)
        # The console script runs the interpreter its first line names: that one gets the
        # capability, as /usr/local/bin/python3.x does in the image.
        shebang = (venv / "bin" / "tidings").read_text().splitlines()[0]
        interpreter = os.path.realpath(shebang[2:].strip())
        assert interpreter.startswith(str(venv)), shebang

        smtp_port = imap_port = 0
        if os.geteuid() == 0 and shutil.which("setcap"):
            run(["setcap", "cap_net_bind_service=+ep", interpreter])
            smtp_port, imap_port = free_privileged_ports(2)

        # 3. The container: the data volume (empty, 0700, the user's), the image's ENV with
        # loopback addresses, the entrypoint as the unprivileged user.
        data = work / "data"
        data.mkdir(mode=0o700)
        os.chown(data, runner.uid, runner.gid)
        env = {
            "PATH": f"{bin_dir}:{venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(data),
            "LANG": "C.UTF-8",
            "TIDINGS_CONFIG": str(data / "tidings.toml"),
            "TIDINGS_SERVER__DATA_DIR": str(data),
            "TIDINGS_SERVER__HOSTNAME": "mail.deploy.test",
            "TIDINGS_DNS__NAMESERVERS": "127.0.0.1:9",
            "TIDINGS_LISTEN__SMTP": f"127.0.0.1:{smtp_port}",
            "TIDINGS_LISTEN__IMAP": f"127.0.0.1:{imap_port}",
            **{
                f"TIDINGS_LISTEN__{f.name.upper()}": "127.0.0.1:0"
                for f in dataclasses.fields(ListenConfig)
                if f.name not in ("smtp", "imap")
            },
        }
        log = work / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*runner.prefix, "tidings-entrypoint", "serve"],
                stdout=out, stderr=out, env=env, cwd=data,
            )  # fmt: skip
        # setpriv and the entrypoint exec: the pid is the server's.
        addresses = wait_ready(process, log)
        status = proc_status(process.pid)
        assert status["Uid"].split()[0] == str(runner.uid)
        assert int(status["CapEff"], 16) & ~CAP_NET_BIND_SERVICE == 0, status["CapEff"]
        assert os.readlink(f"/proc/{process.pid}/exe") == interpreter

        # It answers on SMTP and IMAP, on the ports below 1024 when it runs as root.
        if smtp_port:
            assert hostport(addresses["smtp"]) == ("127.0.0.1", smtp_port)
            assert hostport(addresses["imap"]) == ("127.0.0.1", imap_port)
        with smtplib.SMTP(*hostport(addresses["smtp"]), timeout=10) as smtp:
            code, text = smtp.ehlo("client.deploy.test")
            assert code == 250 and b"STARTTLS" in text
        imap = imaplib.IMAP4(*hostport(addresses["imap"]), timeout=10)
        try:
            assert "STARTTLS" in imap.capabilities
        finally:
            imap.logout()
        # The image's health check (its `python3` is the virtualenv's, first on PATH), as the
        # user, against the running server's /healthz.
        check_env = {**env, "TIDINGS_LISTEN__HTTP": addresses["http"]}
        run([*runner.prefix, "tidings-healthcheck"], env=check_env, cwd=data, timeout=30)

        # The config `tidings init` wrote, the migrated store, the generated key: all private.
        assert (data / "tidings.toml").is_file()
        assert (data / "tls" / "key.pem").is_file()
        with contextlib.closing(
            sqlite3.connect(f"file:{data / 'tidings.db'}?mode=ro", uri=True)
        ) as db:
            assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
                (SCHEMA_HEAD,)
            ]
        # An admin command, as `docker compose exec tidings tidings domain add` runs it.
        result = run([*runner.prefix, "tidings", "domain", "add", "deploy.test"], env=env, cwd=data)
        assert "deploy.test" in result.stdout
        written = {p.name for p in data.rglob("*")}
        assert {"tidings.toml", "tidings.db", "tls", "key.pem", "cert.pem"} <= written, written
        check_private(data, runner.uid)

        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, log.read_text(errors="replace")
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)
