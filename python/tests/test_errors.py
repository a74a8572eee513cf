"""test_errors.py: which exception wins, cancellation, KeyboardInterrupt.

The exception earliest in the stream propagates with its traceback, from a
consumer or from the source; ties go to the lowest consumer index, and a
consumer failing at position p beats the source failing at p.  Every engine
and window agree.  Other consumers are cancelled: their iterator ends, so
their finally blocks run, and (greenlet) every greenlet finishes.
"""
import gc
import itertools
import os
import subprocess
import traceback

import pytest

import lockstep
from conftest import ENGINES, PYPY, WINDOWS, Boom, fail_at


def fail_before(p, tag="c"):
    """Raises Boom while holding p items (position p), before asking for more."""
    def consumer(it):
        for _ in range(p):
            next(it)
        raise Boom(tag, p)
    return consumer


def source_failing_at(p, n=1000):
    """Yields p items, then raises Boom('src', p)."""
    for i in range(n):
        if i == p:
            raise Boom("src", p)
        yield i


def outcome(fn):
    try:
        return ("ok", fn())
    except Boom as e:
        return ("err", e.args)


CASES = [
    # (source factory, consumers, expected outcome)
    (lambda: iter(range(100)), [fail_at(5, "a"), fail_at(3, "b")], ("err", ("b", 3))),
    (lambda: iter(range(100)), [fail_at(3, "a"), fail_at(3, "b")], ("err", ("a", 3))),
    (lambda: iter(range(100)), [sum, fail_before(3, "b"), fail_at(3, "c")], ("err", ("b", 3))),
    (lambda: source_failing_at(3), [fail_before(3, "a")], ("err", ("a", 3))),
    (lambda: source_failing_at(3), [sum, fail_before(3, "b")], ("err", ("b", 3))),
    (lambda: source_failing_at(3), [fail_before(4, "a")], ("err", ("src", 3))),
    (lambda: source_failing_at(2), [fail_at(3, "a"), sum], ("err", ("src", 2))),
    (lambda: source_failing_at(0), [sum, max], ("err", ("src", 0))),
    (lambda: iter(range(10)), [fail_before(0, "a"), fail_before(0, "b")], ("err", ("a", 0))),
    (lambda: source_failing_at(50), [lambda it: next(it), fail_at(200)], ("err", ("src", 50))),
    (lambda: source_failing_at(50), [lambda it: next(it)], ("ok", (0,))),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_earliest_failure_wins(engine, window, case):
    make_src, consumers, want = CASES[case]
    got = outcome(lambda: lockstep.run(make_src(), *consumers, window=window, engine=engine))
    assert got == want
    # the buffer engine is the oracle: every engine agrees with it
    assert got == outcome(lambda: lockstep.run(make_src(), *consumers, engine="buffer"))


def test_traceback_is_the_consumers(engine):
    def deep(it):
        for x in it:
            if x == 5:
                inner_raise()

    def inner_raise():
        raise Boom("deep")

    with pytest.raises(Boom) as info:
        lockstep.run(iter(range(10)), sum, deep, engine=engine)
    names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "deep" in names and "inner_raise" in names


def test_traceback_is_the_sources(engine):
    with pytest.raises(Boom) as info:
        lockstep.run(source_failing_at(4), sum, engine=engine)
    names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "source_failing_at" in names


def test_others_are_cancelled_and_clean_up(engine, window):
    log = []

    def careful(name):
        def consumer(it):
            try:
                total = 0
                for x in it:
                    total += x
                log.append((name, "ended"))
                return total
            finally:
                log.append((name, "finally"))
        return consumer

    with pytest.raises(Boom):
        lockstep.run(iter(range(1000)), careful("a"), fail_at(10), careful("b"),
                     window=window, engine=engine)
    assert sorted(log) == [("a", "ended"), ("a", "finally"), ("b", "ended"), ("b", "finally")]


@pytest.mark.skipif("greenlet" not in ENGINES, reason="greenlet unavailable")
@pytest.mark.parametrize("w", WINDOWS)
def test_every_greenlet_finishes(w):
    import greenlet
    seen = []

    def record(it):
        seen.append(greenlet.getcurrent())
        return sum(it)

    with pytest.raises(Boom):
        lockstep.run(iter(range(1000)), record, fail_at(10), record, window=w, engine="greenlet")
    assert len(seen) == 2 and all(g.dead for g in seen)
    seen.clear()
    lockstep.run(iter(range(1000)), record, lambda it: next(it), window=w, engine="greenlet")
    assert len(seen) == 1 and all(g.dead for g in seen)


def test_failed_result_is_not_a_tuple_leak(engine):
    # a consumer that raises after being cancelled does not change the outcome
    def raise_after_end(it):
        for _ in it:
            pass
        raise ValueError("after cancellation")

    with pytest.raises(Boom):
        lockstep.run(iter(range(100)), fail_at(5), raise_after_end, window=1, engine=engine)


# PyPy 7.3 sometimes never turns a SIGINT sent from outside into
# KeyboardInterrupt while consumer threads run (about 1 run in 3 here, with
# C or Python consumers): PyPy handles signals in the main thread only.
# The timer-driven interrupts of test_properties.py do arrive on PyPy.
@pytest.mark.skipif(PYPY, reason="PyPy may lose a SIGINT while consumer threads run")
@pytest.mark.parametrize("where", ["c_loop", "python_consumer"])
def test_keyboard_interrupt_stops_cleanly(bounded_engine, where):
    cleaned = []

    def py_consumer(it):
        try:
            for _ in it:
                pass
        finally:
            cleaned.append(True)

    consumers = (sum, max) if where == "c_loop" else (py_consumer, sum)
    # A real SIGINT from another process: with only C code running (sum,
    # max, itertools.count) the main thread never releases the GIL, so a
    # Python timer thread could not even run to send it.
    killer = subprocess.Popen(["sh", "-c", f"sleep 0.3; kill -INT {os.getpid()}"])
    try:
        with pytest.raises(KeyboardInterrupt):
            lockstep.run(itertools.count(), *consumers, engine=bounded_engine)
    finally:
        killer.wait()
    if where == "python_consumer":
        assert cleaned == [True]
    # the module still works afterwards
    assert lockstep.run(iter(range(10)), sum, engine=bounded_engine) == (45,)


def test_exception_types_pass_through(engine):
    for exc in (StopIteration("inner"), GeneratorExit(), SystemExit(3), MemoryError()):
        def bad(it, exc=exc):
            next(it)
            raise exc
        with pytest.raises(type(exc)):
            lockstep.run(iter(range(5)), bad, sum, engine=engine)
    gc.collect()
