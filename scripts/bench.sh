#!/usr/bin/env bash
# scripts/bench.sh: the whole benchmark suite in one go (make bench).  Runs the
# C table (with the window sweep), the ucontext fiber variant, the raw
# context-switch micro-benchmark, the byte-stream table (with its sweep) and
# the Python table (with its sweep), then
# writes everything to bench/results/: one JSON file per suite, the Markdown
# tables, and chart.png.  QUICK=1 runs a small smoke version.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
mkdir -p "$out"
PY=/usr/bin/python3
quick=${QUICK:-}

echo "== C engines (bench_c) =="
if [[ -n $quick ]]; then
  ./build/bench/bench_c --quick --json "$out/c.json" | tee "$out/c.md"
else
  ./build/bench/bench_c --sweep --json "$out/c.json" | tee "$out/c.md"
fi

echo "== fiber on glibc ucontext (forced) =="
cmake -S . -B build-bench-ucontext -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOCKSTEP_FORCE_UCONTEXT=ON \
  -DBUILD_TESTING=OFF -DLOCKSTEP_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-bench-ucontext -j "$(nproc)" --target bench_c >/dev/null
./build-bench-ucontext/bench/bench_c --only fiber --variant ucontext ${quick:+--quick} \
  --json "$out/c_ucontext.json" | tee "$out/c_ucontext.md"

echo "== raw context switch (switch_bench) =="
./build/bench/switch_bench | tee "$out/switch.md"
./build/bench/switch_bench --json > "$out/switch.json"

echo "== Byte streams (bench_bytes: take, Go io.Pipe, tee, digests, pipe, RSS) =="
if [[ -x build/bench/bench_bytes ]]; then
  # Wall-clock rows, then the single-threaded rows again by CPU time (the
  # figures to trust on a shared machine), then the default-window sweep.
  ./build/bench/bench_bytes ${quick:+--quick} --go bench/go_pipe.go --json "$out/bytes.json" \
    | tee "$out/bytes.md"
  ./build/bench/bench_bytes ${quick:+--quick} --cpu --go bench/go_pipe.go --json "$out/bytes_cpu.json" \
    | tee "$out/bytes_cpu.md"
  ./build/bench/bench_bytes --quick --cpu --sweep-only --json "$out/bytes_sweep.json" \
    | tee "$out/bytes_sweep.md"
else
  echo "bench_bytes not built (needs OpenSSL's libcrypto: scripts/deps.sh build)"
fi

echo "== Python (py_bench) =="
$PY bench/py_bench.py --pythonpath python ${quick:+--quick} --window-sweep --json "$out/py.json" \
  | tee "$out/py.md"

echo "== Python async (py_async_bench: lockstep.arun, asyncio, uvloop, trio, async tees) =="
scripts/bench_async_deps.sh "$PY"
$PY bench/py_async_bench.py --pythonpath python ${quick:+--quick} --json "$out/py_async.json" \
  | tee "$out/py_async.md"

echo "== Python byte streams (py_bytes_bench: run_bytes, two file_digest consumers) =="
$PY bench/py_bytes_bench.py --pythonpath python ${quick:+--mib 16 --repeat 1} ${quick:---rss --sweep} \
  --json "$out/py_bytes.json" | tee "$out/py_bytes.md"

$PY bench/py_chart.py --out "$out/chart.png" "$out/py.json" "$out/c.json" "$out/c_ucontext.json" \
  "$out/py_async.json" "$out/bytes.json" "$out/py_bytes.json"
echo "results in $out/ (c.json, c_ucontext.json, switch.json, py.json, *.md, chart.png)"
