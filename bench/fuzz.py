"""Long fuzzing runs with atheris (coverage-guided, libFuzzer) over ``tidings.fuzz.TARGETS``.

Each target runs in its own child process for a fixed time, its corpus seeded with the valid
examples in ``tidings.fuzz.SEEDS``; the tidings modules (and aiosmtpd, for the SMTP engine) are
instrumented for coverage. A crash — an unhandled exception or a broken invariant — is saved
as ``crash-<sha1>`` in the work directory, and the target is started again for the rest of its
time, so one bug does not hide the others; inputs that hit an issue listed in
``tidings.fuzz.KNOWN_ISSUES`` (found, not fixed yet) are not counted, for the same reason. Figures
are printed, never asserted.

    python3 -m pip install atheris               # not a dependency of Tidings or its tests
    bash bench/fuzz.sh 120                        # every target, 120 s each, two at a time
    python3 bench/fuzz.py --seconds 600 imap mime # some targets, longer
    python3 bench/fuzz.py --replay imap crash-0a1b2c...   # rerun one input, show the traceback
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _import_fuzz(instrument: bool) -> Any:
    """``tidings.fuzz``, its modules instrumented for coverage when ``instrument``."""
    sys.path.insert(0, str(SRC))
    # aiosmtpd logs every unrecognised command at WARNING: quiet, or the run is all log lines.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    logging.getLogger("tidings").setLevel(logging.CRITICAL)
    if instrument:
        import atheris

        with atheris.instrument_imports(include=["tidings", "aiosmtpd"]):
            from tidings import fuzz
    else:
        from tidings import fuzz
    return fuzz


# --- the child: one target under atheris --------------------------------------------------------


def child(target: str, seconds: int, workdir: Path, max_len: int) -> None:
    import atheris

    fuzz = _import_fuzz(instrument=True)

    def run(data: bytes) -> None:
        fuzz.run_target(target, data)  # raises unless the crash is a known issue

    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for number, seed in enumerate(fuzz.SEEDS[target]):
        (corpus / f"seed-{number}").write_bytes(seed)
    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        f"-max_len={max_len}",
        f"-artifact_prefix={workdir}/",
        "-print_final_stats=1",
        "-timeout=20",
        "-rss_limit_mb=2048",
    ]
    atheris.Setup(argv, run)
    atheris.Fuzz()


# --- the parent: run the children, count -------------------------------------------------------


@dataclass
class Outcome:
    target: str
    seconds: float = 0.0
    inputs: int = 0
    runs: int = 0
    crashes: list[Path] | None = None
    corpus: int = 0
    kinds: dict[str, int] | None = None  # crash signature (exception and where) → count


_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")
_UNCAUGHT = re.compile(rb"=== Uncaught Python exception: ===\n([^\n]*)\n((?:.*\n)*?)\n")
_FRAME = re.compile(rb'File "([^"]*)", line (\d+), in (\S+)')


def _signature(match: re.Match[bytes]) -> str:
    """An uncaught exception's type and innermost frame: crashes with one cause share it."""
    kind = match.group(1).split(b":")[0].decode(errors="replace")
    frames = _FRAME.findall(match.group(2))
    if not frames:
        return kind
    if frames[-1][2] == b"_check" and len(frames) > 1:
        frames.pop()  # an invariant: where it was checked says which
    path, line, function = frames[-1]
    return f"{kind} at {Path(path.decode()).name}:{line.decode()} ({function.decode()})"


_STATUS = re.compile(rb"^#(\d+)\s", re.MULTILINE)


def run_target(target: str, seconds: int, root: Path, max_len: int) -> Outcome:
    """Fuzz ``target`` for ``seconds`` in total, restarting after each crash."""
    workdir = root / target
    workdir.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(target, crashes=[], kinds={})
    started = time.monotonic()
    log = workdir / "log.txt"
    with log.open("ab") as log_file:
        while (left := seconds - (time.monotonic() - started)) >= 1 and outcome.runs < 200:
            outcome.runs += 1
            proc = subprocess.run(
                [sys.executable, __file__, "--child", target, "--seconds", str(int(left)),
                 "--workdir", str(workdir), "--max-len", str(max_len)],
                capture_output=True, check=False,
                env={**os.environ, "PYTHONPATH": str(SRC)},
            )  # fmt: skip
            output = proc.stdout + proc.stderr
            log_file.write(output)
            executed = _EXECUTED.findall(output)
            status = _STATUS.findall(output)
            outcome.inputs += int((executed or status or [b"0"])[-1])
            for match in _UNCAUGHT.finditer(output):
                kind = _signature(match)
                assert outcome.kinds is not None
                outcome.kinds[kind] = outcome.kinds.get(kind, 0) + 1
            if proc.returncode == 0:
                break
    outcome.seconds = time.monotonic() - started
    outcome.crashes = sorted(workdir.glob("crash-*")) + sorted(workdir.glob("timeout-*"))
    outcome.corpus = len(list((workdir / "corpus").iterdir()))
    return outcome


def replay(target: str, path: Path) -> int:
    fuzz = _import_fuzz(instrument=False)
    data = path.read_bytes()
    print(f"{target} on {path} ({len(data)} bytes): {data[:200]!r}")
    try:
        fuzz.TARGETS[target](data)
    except Exception:
        traceback.print_exc()
        return 1
    print("no crash")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--jobs", type=int, default=2, help="targets at a time (default 2)")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input (bytes)")
    parser.add_argument("--workdir", type=Path, help="corpora and crashes (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--replay", nargs=2, metavar=("TARGET", "FILE"),
                        help="run one saved input through a target")  # fmt: skip
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, args.workdir, args.max_len)
        return 0
    if args.replay:
        return replay(args.replay[0], Path(args.replay[1]))
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: python3 -m pip install atheris", file=sys.stderr)
        return 2
    fuzz = _import_fuzz(instrument=False)
    names = args.targets or list(fuzz.TARGETS)
    unknown = [n for n in names if n not in fuzz.TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(fuzz.TARGETS)}")
    for name in names:
        for issue in fuzz.KNOWN_ISSUES.get(name, []):
            print(f"{name}: a known issue is counted as no crash: {issue.description}")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="tidings-fuzz-"))
    print(f"fuzzing {len(names)} targets for {args.seconds} s each, {args.jobs} at a time; "
          f"corpora and crashes in {root}", flush=True)  # fmt: skip
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_target, n, args.seconds, root, args.max_len) for n in names]
        outcomes = []
        for future in futures:
            outcome = future.result()
            outcomes.append(outcome)
            print(f"  {outcome.target}: {outcome.inputs:,} inputs, "
                  f"{len(outcome.crashes or [])} crashes", flush=True)  # fmt: skip
    print()
    print("| target | seconds | inputs tried | inputs/s | corpus | crashes | distinct |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for o in outcomes:
        rate = o.inputs / o.seconds if o.seconds else 0
        print(f"| {o.target} | {o.seconds:.0f} | {o.inputs:,} | {rate:,.0f} | {o.corpus} "
              f"| {len(o.crashes or [])} | {len(o.kinds or {})} |")  # fmt: skip
    for o in outcomes:
        for kind, count in (o.kinds or {}).items():
            print(f"{o.target}: {count} x {kind}")
    crashed = [c for o in outcomes for c in o.crashes or []]
    for path in crashed:
        print(f"crash: python3 bench/fuzz.py --replay {path.parent.name} {path}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
