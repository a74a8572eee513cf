"""Async benchmark: lockstep.arun beside the asyncio ways of doing the same.

Three groups of rows, all measured in one process and one run, so that
their ratios can be compared:

1. ``sum`` and ``max`` as coroutines (``async_sum``, ``async_max`` from
   bench/py_approaches.py, the problem statement's ``asum``/``amax``) over
   ``iter(range(N))``: the Queue(maxsize=1) fan-out of py_approaches under
   asyncio and uvloop, against ``await lockstep.arun(it, asum, amax)``
   (default window and window=1) under asyncio, uvloop and trio.
2. An async generator source of N items into ``sum`` and ``max``:
   ``[x async for x in agen]`` then ``sum``, ``max`` (the baseline) against
   ``lockstep.arun(agen, sum, max)``, and the async tees a user would pick
   instead, ``asyncstdlib.tee`` and ``aioitertools.tee`` (pinned, installed
   into bench/.pydeps by scripts/bench_async_deps.sh), whose buffers grow
   without bound.
3. tracemalloc peaks at N = 10**4 and 10**6.

Every row is timed inside an already running loop (the time of the await
only, no loop start-up), reported as the median of the repeats with the
minimum, and every result is checked.  Ratios are of the minima, which
stay put when other processes share the CPUs.  Output: Markdown on stdout, and
JSON with --json PATH.

    /usr/bin/python3 bench/py_async_bench.py --pythonpath python [--quick]
"""

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".pydeps"))
import py_approaches as A  # noqa: E402

try:
    import uvloop
except ImportError:
    uvloop = None
try:
    import trio
except ImportError:
    trio = None


async def agen(n):
    """An async generator of range(n), the async source of group 2."""
    for i in range(n):
        yield i


def loop_runner(name):
    """An asyncio.Runner for 'asyncio' or 'uvloop', or None."""
    if name == "uvloop":
        return asyncio.Runner(loop_factory=uvloop.new_event_loop) if uvloop else None
    return asyncio.Runner()


async def timed(make, repeats):
    """Awaits make() repeats times; returns (times in s, last result)."""
    times, result = [], None
    for _ in range(repeats):
        aw = make()
        gc.collect()
        t0 = time.perf_counter()
        result = await aw
        times.append(time.perf_counter() - t0)
    return times, result


