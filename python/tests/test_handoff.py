"""test_handoff.py: the greenlet engine's direct hand-off and refill by consumer.

A consumer that has taken the window switches straight to the next live
consumer of the round, and in run() the consumer that ends a round calls the
source itself and begins the next round (rounds alternate direction).  So
the source runs in whichever consumer greenlet ends a round.  These tests
hold every engine to the same results (each consumer as if it had its own
copy of the data), and check what must not change for the source: its
exceptions are the producer's failure, it sees no consumer as current, the
caller's contextvars and no exception being handled, it may call
lockstep.run itself, and a nested run may use the enclosing consumer's
iterator as its source.  Greenlet switches are counted with
greenlet.settrace, so the saving is asserted without timing anything.
"""
import contextvars
import decimal
import itertools
import sys
import traceback

import pytest

import lockstep
from conftest import ENGINES, WINDOWS, Boom, fail_at

needs_greenlet = pytest.mark.skipif("greenlet" not in ENGINES, reason="greenlet unavailable")


def take(k):
    """A consumer that returns after k items: it finishes mid-round."""
    def consumer(it):
        return list(itertools.islice(it, k))
    consumer.__name__ = f"take{k}"
    return consumer


def py_sum_until(limit):
    """A Python-level consumer that returns once its running sum passes limit."""
    def consumer(it):
        total = 0
        for x in it:
            total += x
            if total > limit:
                return ("stopped", total)
        return ("ended", total)
    return consumer


def max_or_none(it):
    return max(it, default=None)


def alone(consumers, items):
    """What each consumer gives on its own copy of the data."""
    return tuple(c(iter(list(items))) for c in consumers)


# ---------------------------------------------------------------------------
# Results: every consumer as if alone, whoever finishes mid-round
# ---------------------------------------------------------------------------

ROSTERS = {
    "two": [sum, max_or_none],
    "three_one_stops": [sum, take(3), max_or_none],
    "four_stop_in_turn": [take(1), take(7), take(8), list],
    "stop_at_first_and_last": [take(0), sum, py_sum_until(500), take(13), max_or_none, take(2)],
    "python_consumers": [py_sum_until(10**9), py_sum_until(40), py_sum_until(1000)],
}


@pytest.mark.parametrize("roster", sorted(ROSTERS))
@pytest.mark.parametrize("n", [0, 1, 6, 7, 8, 50, 1030])
def test_results_match_each_consumer_alone(engine, window, roster, n):
    consumers = ROSTERS[roster]
    items = [(i * 37) % 101 for i in range(n)]
    got = lockstep.run(iter(items), *consumers, window=window, engine=engine)
    assert got == alone(consumers, items)


@pytest.mark.parametrize("w", [1, 7])
def test_consumers_finish_mid_round_in_both_directions(engine, w):
    # consumer k stops after k * 3 + 1 items: at window 1 rounds alternate
    # direction, so some stop while the round runs forward, others backward
    consumers = [take(k * 3 + 1) for k in range(6)] + [sum]
    items = list(range(100))
    assert lockstep.run(iter(items), *consumers, window=w, engine=engine) == alone(consumers, items)


@needs_greenlet
def test_many_consumers_do_not_nest_their_stacks():
    # Greenlets are started by the producer only: a greenlet started from
    # inside another lives below it on the C stack and inherits its
    # recursion depth, so starting each consumer from the previous one
    # would hit RecursionError at about a thousand consumers (and, with
    # deeper consumers, overflow the C stack).
    got = lockstep.run(iter(range(20)), *([sum] * 3000), window=1, engine="greenlet")
    assert got == (190,) * 3000


# ---------------------------------------------------------------------------
# Switches: what the hand-off saves (counted, not timed)
# ---------------------------------------------------------------------------

def count_switches(fn):
    import greenlet
    switches = []
    old = greenlet.settrace(lambda event, args: switches.append(event))
    try:
        result = fn()
    finally:
        greenlet.settrace(old)
    return len(switches), result


