"""test_async.py: lockstep.arun under asyncio, uvloop and trio.

Every test that awaits runs once per event loop (the `aloop` fixture).  A
loop whose package is missing is skipped, except under CI=true, where it
fails.  What is checked: results against each consumer run over its own
copy; early exit over an infinite async generator and the pull bound;
errors from the source and from consumers at random positions against a
model, for windows 1, 2, 7 and the default; cancellation from outside at
random points; consumers that await sleep(0) per item; mixed sync/async
consumers; nesting; the problem statement's asum/amax; aiostream's
stream.accumulate; the loop keeps turning; contextvars; misuse.
"""
import asyncio
import collections
import contextvars
import gc
import itertools
import os
import platform
import random
import subprocess
import sys
import warnings

import pytest

import lockstep

from conftest import SYNC_OK, Boom, fail_at as sfail_at, lockstep_path

IN_CI = os.environ.get("CI") == "true"
LOOPS = ["asyncio", "uvloop", "trio"]
WINDOWS = [1, 2, 7, None]
ENGINES = [None, "buffer"]


# Packages that do not exist for this implementation: skipped even in CI.
NOT_FOR_THIS_PYTHON = {"uvloop"} if platform.python_implementation() == "PyPy" else set()


def _need(module):
    """Imports module; a missing one fails in CI (scripts/deps.sh and
    python/requirements-test.txt install them), and skips elsewhere or
    where it cannot exist (uvloop on PyPy)."""
    try:
        return __import__(module)
    except ImportError:
        if IN_CI and module not in NOT_FOR_THIS_PYTHON:
            raise
        pytest.skip(f"{module} is not installed")


def run_loop(name, fn, *args):
    """Runs the async function fn(*args) to completion under loop name."""
    if name == "trio":
        trio = _need("trio")
        return trio.run(fn, *args)
    if name == "uvloop":
        uvloop = _need("uvloop")
        if not hasattr(asyncio, "Runner"):  # before 3.11: what Runner does, by hand
            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                return loop.run_until_complete(fn(*args))
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                asyncio.set_event_loop(None)
                loop.close()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(fn(*args))
    return asyncio.run(fn(*args))


@pytest.fixture(params=LOOPS)
def aloop(request):
    if request.param != "asyncio":
        _need(request.param)
    return request.param


async def sleep0():
    """One loop turn in whichever library runs."""
    import sniffio
    if sniffio.current_async_library() == "trio":
        import trio
        await trio.sleep(0)
    else:
        await asyncio.sleep(0)


# --- The problem statement's consumers, and a few more ------------------

async def asum(it):
    s = 0
    async for x in it:
        s += x
    return s


async def amax(it):
    m = None
    async for x in it:
        if m is None or x > m:
            m = x
    return m


async def alist(it):
    return [x async for x in it]


async def alist_sleepy(it):
    out = []
    async for x in it:
        await sleep0()
        out.append(x)
    return out


def atake(k):
    async def take(it):
        out = []
        if k == 0:
            return out
        async for x in it:
            out.append(x)
            if len(out) == k:
                break
        return out
    return take


def afail_at(p, tag="a"):
    """An async consumer that raises Boom(tag, p) after receiving p items."""
    async def consumer(it):
        i = 0
        async for _ in it:
            i += 1
            if i == p:
                raise Boom(tag, p)
        return "done"
    return consumer


class Counted:
    """An async iterable over range(n) (or forever) that counts its pulls
    and may fail when asked for item q; it records whether it was closed."""

    def __init__(self, n=None, fail=None, sleepy=False):
        self.n, self.fail, self.sleepy = n, fail, sleepy
        self.pulls = 0
        self.closed = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.sleepy:
            await sleep0()
        i = self.pulls
        if self.n is not None and i >= self.n:
            raise StopAsyncIteration
        if self.fail is not None and i == self.fail:
            raise Boom("src", i)
        self.pulls += 1
        return i

    async def aclose(self):
        self.closed = True


