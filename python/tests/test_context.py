"""test_context.py: consumers see the caller's context (contextvars, decimal).

The rule (docs/API.md, issue 14), for run() and Stream, every engine and
window: each consumer runs in its own copy of the caller's context, taken
when run() is called or the Stream is created, as an asyncio task or
asyncio.to_thread does.  It sees every ContextVar the caller set and the
caller's decimal context; its own ContextVar.set() calls stay its own.  The
source always runs in the caller's context itself, whichever greenlet or
thread calls it, so a generator source reads the caller's variables and
its set() calls reach the caller, as they would in a plain for loop.
"""
import contextvars
import decimal
from decimal import Decimal

import pytest

import lockstep

VAR = contextvars.ContextVar("lockstep_test_var", default="default")
N = 50
WINDOWS = [1, 3, None]


@pytest.fixture(params=WINDOWS, ids=lambda w: f"w{w}")
def ctx_window(request):
    return request.param


def reading_source(n, seen):
    """A generator that records VAR on every item it produces."""
    for i in range(n):
        seen.append(VAR.get())
        yield i


def reader(it):
    """A consumer returning the set of VAR values it saw, per item and at the end."""
    seen = {VAR.get()}
    for _ in it:
        seen.add(VAR.get())
    seen.add(VAR.get())
    return seen


def setter(value):
    """A consumer that sets VAR at once and checks it keeps its own value."""
    def consumer(it):
        VAR.set(value)
        seen = set()
        for _ in it:
            seen.add(VAR.get())
        seen.add(VAR.get())
        return seen
    return consumer


def in_fresh_context(fn):
    """Runs fn in a fresh copy of the test's context, so no test leaks VAR."""
    return contextvars.copy_context().run(fn)


def precision(prec):
    """decimal.localcontext(prec=prec), which needs Python 3.11: the current
    context's copy with prec set, entered by the with statement."""
    ctx = decimal.getcontext().copy()
    ctx.prec = prec
    return decimal.localcontext(ctx)


def test_consumers_and_source_see_the_callers_var(engine, ctx_window):
    def body():
        VAR.set("caller")
        seen_by_source = []
        results = lockstep.run(reading_source(N, seen_by_source), reader, reader,
                               window=ctx_window, engine=engine)
        assert results == ({"caller"}, {"caller"})
        assert seen_by_source == ["caller"] * N
    in_fresh_context(body)


def test_a_consumers_set_stays_its_own(engine, ctx_window):
    def body():
        VAR.set("caller")
        seen_by_source = []
        results = lockstep.run(reading_source(N, seen_by_source), setter("a"), reader,
                               setter("c"), window=ctx_window, engine=engine)
        assert results == ({"a"}, {"caller"}, {"c"})
        # The source is called from the consumers' greenlets on the greenlet
        # engine: it must still see the caller's value, never a consumer's.
        assert seen_by_source == ["caller"] * N
        assert VAR.get() == "caller"
    in_fresh_context(body)


def test_the_sources_set_is_the_callers(engine, ctx_window):
    """As in a for loop over the generator: its set() reaches the caller;
    consumers, which copied the context at run(), keep the value they saw."""
    def source():
        VAR.set("source")
        for i in range(N):
            assert VAR.get() == "source"
            yield i

    def body():
        VAR.set("caller")
        assert lockstep.run(source(), reader, window=ctx_window, engine=engine) == ({"caller"},)
        assert VAR.get() == "source"
    in_fresh_context(body)


def test_a_var_the_caller_never_set(engine, ctx_window):
    def body():
        assert lockstep.run(iter(range(N)), reader, setter("x"), window=ctx_window,
                            engine=engine) == ({"default"}, {"x"})
        assert VAR.get() == "default"
    in_fresh_context(body)


def test_the_issues_decimal_example(engine):
    """Issue 14's example.  (The issue says Decimal('3.7037'); sum rounds after
    every addition, and gives Decimal('3.7038').  What matters is that run()
    gives what sum() gives, at 5 digits, not the 28-digit default context's
    Decimal('3.70370367').)"""
    ds = [decimal.Decimal("1.23456789")] * 3
    with decimal.localcontext() as c:
        c.prec = 5
        plain = sum(ds, decimal.Decimal(0))
        result = lockstep.run(iter(ds), lambda it: sum(it, decimal.Decimal(0)), engine=engine)
        assert result == (plain,)
        assert len(result[0].as_tuple().digits) == 5


def test_decimal_sums_equal_plain_sums(engine, ctx_window):
    ds = [Decimal(1) / Decimal(7 + i) for i in range(N)]

    def dsum(it):
        return sum(it, Decimal(0))

    def prec(it):
        for _ in it:
            pass
        return decimal.getcontext().prec

    with precision(5):
        expected = sum(ds, Decimal(0))
        assert lockstep.run(iter(ds), dsum, prec, dsum, window=ctx_window,
                            engine=engine) == (expected, 5, expected)
    with precision(40):
        assert lockstep.run(iter(ds), dsum, window=ctx_window,
                            engine=engine) == (sum(ds, Decimal(0)),)


def test_a_consumers_localcontext_stays_its_own(engine, ctx_window):
    """The way to change decimal settings in a consumer: decimal.localcontext.
    (decimal.getcontext() returns the caller's Context object itself, as in an
    asyncio task, so mutating it in place would reach the caller.)"""
    def narrow(it):
        with precision(3):
            return sum(it, Decimal(0))

    ds = [Decimal("1.23456789")] * 3
    with precision(3):
        narrow_sum = sum(ds, Decimal(0))
    with precision(5):
        wide_sum = sum(ds, Decimal(0))
        assert narrow_sum != wide_sum
        assert lockstep.run(iter(ds), narrow, lambda it: sum(it, Decimal(0)),
                            window=ctx_window, engine=engine) == (narrow_sum, wide_sum)
        assert decimal.getcontext().prec == 5


def test_stream_consumers_copy_the_context_at_creation(engine, ctx_window):
    def body():
        VAR.set("caller")
        s = lockstep.Stream(reader, setter("b"), window=ctx_window, engine=engine)
        # Later changes by the caller are its own, as for an asyncio task.
        VAR.set("later")
        for i in range(N):
            s.push(i)
            assert VAR.get() == "later"
        assert s.close() == ({"caller"}, {"b"})
        assert VAR.get() == "later"
    in_fresh_context(body)


def test_stream_extend_reads_the_callers_context(engine, ctx_window):
    def body():
        VAR.set("caller")
        seen_by_source = []
        with lockstep.Stream(setter("a"), reader, window=ctx_window, engine=engine) as s:
            s.extend(reading_source(N, seen_by_source))
        assert s.results == ({"a"}, {"caller"})
        assert seen_by_source == ["caller"] * N
        assert VAR.get() == "caller"
    in_fresh_context(body)


def test_nested_runs_copy_the_consumers_context(engine):
    """A run inside a consumer copies that consumer's context."""
    def outer(it):
        VAR.set("outer")
        inner = lockstep.run(iter(range(5)), reader, setter("inner"), engine=engine)
        return inner, reader(it)

    def body():
        VAR.set("caller")
        ((inner_seen, inner_set), outer_seen), plain = lockstep.run(
            iter(range(N)), outer, reader, engine=engine)
        assert inner_seen == {"outer"} and inner_set == {"inner"}
        assert outer_seen == {"outer"}
        assert plain == {"caller"}
        assert VAR.get() == "caller"
    in_fresh_context(body)