@needs_greenlet
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("w", [1, 7])
def test_switches_per_round(k, w):
    n = 700
    rounds = -(-n // w)
    consumers = [sum] * k

    # run(): a round costs k - 1 switches (the consumer that ends a round
    # refills the window and begins the next one); a lone consumer never
    # switches after it has started.
    switches, got = count_switches(
        lambda: lockstep.run(iter(range(n)), *consumers, window=w, engine="greenlet"))
    assert got == (sum(range(n)),) * k
    assert switches <= (k - 1) * rounds + 4 * k + 4, switches

    # Stream: the producer stays in charge, a round costs k + 1 switches
    # (producer, each consumer in turn, back to the producer), not 2k.
    def push_all():
        with lockstep.Stream(*consumers, window=w, engine="greenlet") as st:
            for x in range(n):
                st.push(x)
        return st.results
    switches, got = count_switches(push_all)
    assert got == (sum(range(n)),) * k
    assert switches <= (k + 1) * rounds + 4 * k + 4, switches


@needs_greenlet
def test_source_runs_in_the_consumer_that_ends_a_round():
    import greenlet
    where = []

    def source():
        for i in range(20):
            where.append(greenlet.getcurrent())
            yield i

    mine = []

    def consumer(it):
        mine.append(greenlet.getcurrent())
        return sum(it)

    producer = greenlet.getcurrent()
    assert lockstep.run(source(), consumer, consumer, window=1, engine="greenlet") == (190, 190)
    # the first window is filled by the producer, every other one by the
    # consumer that ended the round before it: rounds alternate direction
    # (the round at open ran forward, so the first with items runs 1, 0)
    assert where[0] is producer
    assert where[1:] == [mine[0], mine[1]] * 9 + [mine[0]]


# ---------------------------------------------------------------------------
# The source, now called from inside a consumer's greenlet
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0, 1, 6, 7, 8, 300])
def test_source_exception_is_the_runs_and_consumers_end_cleanly(engine, window, p):
    log = []

    def source():
        for i in range(1000):
            if i == p:
                raise Boom("src", p)
            yield i

    def careful(tag):
        def consumer(it):
            seen = 0
            try:
                for _ in it:  # cancelled: the loop just ends, no exception here
                    seen += 1
                log.append((tag, "ended", seen >= p))
            finally:
                log.append((tag, "finally"))
            return seen
        return consumer

    with pytest.raises(Boom) as info:
        lockstep.run(source(), careful("a"), careful("b"), careful("c"),
                     window=window, engine=engine)
    assert info.value.args == ("src", p)
    assert "source" in [f.name for f in traceback.extract_tb(info.tb)]
    want = [(t, "ended", True) for t in "abc"] + [(t, "finally") for t in "abc"]
    assert sorted(log) == sorted(want)
    assert sys.exc_info() == (None, None, None)
    assert lockstep.run(iter(range(10)), sum, max, window=window, engine=engine) == (45, 9)


@pytest.mark.parametrize("p", [1, 7, 8])
def test_source_exception_beats_later_consumer_failures(engine, window, p):
    def source():
        yield from range(p)
        raise Boom("src", p)

    with pytest.raises(Boom) as info:
        lockstep.run(source(), sum, fail_at(p + 1, "consumer"), sum, window=window, engine=engine)
    assert info.value.args == ("src", p)
    with pytest.raises(Boom) as info:
        lockstep.run(source(), sum, fail_at(p, "consumer"), sum, window=window, engine=engine)
    assert info.value.args == ("consumer", p)


def test_source_calls_lockstep_run(engine, window):
    rows = [list(range(i, i + 4)) for i in range(30)]

    def source():
        for row in rows:  # a nested run for every item, from inside the refill
            yield lockstep.run(iter(row), sum, max, window=window, engine=engine)

    got = lockstep.run(source(), list, lambda it: sum(s for s, _ in it), take(5),
                       window=window, engine=engine)
    want = [(sum(r), max(r)) for r in rows]
    assert got == (want, sum(s for s, _ in want), want[:5])


@pytest.mark.parametrize("inner_engine", ENGINES)
def test_nested_run_over_the_outer_iterator(engine, window, inner_engine):
    # The inner run's source is the enclosing consumer's iterator, which
    # works only in that consumer's own greenlet: the inner run must not
    # call it from its consumers' greenlets.
    def outer_direct(it):
        return lockstep.run(it, sum, max, window=window, engine=inner_engine)

    def outer_wrapped(it):
        return lockstep.run((x * 2 for x in it), sum, take(3), window=window,
                            engine=inner_engine)

    items = list(range(100))
    got = lockstep.run(iter(items), outer_direct, min, outer_wrapped, window=window, engine=engine)
    assert got == ((4950, 99), 0, (9900, [0, 2, 4]))


def test_source_sees_the_callers_contextvars(engine, window):
    var = contextvars.ContextVar("lockstep_test_var")

    def source():
        for i in range(20):
            yield (var.get(), decimal.Decimal(1) / decimal.Decimal(7))

    def collect(it):
        return [(v, str(d)) for v, d in it]

    token = var.set("caller's")
    try:
        with decimal.localcontext() as ctx:
            ctx.prec = 4
            got = lockstep.run(source(), collect, collect, window=window, engine=engine)
    finally:
        var.reset(token)
    assert got == ([("caller's", "0.1429")] * 20,) * 2


def test_source_sets_the_callers_contextvars(engine, window):
    var = contextvars.ContextVar("lockstep_test_counter")

    def source():
        for i in range(20):
            var.set(i)  # in the caller's context, as when the caller pulls
            yield i

    ctx = contextvars.copy_context()
    got = ctx.run(lambda: (lockstep.run(source(), sum, sum, window=window, engine=engine),
                           var.get()))
    assert got == ((190, 190), 19)


