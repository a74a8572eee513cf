#!/usr/bin/env bash
# scripts/python_suites.sh: make test-python.  Runs the Python suite twice at
# once: on every engine, and with greenlet made unimportable
# (LOCKSTEP_NO_GREENLET=1), which proves the thread fallback.  The two runs
# are independent processes and mostly use one core each, so on a 2-core
# machine running them side by side saves about a minute of `make test`
# (docs/TESTING.md).  Each run's output is printed whole, one after the
# other; the exit status is nonzero when either failed.
#
#   scripts/python_suites.sh PYTHON [PYTEST-ARGS...]
set -uo pipefail
python=${1:?usage: $0 PYTHON [PYTEST-ARGS...]}
shift
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

"$python" -m pytest -q -p no:cacheprovider python/tests "$@" >"$logs/greenlet" 2>&1 &
with=$!
LOCKSTEP_NO_GREENLET=1 "$python" -m pytest -q -p no:cacheprovider python/tests "$@" >"$logs/no-greenlet" 2>&1 &
without=$!
wait "$with"; rc_with=$?
wait "$without"; rc_without=$?

echo "== Python suite, every engine =="
cat "$logs/greenlet"
echo "== Python suite, greenlet unimportable (LOCKSTEP_NO_GREENLET=1) =="
cat "$logs/no-greenlet"
((rc_with == 0 && rc_without == 0))
