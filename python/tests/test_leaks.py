"""test_leaks.py: 10**4 runs, failing ones included, leave nothing behind.

Object counts (len(gc.get_objects())), the reference counts of items and
results, and tracemalloc's traced memory stay flat across many runs of
run() and Stream on every engine, and (greenlet) across runs whose source
runs in a consumer's greenlet.
"""
import contextvars
import gc
import sys

import pytest

from conftest import PYPY, Boom, no_refcounts

import lockstep

# Every test here counts references: on PyPy they skip, and so do the leak
# checks other files build on assert_flat, but not those files' other tests
# (a module-level skip here skipped every file that imports from it).
pytestmark = no_refcounts

RUNS = 10_000


ITEM = object()
RESULT = object()


def fails_at_3(it):
    for i, _ in enumerate(it):
        if i == 3:
            raise Boom()


def source(n, fail=False):
    for i in range(n):
        if fail and i == n // 2:
            raise Boom("src")
        yield ITEM


def one_round(engine, k):
    """One run of a kind picked by k; returns nothing, swallows Boom."""
    kind = k % 5
    try:
        if kind == 0:
            lockstep.run(source(20), list, lambda it: RESULT, window=3, engine=engine)
        elif kind == 1:
            lockstep.run(source(20), sum and len, fails_at_3, window=1, engine=engine)
        elif kind == 2:
            lockstep.run(source(20, fail=True), list, window=4, engine=engine)
        elif kind == 3:
            with lockstep.Stream(list, lambda it: next(it), window=2, engine=engine) as st:
                st.extend(source(10))
        else:
            with lockstep.Stream(list, fails_at_3, engine=engine) as st:
                st.extend(source(10))
    except (Boom, TypeError):
        pass


def assert_flat(one, engine, warmup, runs):
    """Runs one(engine, k) warmup times, then runs times under tracemalloc,
    and asserts that object counts, the refcounts of ITEM and RESULT, and
    traced memory stayed flat.  Skips on PyPy, which has neither."""
    if PYPY:
        pytest.skip("PyPy has no reference counts or tracemalloc to check")
    import tracemalloc  # here: PyPy lacks its C half
    for k in range(warmup):
        one(engine, k)
    gc.collect()
    objects = len(gc.get_objects())
    item_refs, result_refs = sys.getrefcount(ITEM), sys.getrefcount(RESULT)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(runs):
            one(engine, k)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    gc.collect()
    assert sys.getrefcount(ITEM) == item_refs
    assert sys.getrefcount(RESULT) == result_refs
    assert len(gc.get_objects()) - objects < 50
    assert after - before < 64 * 1024, (before, after)


@pytest.mark.parametrize("runs", [RUNS])
def test_no_leaks(engine, runs):
    runs = runs if engine != "thread" else runs // 5  # threads cost ~100 us each
    assert_flat(one_round, engine, 200, runs)


COUNTER = contextvars.ContextVar("lockstep_leak_counter")


def refill_round(engine, k):
    """Runs whose source runs in a consumer's greenlet (greenlet engine):
    failing there, setting a ContextVar, switching to the caller's greenlet,
    feeding a nested run, calling run() itself; consumers handling an
    exception meanwhile."""
    import greenlet
    caller = greenlet.getcurrent()

    def source(n, fail=None, setvar=False, echo=False):
        for i in range(n):
            if i == fail:
                raise Boom("src")
            if setvar:
                COUNTER.set(i)
            if echo:
                caller.switch(ITEM)
            yield ITEM

    def in_except(it):
        try:
            raise KeyError("handled")
        except KeyError:
            return list(it)

    if k % 2:  # in a context of its own, which a leaked reference would keep
        return contextvars.copy_context().run(refill_kind, k // 2 % 6, engine, source, in_except)
    return refill_kind(k // 2 % 6, engine, source, in_except)


def refill_kind(kind, engine, source, in_except):
    try:
        if kind == 0:
            lockstep.run(source(20, fail=9), list, list, window=1, engine=engine)
        elif kind == 1:
            lockstep.run(source(20, setvar=True), list, list, window=2, engine=engine)
        elif kind == 2:
            lockstep.run(source(20, echo=True), list, lambda it: RESULT, window=3, engine=engine)
        elif kind == 3:
            lockstep.run(source(20), lambda it: lockstep.run(it, list, list, engine=engine), list,
                         window=1, engine=engine)
        elif kind == 4:
            lockstep.run((lockstep.run(iter([ITEM]), list, engine=engine) for _ in range(5)),
                         list, list, window=1, engine=engine)
        else:
            lockstep.run(source(30, fail=17), in_except, in_except, window=4, engine=engine)
    except Boom:
        pass


@pytest.mark.skipif("greenlet" not in lockstep.engines(), reason="greenlet unavailable")
def test_no_leaks_when_consumers_refill():
    assert_flat(refill_round, "greenlet", 300, RUNS)