async def agen(n, sleepy=False):
    for i in range(n):
        if sleepy:
            await sleep0()
        yield i


# --- Results --------------------------------------------------------------

@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"w{w}")
@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: f"e{e}")
def test_results_async_consumers(aloop, window, engine):
    async def main():
        a = await lockstep.arun(iter(range(1, 1000)), asum, amax, alist, window=window,
                                engine=engine)
        b = await lockstep.arun(agen(300, sleepy=True), asum, alist_sleepy, window=window,
                                engine=engine)
        return a, b
    a, b = run_loop(aloop, main)
    assert a == (499500, 999, list(range(1, 1000)))
    assert b == (sum(range(300)), list(range(300)))


@pytest.mark.skipif(not SYNC_OK, reason="synchronous consumers need greenlet")
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"w{w}")
@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: f"e{e}")
def test_results_mixed(aloop, window, engine):
    words = "a b a c b a".split() * 50

    async def main():
        return await lockstep.arun(Counted(len(words)), sum, asum, collections.Counter, alist,
                                   max, window=window, engine=engine)
    r = run_loop(aloop, main)
    n = len(words)
    assert r == (sum(range(n)), sum(range(n)), collections.Counter(range(n)), list(range(n)),
                 n - 1)


def test_problem_statement(aloop):
    async def main():
        return await lockstep.arun(iter(range(10**4)), asum, amax)
    assert run_loop(aloop, main) == (sum(range(10**4)), 10**4 - 1)


def test_zero_consumers_and_empty_sources(aloop):
    async def main():
        return (await lockstep.arun(agen(5)), await lockstep.arun(agen(0), asum, amax),
                await lockstep.arun([], asum))
    assert run_loop(aloop, main) == ((), (0, None), (0,))


def test_driven_by_hand():
    """Nothing foreign awaited: one send(None) runs the whole run."""
    aw = lockstep.arun(range(100), asum, amax, window=3)
    with pytest.raises(StopIteration) as e:
        aw.send(None)
    assert e.value.value == (4950, 99)
    with pytest.raises(RuntimeError):
        aw.send(None)


def test_aiostream_accumulate(aloop):
    aiostream = _need("aiostream")

    async def main():
        return await lockstep.arun(agen(100), aiostream.stream.accumulate, asum,
                                   lambda it: aiostream.stream.list(it))
    assert run_loop(aloop, main) == (4950, 4950, list(range(100)))


# --- Early exit -----------------------------------------------------------

@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"w{w}")
def test_infinite_async_source_terminates(aloop, window):
    src = Counted()

    async def main():
        return await lockstep.arun(src, atake(3), atake(10), atake(0), window=window)
    r = run_loop(aloop, main)
    assert r == ([0, 1, 2], list(range(10)), [])
    w = window or lockstep.DEFAULT_WINDOW
    assert 10 <= src.pulls <= 10 + w - 1
    assert not src.closed


@pytest.mark.skipif(not SYNC_OK, reason="synchronous consumers need greenlet")
def test_infinite_sync_source_mixed(aloop):
    async def main():
        return await lockstep.arun(itertools.count(), any, atake(5), lambda it: next(it),
                                   window=1)
    assert run_loop(aloop, main) == (True, [0, 1, 2, 3, 4], 0)


# --- Errors against a model -----------------------------------------------

