"""Test helpers: a real ``tidings serve`` process on loopback, and the CLI run for real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = re.compile(r"ready: (.*)$")


def write_config(directory: Path, db_url: str, **sections: dict[str, object]) -> Path:
    """A config for a test server: every listener on a free loopback port, its own data dir."""
    values: dict[str, dict[str, object]] = {
        "server": {"hostname": "mx.tidings.test", "data_dir": str(directory / "data")},
        "database": {"url": db_url},
        "listen": {"smtp": "127.0.0.1:0"},
    }
    for name, keys in sections.items():
        values.setdefault(name, {}).update(keys)
    lines = []
    for name, keys in values.items():
        lines.append(f"[{name}]")
        for key, value in keys.items():
            if isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            else:
                lines.append(f"{key} = {value}")
    path = directory / "tidings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tidings(config: Path | None, *args: str, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the ``tidings`` command as a user would."""
    cmd = [sys.executable, "-m", "tidings"]
    if config is not None:
        cmd += ["--config", str(config)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*cmd, *args], input=input, capture_output=True, text=True, env=full_env,
        timeout=timeout, check=False,
    )  # fmt: skip


@dataclass
class TidingsServer:
    """``tidings serve`` in a child process; addresses parsed from its ready line."""

    config: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    log_path: Path | None = None

    def start(self, timeout: float = 30) -> TidingsServer:
        self.log_path = self.config.parent / "server.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "--config", str(self.config), "serve"],
            stdout=log, stderr=log, env={**os.environ, **self.env},
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            for line in text.splitlines()[seen:]:
                m = READY.search(line)
                if m:
                    self.addresses = {}
                    for item in m.group(1).split():
                        name, _, hostport = item.partition("=")
                        host, _, port = hostport.rpartition(":")
                        self.addresses[name] = (host, int(port))
            if self.addresses and self.process.poll() is None:
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"tidings exited with {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"tidings did not become ready:\n{self.log()}")

    @property
    def smtp(self) -> tuple[str, int]:
        return self.addresses["smtp"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 20) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> TidingsServer:
        self.stop()
        self.addresses = {}
        # Reuse the ports the previous run had, so clients can reconnect to the same place.
        return self.start()
