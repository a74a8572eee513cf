"""test_faults.py: lockstep.arun and lockstep.run_bytes under an injected
allocation failure raise MemoryError (RuntimeError for a thread that cannot
be created) and leave nothing behind.

A Python test cannot make malloc fail, so the extension exposes the C
core's fault-injection hook (lockstep__fault_arm, the one
tests/fault_injection.c uses) as the private lockstep._lockstep._fault_arm.
For every engine: a clean run counts the core's acquisitions of each kind
(allocations; threads on the thread engine); then failing each one in turn
must raise MemoryError, and after repeated failing runs object counts,
the refcounts of items and results, and traced memory stay flat
(test_leaks.assert_flat).  A clean run afterwards still gives the right
results.  The arun cases run once more with CPython's MemoryError freelist
emptied on purpose: the binding must still raise MemoryErrors that can be
freed, not CPython 3.12+'s immortal one (see the comment above that test).
"""
import asyncio
import gc

import pytest

import lockstep
from lockstep import _lockstep
from conftest import SYNC_OK, no_refcounts
from test_leaks import ITEM, RESULT, assert_flat

# The core's fault kinds (src/internal.h, LOCKSTEP__FAULT_*).
ALLOC, THREAD = 0, 2


async def acount(it):
    n = 0
    async for x in it:
        assert x is ITEM
        n += 1
    return n


def count(it):
    return sum(1 for x in it if x is ITEM)


# One event loop for every run, as in test_async_leaks.py: a new loop per
# run makes Python 3.9's asyncio allocate (and keep) memory of its own.
LOOP = None


@pytest.fixture(scope="module", autouse=True)
def event_loop():
    global LOOP
    LOOP = asyncio.new_event_loop()
    yield LOOP
    LOOP.close()


def arun_once(engine):
    """One arun over 50 items with an async and (where a greenlet can run
    it: not on PyPy, whose greenlet has no C API) a synchronous consumer;
    returns its results."""
    consumers = (acount, count) if SYNC_OK else (acount, acount)
    return LOOP.run_until_complete(lockstep.arun([ITEM] * 50, *consumers, window=4,
                                                 engine=engine))


def bytes_once(engine):
    """One run_bytes over 3000 bytes in chunks, with two readers."""
    chunks = [b"x" * 1000] * 3
    return lockstep.run_bytes(chunks, lambda r: len(r.read()), lambda r: RESULT, window=64,
                              engine=engine)


def points(fn, engine, kind):
    """Returns how many acquisitions of kind one clean fn(engine) makes."""
    _lockstep._fault_arm(kind, 0)
    fn(engine)
    return _lockstep._fault_arm(kind, 0)


def fail_at(fn, engine, kind, nth):
    """Runs fn(engine) with the nth acquisition of kind failing; asserts
    that it raised MemoryError (a thread that cannot be created is the
    core's LOCKSTEP_ETHREAD, a RuntimeError that says so)."""
    _lockstep._fault_arm(kind, nth)
    try:
        if kind == THREAD:
            with pytest.raises(RuntimeError, match="could not create a thread"):
                fn(engine)
        else:
            with pytest.raises(MemoryError):
                fn(engine)
    finally:
        _lockstep._fault_arm(kind, 0)


CASES = [(arun_once, None, ALLOC), (arun_once, "buffer", ALLOC)]
CASES += [(bytes_once, e, ALLOC) for e in lockstep.engines()]
if "thread" in lockstep.engines():
    CASES.append((bytes_once, "thread", THREAD))
IDS = [f"{fn.__name__}-{engine}-{'alloc' if kind == ALLOC else 'thread'}"
       for fn, engine, kind in CASES]


@pytest.mark.parametrize("fn,engine,kind", CASES, ids=IDS)
def test_every_fault_point_raises_memoryerror(fn, engine, kind):
    expected = fn(engine)
    n = points(fn, engine, kind)
    assert n > 0, "a run acquires something"
    for nth in range(1, n + 1):
        fail_at(fn, engine, kind, nth)
    assert fn(engine) == expected


@pytest.mark.parametrize("fn,engine,kind", CASES, ids=IDS)
def test_fault_points_leak_nothing(fn, engine, kind):
    n = points(fn, engine, kind)

    def one(engine, k):
        fail_at(fn, engine, kind, 1 + k % n)

    assert_flat(one, engine, warmup=20, runs=300)


# CPython 3.12+ keeps 16 MemoryError instances on a freelist and, when it is
# empty, PyErr_NoMemory() raises one static, immortal, untracked MemoryError
# instead of allocating (Objects/exceptions.c, get_memory_error with
# allow_allocation 0).  That instance is never freed and each raise prepends
# the frames it passes to the traceback it already holds, so whatever those
# frames hold (an arun's Task and ARun) lives forever.  A failed arun's
# MemoryError sits in a cycle (Task -> exception -> traceback -> the frame of
# run_until_complete -> Task) until the collector runs, so 16 failures
# between two collections empty the freelist.  The binding therefore raises a
# MemoryError it allocates for a failure of the core (pyls_raise_nomemory).
# Here the freelist is emptied on purpose by holding 16 MemoryError() (which
# take their instances from it), so every failing run below would get the
# static instance if the binding raised it.
@no_refcounts
@pytest.mark.parametrize("fn,engine,kind", CASES[:2], ids=IDS[:2])
def test_arun_failures_leak_nothing_with_memoryerror_freelist_empty(fn, engine, kind):
    held = [MemoryError() for _ in range(16)]
    n = points(fn, engine, kind)
    seen = []

    def one(engine, k):
        _lockstep._fault_arm(kind, 1 + k % n)
        try:
            fn(engine)
        except MemoryError as e:
            # Tracked by the collector, so not CPython's static instance.
            seen.append(gc.is_tracked(e))
        else:
            raise AssertionError("no MemoryError")
        finally:
            _lockstep._fault_arm(kind, 0)

    assert_flat(one, engine, warmup=20, runs=100)
    assert seen == [True] * 120
    del held


def test_fault_arm_refuses_unknown_kind():
    with pytest.raises(ValueError):
        _lockstep._fault_arm(99, 0)