def model(length, src_fail, fails):
    """The winning failure of a run: ('c', index) or ('src',), or None.
    fails[i] is the position at which consumer i fails, or None."""
    end = length if src_fail is None else min(length, src_fail)
    best = None
    for i, p in enumerate(fails):
        if p is not None and p <= end and (best is None or p < best[0]):
            best = (p, i)
    if src_fail is not None and src_fail < length and (best is None or src_fail < best[0]):
        return ("src",)
    return None if best is None else ("c", best[1])


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"w{w}")
def test_errors_random_against_model(aloop, window):
    rng = random.Random(1234 + (window or 0))
    cases = []
    for _ in range(40):
        length = rng.randrange(0, 30)
        src_fail = rng.choice([None, rng.randrange(0, 30)])
        n = rng.randrange(1, 5)
        fails = [rng.choice([None, rng.randrange(1, 30)]) for _ in range(n)]
        kinds = [rng.choice(["a", "s"] if SYNC_OK else ["a"]) for _ in range(n)]
        cases.append((length, src_fail, fails, kinds))

    async def one(length, src_fail, fails, kinds):
        consumers = []
        for i, (p, k) in enumerate(zip(fails, kinds)):
            if p is None:
                consumers.append(alist if k == "a" else list)
            else:
                consumers.append((afail_at if k == "a" else sfail_at)(p, i))
        src = Counted(length, fail=src_fail, sleepy=rng.random() < 0.3)
        try:
            r = await lockstep.arun(src, *consumers, window=window)
        except Boom as e:
            return ("src",) if e.args[0] == "src" else ("c", e.args[0]), e
        return None, r

    async def main():
        return [await one(*c) for c in cases]
    for case, (got, detail) in zip(cases, run_loop(aloop, main)):
        want = model(case[0], case[1], case[2])
        assert got == want, (case, detail)
        if want is None:
            end = case[0] if case[1] is None else min(case[0], case[1])
            assert all(x == list(range(end)) for x in detail if x != "done"), case
        else:
            assert detail.__traceback__ is not None


def test_error_cancels_others_and_runs_finally(aloop):
    log = []

    async def guarded(it):
        try:
            async for _ in it:
                pass
            log.append(("ended", it.active))
        finally:
            log.append("finally")
        return "x"

    async def main():
        with pytest.raises(Boom):
            await lockstep.arun(agen(100), guarded, afail_at(10), window=4)
    run_loop(aloop, main)
    assert log == [("ended", True), "finally"]


# --- Cancellation from outside --------------------------------------------

def _no_warning(record):
    bad = [w for w in record if "never awaited" in str(w.message) or
           "destroyed" in str(w.message)]
    assert not bad, [str(w.message) for w in bad]


@pytest.mark.parametrize("loopname", ["asyncio", "uvloop"])
@pytest.mark.parametrize("seed", range(6))
def test_cancel_asyncio_random_points(seed, loopname):
    rng = random.Random(seed)
    log = []
    src = Counted(sleepy=rng.random() < 0.5)

    async def sleepy(it):
        try:
            async for _ in it:
                await asyncio.sleep(0)
        finally:
            log.append("sleepy")

    async def plain(it):
        try:
            async for _ in it:
                pass
        finally:
            log.append("plain")

    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
        consumers = [sleepy, plain] + ([sum] if SYNC_OK else [])
        task = asyncio.ensure_future(lockstep.arun(src, *consumers, window=rng.choice(WINDOWS)))
        for _ in range(rng.randrange(1, 40)):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert errors == []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run_loop(loopname, main)
        gc.collect()
    _no_warning(record)
    assert sorted(log) == ["plain", "sleepy"]
    assert not src.closed


def test_wait_for_timeout():
    done = []

    async def slow(it):
        try:
            async for _ in it:
                await asyncio.sleep(0.001)
        finally:
            done.append(True)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lockstep.arun(itertools.count(), slow, asum), 0.05)
    asyncio.run(main())
    assert done == [True]


@pytest.mark.parametrize("seed", range(6))
def test_cancel_trio_random_points(seed):
    trio = _need("trio")
    rng = random.Random(seed)
    log = []

    async def sleepy(it):
        try:
            async for _ in it:
                await trio.sleep(0)
        finally:
            log.append("sleepy")

    async def main():
        with trio.move_on_after(rng.random() * 0.02) as scope:
            await lockstep.arun(Counted(sleepy=True), sleepy, asum, window=rng.choice(WINDOWS))
        assert scope.cancelled_caught
    trio.run(main)
    assert log == ["sleepy"]


