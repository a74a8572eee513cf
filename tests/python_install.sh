#!/usr/bin/env bash
# tests/python_install.sh: installs the Python module as a user does, with
# `pip install .` in a fresh virtualenv and build isolation from PyPI, and
# checks what the user gets:
#   1. a plain install has the greenlet engine: "greenlet" is among
#      lockstep.engines(), and importing it warns about nothing; and the build
#      took greenlet.h from the greenlet that build isolation installed (pip's
#      pip-build-env-*), not from a system copy such as Debian's
#      python-greenlet-dev, which would hide a missing build requirement;
#   2. a build with greenlet's header hidden (LOCKSTEP_NO_GREENLET_BUILD=1)
#      while greenlet is installed warns exactly once, naming the fix, and
#      falls back to threads.
# Each install builds from its own copy of the source tree (no build
# outputs), so no build of one case leaks into the other or into the tree.
#
#   tests/python_install.sh        (make test-install; PYTHON=... to choose
#                                   the interpreter, default /usr/bin/python3)
#
# PyPI unreachable: outside CI the script skips itself (and says so through
# $LEG_NOTE, see scripts/legs.sh); with CI=true it fails.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# pypi_reachable: 0 when the package index answers for greenlet.
pypi_reachable() {
  "$python" - <<'PY'
import os, sys, urllib.request
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/").rstrip("/")
try:
    urllib.request.urlopen(f"{index}/greenlet/", timeout=15).close()
except Exception as e:
    print(f"python_install: {index} unreachable: {e}", file=sys.stderr)
    sys.exit(1)
PY
}

if ! pypi_reachable; then
  if [[ ${CI:-} == true ]]; then
    echo "python_install: FAILED: PyPI is unreachable and CI=true" >&2
    exit 1
  fi
  echo "python_install: skipped: PyPI unreachable (CI=true makes this a failure)"
  [[ -n ${LEG_NOTE:-} ]] && echo "skipped: PyPI unreachable" >"$LEG_NOTE"
  exit 0
fi

# fresh_copy DIR: the source tree without VCS data or build outputs.
fresh_copy() {
  mkdir -p "$1"
  tar -C "$src" --exclude-vcs --exclude='./build*' --exclude=./python/build --exclude=./dist \
      --exclude='*.so' --exclude='*.o' --exclude='*.egg-info' --exclude=__pycache__ -cf - . |
    tar -C "$1" -xf -
}

# install NAME [ENV...]: a fresh virtualenv $tmp/NAME in which the user has
# installed greenlet (an optional run-time dependency: the issue's user had
# it), then `pip install .` from a fresh copy, ENV set for the build.  Prints nothing unless pip fails;
# the verbose log, which holds setup.py's own lines, is $tmp/NAME.log.
install() {
  local name=$1; shift
  fresh_copy "$tmp/$name-src"
  "$python" -m venv "$tmp/$name"
  "$tmp/$name/bin/python" -m pip install -q --disable-pip-version-check "$GREENLET_PIN"
  if ! env "$@" "$tmp/$name/bin/python" -m pip install -v --disable-pip-version-check \
         "$tmp/$name-src" >"$tmp/$name.log" 2>&1; then
    cat "$tmp/$name.log" >&2
    echo "python_install: pip install . failed ($name)" >&2
    exit 1
  fi
}

# The greenlet a user has at run time (the version matrix's pin; any release
# in pyproject's range does).
GREENLET_PIN=$(grep -o '^greenlet==[^;[:space:]]*' "$src/python/requirements-test.txt" || true)
[[ -n $GREENLET_PIN ]] || { echo "python_install: no greenlet pin in python/requirements-test.txt" >&2; exit 1; }

passed=0
# check NAME CODE: runs CODE in venv NAME, from outside the source tree, with
# warnings shown once per location (the default); CODE asserts.
check() {
  (cd "$tmp" && "$tmp/$1/bin/python" -c "$2")
  passed=$((passed + 1))
}

install plain
# setup.py runs once per build hook; every run must have used pip's copy.
headers=$(grep -o 'lockstep: greenlet .*' "$tmp/plain.log" | sort -u || true)
if [[ -z $headers ]] || grep -qv pip-build-env <<<"$headers"; then
  echo "python_install: the isolated build did not use the build requirement's greenlet.h:" >&2
  echo "${headers:-setup.py said nothing about greenlet.h}" >&2
  exit 1
fi
passed=$((passed + 1))
check plain '
import subprocess, sys
import lockstep
info = lockstep.build_info()
assert "greenlet" in lockstep.engines(), info
assert info["greenlet_engine"] and info["greenlet"], info
assert lockstep.run(iter(range(1, 1000)), sum, max) == (499500, 999)
# a fresh interpreter imports it with every warning made an error
subprocess.run([sys.executable, "-W", "error", "-c", "import lockstep"], check=True)
print("python_install: plain install:", info["engines"], "greenlet", info["greenlet"])
'

install no-header LOCKSTEP_NO_GREENLET_BUILD=1
check no-header '
import subprocess, sys
code = "import lockstep\nimport lockstep\nprint(lockstep.run(iter(range(10)), sum, max), lockstep.engines())"
p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
assert p.returncode == 0, p.stderr
assert p.stdout.strip() == "(45, 9) (\x27thread\x27, \x27buffer\x27)", p.stdout
warning = "RuntimeWarning: lockstep was built without its greenlet engine"
assert p.stderr.count(warning) == 1, p.stderr
for fix in ("pip install --force-reinstall --no-cache-dir .", "python-greenlet-dev"):
    assert fix in p.stderr, p.stderr
import warnings
warnings.simplefilter("ignore")  # seen above; here only build_info matters
import lockstep
assert lockstep.build_info()["greenlet_engine"] is False
print("python_install: header hidden: one warning, engines", lockstep.engines())
'
echo "python_install: $passed passed, 0 failed"
