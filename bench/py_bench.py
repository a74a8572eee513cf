"""Python benchmark: sum() and max() over one one-shot iterator, side by side.

This script holds the Python half of lockstep's benchmark suite.  For
``iter(range(N))`` it computes ``(sum, max)`` with every approach in
bench/py_approaches.py (list buffer, itertools.tee, threads with unbounded
queues, threads in strict lockstep on a Barrier, greenlet by hand, asyncio,
uvloop) and, when ``import lockstep`` works, with ``lockstep.run`` on its
engines.  Every result is checked against the known answer.

Method, per row: one plain warm-up run (which also gives the time estimate;
rows estimated at over a second skip it), one separate run under tracemalloc
for the peak memory (never timed; at a smaller N for rows too slow to trace),
then timed repeats -- 7 by default, fewer when a row would exceed its time
budget -- reported as median, min-max and ratio to the buffer baseline's
median at the same N.  Rows whose single run is estimated (from the N=10**4
time) at over --max-est seconds are skipped.

Output: a Markdown table on stdout and, with --json PATH, a JSON file with
the machine, the configuration and all rows (read by bench/py_chart.py).

Run with Debian's interpreter, which has greenlet and uvloop:

    /usr/bin/python3 bench/py_bench.py --json bench/py_results.json
    /usr/bin/python3 bench/py_bench.py --quick
    /usr/bin/python3 bench/py_bench.py --pythonpath build/python --window-sweep

Under PyPy (no tracemalloc there, so no memory column), with the copy of
lockstep that make test-pyversions installs into its PyPy virtualenv:

    build-py/pypy3/venv/bin/python bench/py_bench.py
"""

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time

try:
    import tracemalloc
    tracemalloc.get_traced_memory  # PyPy has the module, not its C half
except (ImportError, AttributeError):  # PyPy: the memory column is left empty
    tracemalloc = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import py_approaches as A  # noqa: E402  (needs the path line above)

CONSUMERS = (sum, max)
ASYNC_CONSUMERS = (A.async_sum, A.async_max)
SWEEP_WINDOWS = [1 << k for k in range(17)]  # 1, 2, 4, ..., 65536
LOCKSTEP_ENGINES = ("greenlet", "thread", "buffer")
TRACE_SLOWDOWN = 4.0  # rough cost of tracemalloc, for planning the memory run


# --------------------------------------------------------------------------
# The rows
# --------------------------------------------------------------------------

class Row:
    """One approach to benchmark: a name, a callable and why it may not run."""

    def __init__(self, name, fn, unavailable=None, baseline=False):
        """fn(iterator) -> (sum, max); unavailable is a reason string or None."""
        self.name = name
        self.fn = fn
        self.unavailable = unavailable
        self.baseline = baseline


def python_rows():
    """The hand-written Python approaches, baseline first."""
    no_greenlet = None if A.greenlet is not None else "greenlet not installed"
    no_uvloop = None if A.uvloop is not None else "uvloop not installed"
    return [
        Row("buffer: list(it)", lambda it: A.run_buffer(it, CONSUMERS), baseline=True),
        Row("itertools.tee", lambda it: A.run_tee(it, CONSUMERS)),
        Row("threads + SimpleQueue (unbounded)", lambda it: A.run_threads_simple(it, CONSUMERS)),
        Row("threads + Barrier (lockstep)", lambda it: A.run_threads_barrier(it, CONSUMERS)),
        Row("greenlet by hand (lockstep)", lambda it: A.run_greenlet(it, CONSUMERS),
            unavailable=no_greenlet),
        Row("asyncio, Queue(maxsize=1)", lambda it: A.run_asyncio(it, ASYNC_CONSUMERS)),
        Row("uvloop, Queue(maxsize=1)", lambda it: A.run_uvloop(it, ASYNC_CONSUMERS),
            unavailable=no_uvloop),
    ]


def lockstep_call(lockstep, engine, window):
    """A callable running lockstep.run(it, sum, max) on one engine and window."""
    run = lockstep.run
    return lambda it: run(it, *CONSUMERS, window=window, engine=engine)