def test_cancel_while_loop_turn():
    """Cancelled while arun gave the loop a turn (nothing foreign awaited)."""
    async def main():
        task = asyncio.ensure_future(lockstep.arun(itertools.count(), asum))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(main())


# --- The loop keeps turning -----------------------------------------------

def test_loop_keeps_turning(aloop):
    """Nothing foreign is awaited, yet a sibling's timer fires: the
    consumer stops the infinite run when it sees the flag."""
    flag = []

    async def until_flag(it):
        async for x in it:
            if flag:
                return x > 0

    async def main():
        if aloop == "trio":
            import trio

            async def timer():
                await trio.sleep(0.005)
                flag.append(1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(timer)
                return await lockstep.arun(itertools.count(), until_flag)
        async def timer():
            await asyncio.sleep(0.005)
            flag.append(1)
        t = asyncio.ensure_future(timer())
        r = await lockstep.arun(itertools.count(), until_flag)
        await t
        return r
    assert run_loop(aloop, main) == (True,)


# --- Nesting --------------------------------------------------------------

def test_nested_arun(aloop):
    async def inner(it):
        # A pipeline: the inner run's source is this consumer's own iterator.
        return await lockstep.arun(it, asum, amax, window=3)

    async def independent(it):
        r = await lockstep.arun(agen(10), asum)
        return r[0] + await asum(it)

    async def main():
        return await lockstep.arun(agen(50, sleepy=True), inner, independent, window=4)
    assert run_loop(aloop, main) == ((1225, 49), 45 + 1225)


@pytest.mark.skipif(not SYNC_OK, reason="synchronous consumers need greenlet")
def test_run_inside_sync_consumer(aloop):
    def nested(it):
        return lockstep.run(range(10), sum, max) + (sum(it),)

    def pipeline(it):
        # The inner run's source is this sync consumer's own iterator.
        return lockstep.run(it, sum, max, window=3)

    async def main():
        return await lockstep.arun(agen(20), nested, asum, pipeline, window=4)
    assert run_loop(aloop, main) == ((45, 9, 190), 190, (190, 19))


# --- contextvars ------------------------------------------------------------

VAR = contextvars.ContextVar("VAR", default="unset")


def test_contextvars(aloop):
    seen = []

    async def setter(it):
        VAR.set("consumer")
        async for _ in it:
            seen.append(("setter", VAR.get()))
        return VAR.get()

    async def reader(it):
        async for _ in it:
            seen.append(("reader", VAR.get()))
        return VAR.get()

    def sync_reader(it):
        for _ in it:
            seen.append(("sync", VAR.get()))
        return VAR.get()

    async def source():
        for i in range(3):
            seen.append(("source", VAR.get()))
            yield i

    async def main():
        VAR.set("task")
        cs = [setter, reader] + ([sync_reader] if SYNC_OK else [])
        r = await lockstep.arun(source(), *cs, window=1)
        return r, VAR.get()
    r, after = run_loop(aloop, main)
    assert r[:2] == ("consumer", "task") and after == "task"
    if SYNC_OK:
        assert r[2] == "task"
    for who, v in seen:
        assert v == ("consumer" if who == "setter" else "task"), (who, v)


# --- Misuse ---------------------------------------------------------------

def test_bad_arguments_raise_before_reading():
    src = Counted(10)

    async def agenfn(it):
        yield 1
    for args, kw, exc in [((src, 42), {}, TypeError),
                          ((src, agenfn), {}, TypeError),
                          ((42, asum), {}, TypeError),
                          ((src, asum), {"window": 0}, ValueError),
                          ((src, asum), {"engine": "thread"}, ValueError),
                          ((src, asum), {"engine": "nope"}, ValueError)]:
        with pytest.raises(exc) as e:
            lockstep.arun(*args, **kw)
        if kw.get("engine") == "thread":
            assert "to_thread" in str(e.value)
    assert src.pulls == 0


def test_consumer_returning_async_generator(aloop):
    import functools

    async def agenfn(it, k):
        yield k

    async def main():
        with pytest.raises(TypeError, match="async generator"):
            await lockstep.arun(agen(5), asum, functools.partial(agenfn, k=1))
    run_loop(aloop, main)


def test_iterator_after_run_and_from_another_task():
    kept = []

    async def keeper(it):
        kept.append(it)
        return await asum(it)

    async def thief(it):
        kept.append(it)
        other = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="outside its own consumer"):
            await other
        return await asum(it)

    async def main():
        r = await lockstep.arun(agen(10), keeper, thief, window=2)
        with pytest.raises(RuntimeError, match="after its consumer returned"):
            await kept[0].__anext__()
        with pytest.raises(RuntimeError):
            next(kept[1])
        return r
    assert asyncio.run(main()) == (45, 45)


