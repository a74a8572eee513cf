"""test_misuse.py: bad input, nesting, and misuse that must raise, never crash.

Bad input raises before any item is pulled (TypeError, ValueError,
ImportError for a missing greenlet, checked in a subprocess).  A consumer
may itself call lockstep.run.  An iterator works only inside its own
consumer: after the run, from another thread, or from another consumer it
raises RuntimeError.  Stream refuses re-entrant and foreign-thread use.
"""
import subprocess
import sys
import threading
import time

import pytest

import lockstep
from conftest import ENGINES, lockstep_path


class Watched:
    """An iterable whose iterator records whether anything was pulled."""

    def __init__(self):
        self.pulled = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.pulled += 1
        return 1


@pytest.mark.parametrize("kwargs, exc", [
    (dict(consumers=(sum, 3)), TypeError),
    (dict(consumers=(sum, "max")), TypeError),
    (dict(window=0), ValueError),
    (dict(window=-5), ValueError),
    (dict(window=1 << 40), ValueError),
    (dict(window=2.5), TypeError),
    (dict(engine="fiber"), ValueError),
    (dict(engine="nope"), ValueError),
    (dict(engine=3), TypeError),
])
def test_bad_input_before_any_pull(kwargs, exc):
    src = Watched()
    consumers = kwargs.pop("consumers", (sum,))
    with pytest.raises(exc):
        lockstep.run(src, *consumers, **kwargs)
    with pytest.raises(exc):
        lockstep.Stream(*consumers, **kwargs)
    assert src.pulled == 0


def test_non_iterable_source():
    with pytest.raises(TypeError):
        lockstep.run(42, sum)
    with pytest.raises(TypeError):
        lockstep.run()
    with pytest.raises(TypeError):
        lockstep.run([1], sum, bogus=1)


BLOCKED = ("import sys; sys.modules['greenlet'] = None; sys.path.insert(0, {path!r}); "
           "import lockstep; ")


def run_blocked(code):
    return subprocess.run([sys.executable, "-c", BLOCKED.format(path=lockstep_path()) + code],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not lockstep.HAVE_GREENLET_ENGINE,
                    reason="this build has no greenlet engine: see the test below")
def test_greenlet_engine_without_greenlet_is_a_clear_import_error():
    r = run_blocked("lockstep.run([1], sum, engine='greenlet')")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "needs the greenlet package" in r.stderr


@pytest.mark.skipif(lockstep.HAVE_GREENLET_ENGINE, reason="this build has the greenlet engine")
def test_greenlet_engine_not_built_is_a_clear_import_error():
    # PyPy, or a CPython build without greenlet's C header
    with pytest.raises(ImportError, match="pass engine='thread'"):
        lockstep.run([1], sum, engine="greenlet")
    assert "greenlet" not in lockstep.engines()


def test_default_engine_without_greenlet_falls_back():
    r = run_blocked("print(lockstep.engines()[0], lockstep.run(iter(range(1, 1000)), sum, max))")
    assert r.returncode == 0, r.stderr
    want = "thread" if "thread" in ENGINES else "buffer"
    assert r.stdout.split() == [want, "(499500,", "999)"]


def test_nested_runs(engine, window):
    def inner(it):
        # each item of the outer stream is a row; sum the rows with a nested run
        return [lockstep.run(iter(row), sum, max, window=window, engine=e)
                for row, e in zip(it, ENGINES * 100)]
    rows = [list(range(i, i + 5)) for i in range(20)]
    got = lockstep.run(iter(rows), inner, lambda it: sum(1 for _ in it),
                       window=window, engine=engine)
    assert got == ([(sum(r), max(r)) for r in rows], 20)


def test_iterator_after_run_raises(engine):
    (it,) = lockstep.run(iter(range(10)), lambda it: it, engine=engine)
    with pytest.raises(RuntimeError, match="after its consumer returned"):
        next(it)
    assert not it.active
    (it2, _) = lockstep.run(iter(range(10)), lambda it: (next(it), it)[1], sum, engine=engine)
    with pytest.raises(RuntimeError):
        list(it2)


def test_iterator_from_another_thread_raises(engine):
    errors = []

    def consumer(it):
        next(it)

        def other():
            try:
                next(it)
            except RuntimeError as e:
                errors.append(e)
        t = threading.Thread(target=other)
        t.start()
        t.join()
        return sum(it)

    assert lockstep.run(iter(range(100)), consumer, engine=engine) == (sum(range(1, 100)),)
    assert len(errors) == 1 and "outside its own consumer" in str(errors[0])