def lockstep_rows(lockstep):
    """lockstep.run rows: greenlet and thread at window 1 and default, buffer."""
    rows = []
    for engine in ("greenlet", "thread"):
        for window in (1, None):
            label = "default" if window is None else str(window)
            missing = None if engine in lockstep.engines() else "engine not in this build (PyPy)"
            rows.append(Row(f"lockstep {engine}, window={label}",
                            lockstep_call(lockstep, engine, window), unavailable=missing))
    rows.append(Row("lockstep buffer, window=default", lockstep_call(lockstep, "buffer", None)))
    return rows


def try_import_lockstep(paths):
    """Import lockstep after prepending paths to sys.path; (module, note)."""
    for path in reversed(paths):
        sys.path.insert(0, os.path.abspath(path))
    try:
        import lockstep
    except Exception as exc:  # ImportError, or a broken build
        return None, f"lockstep rows skipped: import lockstep failed ({type(exc).__name__}: {exc})"
    if not hasattr(lockstep, "run"):
        return None, f"lockstep rows skipped: {lockstep.__file__} has no run()"
    return lockstep, None


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------

def expected(n):
    """The right answer (sum, max) for iter(range(n))."""
    return (n * (n - 1) // 2, n - 1)


def run_checked(fn, n):
    """Run fn once over iter(range(n)), timed, and fail loudly on a wrong result."""
    it = iter(range(n))
    gc.collect()
    t0 = time.perf_counter()
    result = fn(it)
    elapsed = time.perf_counter() - t0
    if tuple(result) != expected(n):
        raise AssertionError(f"wrong result for N={n}: got {result!r}, want {expected(n)!r}")
    return elapsed


def peak_memory(fn, n):
    """Peak bytes traced by tracemalloc during one (untimed) run of fn."""
    it = iter(range(n))
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn(it)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if tuple(result) != expected(n):
        raise AssertionError(f"wrong result under tracemalloc for N={n}: {result!r}")
    return peak


def plan_repeats(estimate, most, cfg):
    """How many timed runs fit the per-row budget: at most `most`, and at
    least 3 for rows under cfg.slow_s (so min-max means something), else 1."""
    least = min(3, most) if estimate < cfg.slow_s else 1
    return max(least, min(most, int(cfg.budget_s / max(estimate, 1e-9))))


def measure(fn, n, estimate, cfg):
    """Warm up, measure memory, then time repeats; returns a dict of results.

    estimate is the expected seconds of one run (None when unknown: then the
    warm-up run provides it).  When the tracemalloc run at N would take over
    cfg.mem_max_s, the peak is measured at N/10 (or N/100, ...) instead and
    the row's peak_n says so.
    """
    warmed = False
    if estimate is None or estimate < cfg.slow_s:
        estimate = run_checked(fn, n)
        warmed = True
    mem_n = n  # tracemalloc slows runs ~3-5x: shrink N for very slow rows
    while mem_n > 10_000 and estimate * (mem_n / n) * TRACE_SLOWDOWN > cfg.mem_max_s:
        mem_n //= 10
    peak = None if cfg.no_memory else peak_memory(fn, mem_n)
    repeats = plan_repeats(estimate, cfg.repeats, cfg)
    times = [run_checked(fn, n) for _ in range(repeats)]
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
        "warmup": warmed,
        "peak_bytes": peak,
        "peak_n": mem_n,
        "times_s": times,
    }


def bench_rows(rows, sizes, cfg, log):
    """Benchmark every row at every size; returns the list of JSON rows."""
    out = []
    small_time = {}  # row name -> (n, median) at the smallest size, for estimates
    for n in sizes:
        base = None
        for row in rows:
            rec = {"suite": "python", "name": row.name, "n": n}
            if row.unavailable:
                rec["skipped"] = row.unavailable
                out.append(rec)
                continue
            estimate = None
            if row.name in small_time:
                n0, t0 = small_time[row.name]
                estimate = t0 * n / n0
                if estimate > cfg.max_est:
                    rec["skipped"] = f"est. {estimate:.0f} s"
                    rec["est_s"] = estimate
                    log(f"  N={n:>8} {row.name}: skipped (est. {estimate:.0f} s)")
                    out.append(rec)
                    continue
            t_start = time.perf_counter()
            rec.update(measure(row.fn, n, estimate, cfg))
            rec["ns_per_item"] = rec["median_s"] / n * 1e9
            if row.baseline:
                base = rec["median_s"]
            rec["ratio"] = rec["median_s"] / base if base else None
            small_time.setdefault(row.name, (n, rec["median_s"]))
            log(f"  N={n:>8} {row.name}: {fmt_time(rec['median_s'])} "
                f"x{rec['repeats']} ({time.perf_counter() - t_start:.1f} s)")
            out.append(rec)
    return out


