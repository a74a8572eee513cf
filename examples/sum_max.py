"""sum_max.py: the original question, answered in Python.

Given an iterator that can be read only once, iter(range(1, 1000)), and two
ordinary consumers, sum and max, get both results in one pass without
buffering the stream.  Then compare lockstep with the usual answers on the
same machine, in the same run, at a million items: time (median of 3 runs)
and peak memory (tracemalloc, in a separate untimed run).  list and tee hold
the whole stream; lockstep holds one window, however long the stream is.

    PYTHONPATH=python /usr/bin/python3 examples/sum_max.py
"""
import itertools
import statistics
import timeit
import tracemalloc

import lockstep

total, largest = lockstep.run(iter(range(1, 1000)), sum, max)
print(f"lockstep.run(iter(range(1, 1000)), sum, max) = ({total}, {largest})")

N = 1_000_000
EXPECTED = (N * (N - 1) // 2, N - 1)


def buffer():
    """The usual answer: store everything, then run each consumer."""
    items = list(iter(range(N)))
    return sum(items), max(items)


def tee():
    """itertools.tee: the same buffering, hidden inside the tee."""
    a, b = itertools.tee(iter(range(N)))
    return sum(a), max(b)


def with_lockstep(**options):
    """lockstep.run over a fresh one-shot iterator, with these options."""
    return lambda: lockstep.run(iter(range(N)), sum, max, **options)


def median_seconds(fn, repeat=3):
    """Median wall time of fn() over repeat runs, after one warm-up."""
    fn()
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeat))


def peak_bytes(fn):
    """Peak memory traced by tracemalloc during one run of fn, which must
    return the right answer."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result == EXPECTED, result
    return peak


def human(nbytes):
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB"):
        if nbytes < 1024 or unit == "MiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


engines = lockstep.engines()
rows = [("list(it), then sum, then max", buffer),
        ("itertools.tee", tee)]
for engine in engines:
    if engine != "buffer":  # the buffer engine is list(it) again
        rows.append((f"lockstep, {engine}, default window", with_lockstep(engine=engine)))
if "greenlet" in engines:  # strict on threads costs seconds here
    rows.append(("lockstep, greenlet, window=1 (strict)", with_lockstep(engine="greenlet", window=1)))

print(f"\nsum and max of iter(range({N:,})): median of 3 runs, and peak memory")
print(f"  {'approach':40} {'time':>10} {'vs list':>8} {'peak memory':>12}")
peaks = []
for name, fn in rows:
    t, peak = median_seconds(fn), peak_bytes(fn)
    base = base if peaks else t  # the list row comes first
    peaks.append(peak)
    print(f"  {name:40} {t * 1e3:7.1f} ms {t / base:7.2f}x {human(peak):>12}")

print(f"\nlist and tee hold the whole stream: {human(peaks[0])} and {human(peaks[1])}.")
if len(rows) > 2:  # rows[2] is what engine=None picks, at the default window
    print(f"lockstep holds one window: {human(peaks[2])} ({rows[2][0].split(', ', 1)[1]}), "
          f"however long the stream.")
if "greenlet" not in engines:
    print("(no greenlet engine here; lockstep.build_info() says why)")