async def peak_of(make):
    """tracemalloc peak (bytes) of one await of make()."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        await make()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def run_on(loop, coro_fn):
    """Runs coro_fn() on loop ('asyncio', 'uvloop' or 'trio')."""
    if loop == "trio":
        return trio.run(coro_fn)
    with loop_runner(loop) as runner:
        return runner.run(coro_fn())


def measure(loop, make, repeats, want, with_peak):
    """Times make() on loop; returns a row dict (None when loop is missing)."""
    if (loop == "uvloop" and uvloop is None) or (loop == "trio" and trio is None):
        return None

    async def body():
        await make()  # warm-up
        times, result = await timed(make, repeats)
        peak = await peak_of(make) if with_peak else None
        return times, result, peak
    times, result, peak = run_on(loop, body)
    assert tuple(result) == want, (result, want)
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_b": peak}


def fmt_t(s):
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def fmt_b(b):
    if b is None:
        return ""
    return f"{b / 1024:.1f} KiB" if b < 1 << 20 else f"{b / (1 << 20):.1f} MiB"


def tee_consumer(tee):
    """make() for sum/max as coroutines over tee(agen, 2), run by gather."""
    def make(n):
        async def go():
            a, b = tee(agen(n), 2)
            return await asyncio.gather(A.async_sum(a), A.async_max(b))
        return go()
    return make


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pythonpath", help="directory holding the lockstep package")
    ap.add_argument("--quick", action="store_true", help="few repeats, N = 10**4 only")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    if args.pythonpath:
        sys.path.insert(0, os.path.abspath(args.pythonpath))
    import lockstep

    reps = 3 if args.quick else 7
    big = [] if args.quick else [10**6]
    asum, amax = A.async_sum, A.async_max
    rows = []

    def add(group, name, loop, n, make, want, repeats=reps, peak=True):
        r = measure(loop, lambda: make(n), repeats, want, peak)
        if r is None:
            print(f"  skipped {name} ({loop} not installed)", file=sys.stderr)
            return
        r.update(group=group, name=name, loop=loop, n=n)
        rows.append(r)
        print(f"  {name:<48} {loop:<8} N={n:<8} {fmt_t(r['median_s'])}  {fmt_b(r['peak_b'])}",
              file=sys.stderr)

    # 1. asum/amax over iter(range(N)).
    for n in [10**4] + big:
        want = (sum(range(n)), n - 1)
        if n <= 10**4:
            for loop in ("asyncio", "uvloop"):
                add(1, "Queue(1) fan-out (py_approaches)", loop, n,
                    lambda n: A._fan_out(iter(range(n)), (asum, amax)), want, repeats=3)
        for loop in ("asyncio", "uvloop", "trio"):
            add(1, "lockstep.arun, default window", loop, n,
                lambda n: lockstep.arun(iter(range(n)), asum, amax), want)
            add(1, "lockstep.arun, window=1", loop, n,
                lambda n: lockstep.arun(iter(range(n)), asum, amax, window=1), want)

    # 2. An async generator into sum and max.
    async def collect(n):
        items = [x async for x in agen(n)]
        return sum(items), max(items)
    for n in [10**4] + big:
        want = (sum(range(n)), n - 1)
        add(2, "[x async for x in agen] then sum, max", "asyncio", n, collect, want)
        add(2, "lockstep.arun(agen, sum, max)", "asyncio", n,
            lambda n: lockstep.arun(agen(n), sum, max), want)
        add(2, "lockstep.arun(agen, asum, amax)", "asyncio", n,
            lambda n: lockstep.arun(agen(n), asum, amax), want)
        for modname in ("asyncstdlib", "aioitertools"):
            if modname == "aioitertools" and n > 10**4:
                continue  # about 0.2 ms per item here: minutes at 10**6
            try:
                mod = __import__(modname)
            except ImportError:
                print(f"  skipped {modname}.tee (run scripts/bench_async_deps.sh)",
                      file=sys.stderr)
                continue
            add(2, f"{modname}.tee + gather(asum, amax)", "asyncio", n,
                tee_consumer(mod.tee), want, repeats=3)

    by = {(r["group"], r["name"], r["loop"], r["n"]): r for r in rows}

    def ratio(a, b):
        # From the minima: on a loaded machine they are the stable figure.
        ra, rb = by.get(a), by.get(b)
        return ra["min_s"] / rb["min_s"] if ra and rb else None

    out = ["| approach | loop | N | median | min | peak memory (tracemalloc) | ratio |",
           "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        key = (r["group"], r["name"], r["loop"], r["n"])
        note = ""
        if r["group"] == 1 and r["name"].startswith("lockstep"):
            for base in ("asyncio", "uvloop"):
                x = ratio((1, "Queue(1) fan-out (py_approaches)", base, 10**4),
                          (1, r["name"], r["loop"], 10**4)) if r["n"] == 10**4 else None
                if x:
                    note += f"{x:.0f}x faster than Queue on {base}; "
        if r["group"] == 2 and r["name"] != "[x async for x in agen] then sum, max":
            x = ratio(key, (2, "[x async for x in agen] then sum, max", "asyncio", r["n"]))
            note = f"{x:.2f}x the collect-then-compute time" if x else ""
        out.append(f"| {r['name']} | {r['loop']} | {r['n']:.0e} | {fmt_t(r['median_s'])} | "
                   f"{fmt_t(r['min_s'])} | {fmt_b(r['peak_b'])} | {note.rstrip('; ')} |")
    print("\n".join(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                       "machine": platform.platform(), "python": sys.version,
                       "load": os.getloadavg(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
