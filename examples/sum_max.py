"""sum_max.py: the original question, answered in Python.

Given an iterator that can be read only once, iter(range(1, 1000)), and two
ordinary consumers, sum and max, get both results in one pass without
buffering the stream.  Then time lockstep against the usual answers on the
same machine, in the same run.

    PYTHONPATH=python /usr/bin/python3 examples/sum_max.py
"""
import itertools
import statistics
import timeit

import lockstep

total, largest = lockstep.run(iter(range(1, 1000)), sum, max)
print(f"lockstep.run(iter(range(1, 1000)), sum, max) = ({total}, {largest})")


def buffer(n):
    """The usual answer: store everything, then run each consumer."""
    items = list(iter(range(n)))
    return sum(items), max(items)


def tee(n):
    """itertools.tee: the same buffering, hidden inside the tee."""
    a, b = itertools.tee(iter(range(n)))
    return sum(a), max(b)


def median_seconds(fn, repeat=7):
    """Median wall time of fn() over repeat runs, after one warm-up."""
    fn()
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeat))


N = 10_000
rows = [("buffer: list(it), then sum, max", lambda: buffer(N)),
        ("itertools.tee", lambda: tee(N))]
for engine in lockstep.engines():
    rows.append((f"lockstep, {engine}, default window",
                 lambda e=engine: lockstep.run(iter(range(N)), sum, max, engine=e)))
rows.append(("lockstep, greenlet, window=1 (strict)"
             if "greenlet" in lockstep.engines() else "lockstep, window=1 (strict)",
             lambda: lockstep.run(iter(range(N)), sum, max, window=1)))

base = None
print(f"\nsum and max of range({N}), median of 7 runs:")
print(f"  {'approach':42} {'time':>10} {'vs buffer':>10}")
for name, fn in rows:
    t = median_seconds(fn)
    base = base or t
    print(f"  {name:42} {t * 1e3:8.3f} ms {t / base:9.2f}x")