def test_iterator_of_another_consumer_raises(engine, window):
    box = {}

    def a(it):
        box["a"] = it
        return sum(it)

    def b(it):
        while "a" not in box:  # thread engine: a runs concurrently
            time.sleep(0.001)
        try:
            next(box["a"])
        except RuntimeError as e:
            box["error"] = e
        return sum(it)

    assert lockstep.run(iter(range(100)), a, b, window=window, engine=engine) == (4950, 4950)
    assert isinstance(box["error"], RuntimeError)  # "outside its own consumer" or, buffer: "after"


def test_outer_iterator_from_nested_consumer_raises(engine):
    box = {}

    def outer(it):
        def inner(inner_it):
            try:
                next(it)  # the outer consumer's iterator, from an inner consumer
            except RuntimeError as e:
                box["error"] = e
            return sum(inner_it)
        first = lockstep.run(iter(range(5)), inner, engine=engine)
        return first, sum(it)

    assert lockstep.run(iter(range(10)), outer, engine=engine) == (((10,), 45),)
    assert isinstance(box["error"], RuntimeError)


def test_misuse_messages_name_the_object_and_the_misuse(engine):
    """The exact texts, built by one helper for run()'s Iterator and
    run_bytes's reader: used after its consumer returned, and used from a
    nested run's consumer while its own still runs."""
    def used_from_nested(run, source, own, use):
        def inner(_):
            try:
                use(own)
            except RuntimeError as e:
                return str(e)
        return run(source, inner, engine=engine)[0]

    outside = "used outside its own consumer (from another consumer, thread or greenlet)"
    (it, msg) = lockstep.run(
        iter(range(3)),
        lambda it: (it, used_from_nested(lockstep.run, iter(range(2)), it, next)),
        engine=engine)[0]
    assert msg == "lockstep iterator " + outside
    with pytest.raises(RuntimeError) as e:
        next(it)
    assert str(e.value) == "lockstep iterator used after its consumer returned"

    (f, msg) = lockstep.run_bytes(
        [b"abc"],
        lambda f: (f, used_from_nested(lockstep.run_bytes, [b"xy"], f, lambda f: f.read(1))),
        engine=engine)[0]
    assert msg == "lockstep reader " + outside
    with pytest.raises(RuntimeError) as e:
        f.read(1)
    assert str(e.value) == "lockstep reader used after its consumer returned"


def test_misuse_that_escapes_fails_the_run(engine):
    box = {}

    def a(it):
        box["a"] = it
        return sum(it)

    def b(it):
        while "a" not in box:
            time.sleep(0.001)
        return next(box["a"])

    with pytest.raises(RuntimeError):
        lockstep.run(iter(range(100)), a, b, engine=engine)


def test_stream_from_its_own_consumer_raises(engine):
    box = {}

    def consumer(it):
        for x in it:
            try:
                box["st"].push(x)
            except RuntimeError as e:
                box["error"] = e
        return "ok"

    st = lockstep.Stream(consumer, window=1, engine=engine)
    box["st"] = st
    st.extend(range(5))
    assert st.close() == ("ok",)
    assert isinstance(box["error"], RuntimeError)


def test_stream_reentrant_from_source_raises(engine):
    st = lockstep.Stream(sum, engine=engine)

    def src():
        yield 1
        with pytest.raises(RuntimeError, match="re-entrantly"):
            st.push(2)
        yield 3

    st.extend(src())
    assert st.close() == (4,)


def test_stream_from_another_thread_raises(engine):
    st = lockstep.Stream(sum, engine=engine)
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, st.push, 1)))
    t.start()
    t.join()
    assert len(errors) == 1
    assert st.close() == (0,)


def test_stream_closed_raises(engine):
    st = lockstep.Stream(sum, engine=engine)
    st.close()
    with pytest.raises(RuntimeError, match="closed"):
        st.push(1)
    with pytest.raises(RuntimeError):
        st.extend([1])


def test_iterator_cannot_be_made_by_hand():
    # Py_TPFLAGS_DISALLOW_INSTANTIATION from 3.10; a refusing tp_new before
    # (CPython 3.9, PyPy 3.9): the same TypeError everywhere
    with pytest.raises(TypeError, match="cannot create"):
        lockstep.Iterator()