def test_source_sees_no_exception_being_handled(engine, window):
    seen = []

    def source():
        for i in range(30):
            seen.append(sys.exc_info()[1])
            yield i

    def in_except(it):
        try:
            raise KeyError("the consumer's own")
        except KeyError:
            return sum(it)  # the source runs while this is being handled

    assert lockstep.run(source(), in_except, in_except, window=window,
                        engine=engine) == (435, 435)
    assert seen == [None] * 30


@pytest.mark.parametrize("n_consumers", [1, 2, 3])
def test_source_may_not_use_a_consumers_iterator(bounded_engine, n_consumers):
    # At window 1 a lone greenlet consumer refills every window itself: even
    # its own iterator is refused inside the source, as it was when the
    # producer called the source.
    box = {}

    def source():
        for i in range(10):
            if i == 5:
                next(box["it"])
            yield i

    def consumer(it):
        box.setdefault("it", it)
        return sum(it)

    with pytest.raises(RuntimeError, match="outside its own consumer"):
        lockstep.run(source(), *([consumer] * n_consumers), window=1, engine=bounded_engine)


@needs_greenlet
@pytest.mark.parametrize("rogue_index", [0, 1, 2])
@pytest.mark.parametrize("w", [1, None])
def test_switching_to_the_producer_behind_locksteps_back(rogue_index, w):
    import greenlet
    caught = []

    def rogue(it):
        total = next(it)
        try:
            greenlet.getcurrent().parent.switch("not lockstep's")
        except RuntimeError as e:
            caught.append(str(e))
        return total + sum(it)

    consumers = [sum, sum, sum]
    consumers[rogue_index] = rogue
    got = lockstep.run(iter(range(100)), *consumers, window=w, engine="greenlet")
    assert got == (4950,) * 3
    assert len(caught) == 1 and "outside lockstep's control" in caught[0]


@pytest.mark.parametrize("w", WINDOWS, ids=lambda w: f"w{w}")
def test_infinite_source_pull_bound_with_refill_in_consumers(bounded_engine, w):
    counter = itertools.count()
    stops = [take(3), take(10), take(4)]
    got = lockstep.run(counter, *stops, window=w, engine=bounded_engine)
    assert got == alone(stops, range(10))
    window = w or lockstep.DEFAULT_WINDOWS[bounded_engine]
    assert next(counter) <= 10 + window - 1


def test_stream_keeps_the_producer_in_charge(engine, window):
    # Stream has no source to call: hand-off only, results as run()'s.
    consumers = [sum, take(5), max, take(50)]
    items = list(range(200))
    with lockstep.Stream(*consumers, window=window, engine=engine) as st:
        for x in items:
            st.push(x)
    assert st.results == alone(consumers, items)


@needs_greenlet
@pytest.mark.parametrize("w", [1, 7])
def test_iterator_from_a_greenlet_inside_its_consumer_raises(w):
    # Only the consumer's own greenlet may wait for the window to move:
    # from any other, even one the consumer started, the slow path raises
    # rather than switch lockstep's greenlets from the wrong one.
    import greenlet
    caught = []

    def consumer(it):
        first = list(itertools.islice(it, w))  # takes the whole first window

        def inner():
            try:
                next(it)
            except RuntimeError as e:
                caught.append(str(e))
        greenlet.greenlet(inner).switch()
        return sum(first) + sum(it)

    got = lockstep.run(iter(range(100)), consumer, sum, window=w, engine="greenlet")
    assert got == (4950, 4950)
    assert len(caught) == 1 and "outside its own consumer" in caught[0]


@needs_greenlet
@pytest.mark.parametrize("w", [1, 2, None])
def test_what_reaches_the_producer_during_a_refill_goes_to_the_source(w):
    # The source used to run in the caller's greenlet; now it may run in a
    # consumer's, which stands in for the caller meanwhile: a switch to the
    # caller's greenlet returns to the source as a switch to the current
    # greenlet would, and an exception thrown at the caller (as a
    # gevent.Timeout would be) is raised in the source.
    import greenlet
    caller = greenlet.getcurrent()
    echoes = []

    def echoing():
        for i in range(600):
            echoes.append(caller.switch(("echo", i)))
            yield i

    got = lockstep.run(echoing(), sum, max, window=w, engine="greenlet")
    assert got == (sum(range(600)), 599)
    assert echoes == [("echo", i) for i in range(600)]

    def thrown_at_caller():
        for i in range(600):
            if i == 300:
                caller.throw(Boom("thrown at the caller", i))
            yield i

    seen = []

    def record(it):
        for x in it:
            seen.append(x)
        return "cancelled"

    with pytest.raises(Boom) as info:
        lockstep.run(thrown_at_caller(), record, sum, window=w, engine="greenlet")
    assert info.value.args == ("thrown at the caller", 300)
    assert seen[:300] == list(range(300))
