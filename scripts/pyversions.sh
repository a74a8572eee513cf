#!/usr/bin/env bash
# scripts/pyversions.sh: the Python version matrix (make test-pyversions).
# For each supported interpreter it keeps a virtualenv under
# build-py/<name>/venv with the pinned tools of python/requirements-test.txt,
# builds and installs lockstep into it with that interpreter's own pip, and
# runs the whole of python/tests on every engine the build has.  The run
# with greenlet made unimportable (LOCKSTEP_NO_GREENLET=1) is done once, by
# make test-python on Debian's python3: per version it would add ten minutes
# to make test-all and check the same fallback again (PYVERSIONS_NO_GREENLET=1
# adds it here too).  Idempotent: a second run
# reuses the virtualenvs and only rebuilds what changed.  Any missing
# interpreter, failed build or failed test fails the script: CI never
# skips a version.
#
#   scripts/pyversions.sh              every supported version
#   scripts/pyversions.sh 3.9 pypy3    only these
#
# Interpreters: CPython 3.X is $PYENV_VERSIONS/3.X.*/bin/python (pyenv's
# layout, default /root/.pyenv/versions), else python3.X on PATH; pypy3 is
# Debian's /usr/bin/pypy3 (scripts/deps.sh pypy).  The in-place build for
# Debian's python3 (python/lockstep/*.so, python/build/) is left alone: each
# version builds in build-py/<name>/build and its tests import the copy
# installed in its own virtualenv.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSIONS=(3.9 3.10 3.11 3.12 3.13 pypy3)
PYENV_VERSIONS=${PYENV_VERSIONS:-/root/.pyenv/versions}
REQS=$ROOT/python/requirements-test.txt
OUT=$ROOT/build-py

# interpreter NAME: prints the interpreter to use for NAME, or fails.
interpreter() {
  local name=$1 found
  if [[ $name == pypy3 ]]; then
    command -v pypy3 || { echo "pyversions.sh: pypy3 not found (scripts/deps.sh pypy)" >&2; return 1; }
    return 0
  fi
  found=$(ls -d "$PYENV_VERSIONS/$name".*/bin/python 2>/dev/null | sort -V | tail -1 || true)
  [[ -n $found ]] || found=$(command -v "python$name" || true)
  [[ -n $found ]] || { echo "pyversions.sh: no CPython $name (looked in $PYENV_VERSIONS and PATH)" >&2; return 1; }
  echo "$found"
}

# one NAME: venv, build and the test run(s) for one interpreter.
one() {
  local name=$1 py venv site
  py=$(interpreter "$name")
  venv=$OUT/$name/venv
  echo "== $name: $py ($("$py" -c 'import platform; print(platform.python_implementation(), platform.python_version())'))"
  [[ -x $venv/bin/python ]] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q -r "$REQS"
  # --no-build-isolation: build with the pinned setuptools above, offline.
  # Scratch files go to build-py/NAME/build: Debian's python3 and pyenv's
  # 3.11 would otherwise share python/build/temp.*-cpython-311.
  (cd "$ROOT" && LOCKSTEP_BUILD_BASE=$OUT/$name/build \
     "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation --force-reinstall .)
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
  # CPython must have the greenlet engine: a build without it would only
  # skip the greenlet tests, and the matrix would prove less than it says.
  (cd /tmp && "$venv/bin/python" -c '
import platform, lockstep
print("   lockstep", lockstep.__version__, "core", lockstep.core_version, "engines", lockstep.engines())
if platform.python_implementation() == "CPython" and not lockstep.HAVE_GREENLET_ENGINE:
    raise SystemExit("pyversions.sh: built without the greenlet engine")')
  cd "$ROOT"
  LOCKSTEP_PYTHONPATH=$site "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
  if [[ ${PYVERSIONS_NO_GREENLET:-0} == 1 ]]; then
    LOCKSTEP_PYTHONPATH=$site LOCKSTEP_NO_GREENLET=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
  fi
}

names=("$@")
((${#names[@]})) || names=("${VERSIONS[@]}")
for name in "${names[@]}"; do
  one "$name"
done
echo "pyversions.sh: passed on ${names[*]}"
