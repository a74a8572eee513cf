#!/usr/bin/env bash
# tests/install_smoke.sh BUILD_DIR: installs lockstep from BUILD_DIR into a
# scratch prefix, then builds examples/sum_max.c against it twice, with
# pkg-config and with CMake's find_package, and runs both.  Proves that the
# header, the libraries, lockstep.pc and the CMake package install and work.
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
cc -O2 "$src/examples/sum_max.c" $(pkg-config --cflags --libs lockstep) -o "$tmp/sum_max_pc"
out=$(LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/sum_max_pc")
[[ $out == *"sum(1..999) = 499500, max(1..999) = 999"* ]] || { echo "pkg-config build: $out" >&2; exit 1; }

mkdir -p "$tmp/consumer"
cat > "$tmp/consumer/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.18)
project(consumer C)
find_package(lockstep 0.1 REQUIRED)
add_executable(sum_max "$src/examples/sum_max.c")
target_link_libraries(sum_max PRIVATE lockstep::lockstep_static)
CMAKE
cmake -S "$tmp/consumer" -B "$tmp/consumer/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/consumer/build" >/dev/null
out=$("$tmp/consumer/build/sum_max")
[[ $out == *"sum(1..999) = 499500, max(1..999) = 999"* ]] || { echo "find_package build: $out" >&2; exit 1; }
echo "install_smoke: 2 passed, 0 failed"
