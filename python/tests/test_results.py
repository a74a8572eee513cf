"""test_results.py: lockstep.run gives what each consumer gives on its own copy.

Every engine, windows 1, 2, 7 and default, a zoo of consumers: builtins,
collections.Counter, statistics.mean, functools.partial(heapq.nlargest),
lambdas and generator-based functions; plus the Stream push side.
"""
import collections
import functools
import heapq
import itertools
import statistics

import pytest

import lockstep


def first_three(it):
    return list(itertools.islice(it, 3))


def running_max_gen(it):
    """A generator-based consumer: consumes through a generator pipeline."""
    def evens(xs):
        for x in xs:
            if x % 2 == 0:
                yield x
    best = None
    for x in evens(it):
        best = x if best is None else max(best, x)
    return best


CONSUMERS = [sum, max, min, sorted, set, list, any, all, next, lambda it: sum(1 for _ in it),
             collections.Counter, statistics.mean, functools.partial(heapq.nlargest, 10),
             first_three, running_max_gen, lambda it: [x * 2 for x in it if x % 3]]


def data():
    return [(i * 7919) % 1009 - 300 for i in range(1, 2000)]


def expected(consumers, items):
    return tuple(c(iter(list(items))) for c in consumers)


def test_the_example():
    assert lockstep.run(iter(range(1, 1000)), sum, max) == (499500, 999)


def test_every_consumer_kind(engine, window):
    items = data()
    got = lockstep.run(iter(items), *CONSUMERS, window=window, engine=engine)
    assert got == expected(CONSUMERS, items)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 6, 7, 8, 255, 256, 257, 1023, 1024, 1025])
def test_lengths_around_windows(engine, window, n):
    items = list(range(n))
    cons = [sum, list, lambda it: next(it, "empty"), lambda it: max(it, default=None)]
    assert lockstep.run(iter(items), *cons, window=window, engine=engine) == expected(cons, items)


def test_no_consumers(engine):
    pulled = []
    src = (pulled.append(x) or x for x in range(10))
    assert lockstep.run(src, engine=engine) == ()
    assert pulled == []


def test_items_are_the_same_objects(engine, window):
    items = [object() for _ in range(50)]
    a, b = lockstep.run(iter(items), list, list, window=window, engine=engine)
    assert all(x is y is z for x, y, z in zip(a, b, items))


def test_iterable_not_only_iterator(engine):
    assert lockstep.run(range(10), sum, lambda it: len(list(it)), engine=engine) == (45, 10)


def test_default_engine_is_first_available():
    assert lockstep.engines()[0] in ("greenlet", "thread", "buffer")
    assert lockstep.run([1, 2], sum) == (3,)


def test_stream_results_match(engine, window):
    items = data()
    with lockstep.Stream(*CONSUMERS, window=window, engine=engine) as st:
        for x in items[:100]:
            st.push(x)
        st.extend(items[100:])
    assert st.results == expected(CONSUMERS, items)
    assert st.closed and st.live == 0


def test_stream_close_returns_results(engine):
    st = lockstep.Stream(sum, max, engine=engine)
    assert st.live == 2
    assert st.extend(range(1, 1000)) == 2
    assert st.close() == (499500, 999)
    assert st.close() == (499500, 999)
    assert st.results == (499500, 999)


def test_thread_strict_three_consumers_no_lost_wakeup():
    """Regression: three consumers at window=1 on the thread engine once
    lost a wake-up in the core and hung (the watchdog turns a hang into a
    failure)."""
    assert lockstep.run(iter(range(20000)), sum, max, min, window=1, engine="thread") == (
        sum(range(20000)), 19999, 0)
