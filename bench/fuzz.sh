#!/usr/bin/env bash
# Fuzz every parser with atheris for SECONDS_PER_TARGET seconds each (default 60), two targets
# at a time, and print per target the inputs tried and the crashes found.
#
#   python3 -m pip install atheris     # once; atheris is not a dependency of Tidings or its tests
#   bash bench/fuzz.sh 120             # extra arguments go to bench/fuzz.py (targets, --jobs, ...)
#
# The targets are tidings.fuzz.TARGETS; the hypothesis tests in tests/unit/test_fuzz.py run the
# same entry points briefly on every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
[ $# -gt 0 ] && shift
if ! python3 -c "import atheris" 2>/dev/null; then
    echo "atheris is not installed: python3 -m pip install atheris" >&2
    exit 2
fi
exec python3 bench/fuzz.py --seconds "$seconds" "$@"
