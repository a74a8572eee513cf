#!/usr/bin/env bash
# scripts/deps.sh: installs the Debian packages a make target needs, only when
# they are missing, so every target works on a fresh machine and costs nothing
# on a prepared one.  Usage: scripts/deps.sh GROUP...  (groups below).
set -euo pipefail

# build: libarchive, libxml2, zlib and OpenSSL are test dependencies only
# (tests/bytes_readers.c, examples/onepass.c); lockstep itself needs none.
# bench: Go runs bench_bytes's io.Pipe row.
declare -A PKG_GROUPS=(
  [build]="build-essential cmake pkg-config libarchive-dev libxml2-dev zlib1g-dev libssl-dev"
  [sanitize]="clang libclang-rt-14-dev valgrind"
  [venv]="python3-venv"
  [python]="python3-dev python3-pytest python3-greenlet python-greenlet-dev python3-setuptools python3-pip"
  [pypy]="pypy3 pypy3-dev"
  [cross]="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
  [bench]="python3-matplotlib python3-uvloop python3-greenlet libboost-context-dev golang-go"
)
# python/tests/test_dask.py runs lockstep on a LocalCluster (examples/dask_partitions.py).
PKG_GROUPS[python]+=" python3-dask python3-distributed python3-psutil"

# lockstep.arun's tests run under asyncio, uvloop and trio (sniffio tells
# them apart), and use aiostream as a third-party consumer.
PKG_GROUPS[python]+=" python3-uvloop python3-trio python3-sniffio python3-aiostream"

missing=()
for group in "$@"; do
  [[ -n "${PKG_GROUPS[$group]+x}" ]] || { echo "deps.sh: unknown group '$group'" >&2; exit 2; }
  for pkg in ${PKG_GROUPS[$group]}; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
done
((${#missing[@]} == 0)) && exit 0

echo "deps.sh: installing ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "deps.sh: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists once per machine: a fresh image may have none.
stamp=/var/lib/apt/lists/.lockstep-updated
if [[ ! -e $stamp ]] || ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO touch "$stamp" || true
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