def window_sweep(lockstep, n, cfg, log):
    """Time lockstep.run at N=n for windows 1..65536 on each engine."""
    out = []
    for engine in LOCKSTEP_ENGINES:
        for window in SWEEP_WINDOWS:
            fn = lockstep_call(lockstep, engine, window)
            rec = {"suite": "python-window-sweep", "engine": engine, "window": window, "n": n,
                   "name": f"lockstep {engine}, window={window}"}
            probe_n = min(n, 10_000)
            estimate = run_checked(fn, probe_n) * n / probe_n
            if estimate > cfg.max_est:
                rec["skipped"] = f"est. {estimate:.0f} s"
                log(f"  sweep {engine} w={window}: skipped (est. {estimate:.0f} s)")
                out.append(rec)
                continue
            if estimate < cfg.slow_s:
                run_checked(fn, n)  # warm-up
            repeats = plan_repeats(estimate, cfg.sweep_repeats, cfg)
            times = [run_checked(fn, n) for _ in range(repeats)]
            rec.update(median_s=statistics.median(times), min_s=min(times), max_s=max(times),
                       repeats=repeats, times_s=times)
            rec["ns_per_item"] = rec["median_s"] / n * 1e9
            log(f"  sweep {engine} w={window}: {fmt_time(rec['median_s'])}")
            out.append(rec)
    return out


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

