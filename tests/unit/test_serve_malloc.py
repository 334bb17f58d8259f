"""``tidings serve`` caps glibc's malloc arenas unless MALLOC_ARENA_MAX is set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tidings.cli import limit_malloc_arenas

GLIBC = sys.platform.startswith("linux") and (
    (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
)


def test_the_environment_wins() -> None:
    assert limit_malloc_arenas({"MALLOC_ARENA_MAX": "8"}) is False


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_arenas_are_capped_on_glibc() -> None:
    # In a child: the cap is for the process that sets it, not for the test runner.
    code = "from tidings.cli import limit_malloc_arenas; print(limit_malloc_arenas({}))"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    assert out.stdout.strip() == b"True"