def test_sync_read_in_async_consumer_raises(aloop):
    async def wrong(it):
        return sum(it)

    async def main():
        with pytest.raises(RuntimeError, match="async for"):
            await lockstep.arun(agen(3), wrong)
    run_loop(aloop, main)


def test_arun_awaited_twice():
    async def main():
        aw = lockstep.arun(range(3), asum)
        assert await aw == (3,)
        with pytest.raises(RuntimeError, match="reuse"):
            await aw
    asyncio.run(main())


def test_never_awaited_warns():
    with pytest.warns(RuntimeWarning, match="never awaited"):
        lockstep.arun(range(3), asum)
        gc.collect()


def test_without_greenlet_sync_consumer_raises():
    """With greenlet unimportable, a sync consumer's first next() raises a
    RuntimeError naming greenlet and asyncio.to_thread; async consumers and
    the buffer engine still work."""
    code = r"""
import sys; sys.modules["greenlet"] = None
import asyncio, lockstep
async def asum(it):
    s = 0
    async for x in it: s += x
    return s
async def main():
    try:
        await lockstep.arun(range(10), asum, sum)
    except RuntimeError as e:
        assert "greenlet" in str(e) and "asyncio.to_thread" in str(e), e
    else:
        raise AssertionError("no RuntimeError")
    assert await lockstep.arun(range(10), asum, lambda it: 7) == (45, 7)
    assert await lockstep.arun(range(10), asum, sum, engine="buffer") == (45, 45)
    try:
        lockstep.arun(range(10), asum, engine="greenlet")
    except ImportError:
        pass
    else:
        raise AssertionError("engine='greenlet' accepted without greenlet")
asyncio.run(main())
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=lockstep_path())
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.skipif(SYNC_OK, reason="synchronous consumers run here (greenlet's C API)")
def test_sync_consumer_raises_where_greenlet_cannot_run_it():
    """Where greenlet's C API is missing (PyPy, whose own greenlet has none,
    or greenlet not installed), a sync consumer's first next() raises the
    documented RuntimeError, its finally runs, and async consumers beside it
    and the buffer engine still work."""
    seen = []

    def ssum(it):
        try:
            return sum(it)
        finally:
            seen.append("finally")

    async def main():
        with pytest.raises(RuntimeError, match="greenlet") as e:
            await lockstep.arun(range(10), asum, ssum)
        assert "asyncio.to_thread" in str(e.value)
        assert await lockstep.arun(range(10), asum, ssum, engine="buffer") == (45, 45)
        return await lockstep.arun(range(10), asum, lambda it: 7)
    assert asyncio.run(main()) == (45, 7)
    assert seen == ["finally", "finally"]


def test_help_reads_well():
    doc = lockstep.arun.__doc__
    assert "async for" in doc and "trio" in doc and "cancel" in doc
    assert lockstep.AsyncIterator.__doc__
