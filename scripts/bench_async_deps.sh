#!/usr/bin/env bash
# scripts/bench_async_deps.sh: installs the pinned PyPI packages that
# bench/py_async_bench.py compares lockstep.arun with (asyncstdlib.tee and
# aioitertools.tee) into bench/.pydeps, once, with pip's --target: nothing
# is installed system-wide, and the benchmark puts that directory on its
# path.  Usage: scripts/bench_async_deps.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-/usr/bin/python3}
target=bench/.pydeps
pins=(asyncstdlib==3.12.5 aioitertools==0.12.0)
stamp="$target/.installed-$(echo "${pins[*]}" | tr ' =' '_-')"
[[ -e $stamp ]] && exit 0
rm -rf "$target"
"$PY" -m pip install --quiet --no-deps --target "$target" "${pins[@]}"
touch "$stamp"