def fmt_time(seconds):
    """Seconds as a short human string (ns, us, ms or s)."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_bytes(count):
    """A byte count as B, KiB or MiB."""
    if count is None:
        return "-"
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def fmt_n(n):
    """N as 10^k when it is a power of ten."""
    k = len(str(n)) - 1
    return f"10^{k}" if n == 10 ** k else str(n)


def markdown_table(rows):
    """The main results as a Markdown table."""
    lines = ["| N | approach | median | min - max | ratio | ns/item | peak mem | runs |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {fmt_n(r['n'])} | {r['name']} | skipped ({r['skipped']}) "
                         "| | | | | |")
            continue
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        spread = (f"{fmt_time(r['min_s'])} - {fmt_time(r['max_s'])}" if r["repeats"] > 1
                  else "(1 run)")
        mem = fmt_bytes(r.get("peak_bytes"))
        if r.get("peak_bytes") is not None and r.get("peak_n", r["n"]) != r["n"]:
            mem += f" (at N={fmt_n(r['peak_n'])})"
        lines.append(
            f"| {fmt_n(r['n'])} | {r['name']} | {fmt_time(r['median_s'])} "
            f"| {spread} | {ratio} | {r['ns_per_item']:.0f} | {mem} | {r['repeats']} |")
    return "\n".join(lines)


def sweep_table(sweep):
    """The window sweep as a Markdown table: one row per window, one column per engine."""
    engines = [e for e in LOCKSTEP_ENGINES if any(r["engine"] == e for r in sweep)]
    cell = {(r["engine"], r["window"]): r for r in sweep}
    lines = ["| window | " + " | ".join(f"{e} median (ns/item)" for e in engines) + " |",
             "|---:|" + "---:|" * len(engines)]
    for window in SWEEP_WINDOWS:
        cells = []
        for engine in engines:
            r = cell.get((engine, window))
            if r is None:
                cells.append("")
            elif "skipped" in r:
                cells.append(f"skipped ({r['skipped']})")
            else:
                cells.append(f"{fmt_time(r['median_s'])} ({r['ns_per_item']:.0f})")
        lines.append(f"| {window} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model():
    """The CPU model name from /proc/cpuinfo, or platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(lockstep):
    """Where and with what these numbers were measured."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.replace("\n", " "),
        "python_executable": sys.executable,
        "greenlet": getattr(A.greenlet, "__version__", None),
        "uvloop": getattr(A.uvloop, "__version__", None),
        "lockstep": None if lockstep is None else {
            "file": getattr(lockstep, "__file__", None),
            "version": getattr(lockstep, "__version__", None)},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def parse_args(argv):
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="only N=10**4, fewer repeats (well under a minute)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--pythonpath", metavar="DIR", action="append", default=[],
                   help="prepend DIR to sys.path before importing lockstep (repeatable)")
    p.add_argument("--window-sweep", action="store_true",
                   help="also time lockstep at N=10**6 for windows 1..65536 on each engine")
    p.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")],
                   help="comma-separated N values (default 1e4,1e6; --quick: 1e4)")
    p.add_argument("--repeats", type=int, help="timed runs per row (default 7; --quick: 5)")
    p.add_argument("--budget", type=float, dest="budget_s",
                   help="seconds of timed runs per row before cutting repeats (default 8; --quick: 1)")
    p.add_argument("--max-est", type=float, default=20.0,
                   help="skip a row whose single run is estimated above this many seconds")
    p.add_argument("--mem-max", type=float, default=6.0, dest="mem_max_s",
                   help="seconds a tracemalloc run may take before it uses a smaller N")
    p.add_argument("--no-memory", action="store_true", help="skip the tracemalloc runs")
    p.add_argument("--no-python", action="store_true",
                   help="only the lockstep rows (the buffer baseline still runs)")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [10 ** 4] if args.quick else [10 ** 4, 10 ** 6]
    if args.repeats is None:
        args.repeats = 5 if args.quick else 7
    if args.budget_s is None:
        args.budget_s = 1.0 if args.quick else 8.0
    if tracemalloc is None:
        args.no_memory = True
    args.slow_s = 1.0       # rows estimated slower than this skip the warm-up
    args.sweep_repeats = 3
    return args


def main(argv=None):
    """Run the benchmark and print the tables."""
    cfg = parse_args(argv)
    t_start = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    lockstep, note = try_import_lockstep(cfg.pythonpath)
    notes = [note] if note else []
    rows = python_rows()
    if cfg.no_python:
        rows = rows[:1]
    if lockstep is not None:
        rows += lockstep_rows(lockstep)
    for row in rows:
        if row.unavailable:
            notes.append(f"{row.name}: skipped, {row.unavailable}")
    log(f"python {platform.python_version()} ({sys.executable}); sizes {cfg.sizes}")
    results = bench_rows(rows, cfg.sizes, cfg, log)
    sweep = []
    if cfg.window_sweep:
        if lockstep is None:
            notes.append("window sweep skipped: lockstep not importable")
        else:
            sweep = window_sweep(lockstep, 10 ** 6, cfg, log)
            base = [r["median_s"] for r in results
                    if r["n"] == 10 ** 6 and r["name"] == rows[0].name and "median_s" in r]
            for rec in sweep:  # ratio to the Python buffer baseline, when it ran at 10**6
                if base and "median_s" in rec:
                    rec["ratio"] = rec["median_s"] / base[0]
    total = time.perf_counter() - t_start

    info = machine_info(lockstep)
    print("## Python: (sum, max) over one iter(range(N))\n")
    print(f"{info['cpu_model']} x{info['cpu_count']}, {info['platform']}, "
          f"Python {platform.python_version()}, greenlet {info['greenlet']}, "
          f"uvloop {info['uvloop']}, {info['date']}\n")
    print(markdown_table(results))
    print("\nratio = median / median of `buffer: list(it)` at the same N; "
          "peak mem = tracemalloc peak in a separate untimed run (at a smaller N "
          "where noted, for rows too slow to trace at full N).")
    if sweep:
        print(f"\n### lockstep window sweep, N={fmt_n(10 ** 6)}\n")
        print(sweep_table(sweep))
    for note in notes:
        print(f"\nNote: {note}")
    print(f"\n(total {total:.0f} s)")

    if cfg.json:
        doc = {
            "suite": "python",
            "machine": info,
            "config": {"sizes": cfg.sizes, "repeats": cfg.repeats, "budget_s": cfg.budget_s,
                       "max_est_s": cfg.max_est, "mem_max_s": cfg.mem_max_s,
                       "quick": cfg.quick,
                       "consumers": ["sum", "max"], "data": "iter(range(N))"},
            "rows": results,
            "window_sweep": sweep,
            "notes": notes,
            "total_s": total,
        }
        with open(cfg.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        log(f"wrote {cfg.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
