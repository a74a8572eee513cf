"""test_early_exit.py: consumers that stop early, and the pull bound.

A consumer that returns early detaches while the others go on; once every
consumer has returned, at most window-1 further items have been pulled
from the source (engines that keep the bound: greenlet, thread); the source
iterator is left as it is, never closed.
"""
import itertools

import pytest

import lockstep


class Counting:
    """An iterator over range(n) (or forever) that counts pulls and closes."""

    def __init__(self, n=None):
        self.n = n
        self.pulled = 0
        self.closed = False

    def __iter__(self):
        return self

    def __next__(self):
        if self.n is not None and self.pulled >= self.n:
            raise StopIteration
        self.pulled += 1
        return self.pulled - 1

    def close(self):
        self.closed = True


def take(k):
    def consumer(it):
        return list(itertools.islice(it, k))
    return consumer


def test_infinite_source_terminates(bounded_engine, window):
    assert lockstep.run(itertools.count(), any, lambda it: next(it),
                        window=window, engine=bounded_engine) == (True, 0)


def test_detached_consumer_lets_others_go_on(engine, window):
    got = lockstep.run(iter(range(100)), take(3), sum, lambda it: next(it), window=window,
                       engine=engine)
    assert got == ([0, 1, 2], 4950, 0)


@pytest.mark.parametrize("w", [1, 2, 3, 7, 64, None])
@pytest.mark.parametrize("stops", [(0,), (5,), (5, 17), (17, 5), (100, 3, 250)])
def test_pull_bound(bounded_engine, w, stops):
    src = Counting()
    got = lockstep.run(src, *[take(k) for k in stops], window=w, engine=bounded_engine)
    assert got == tuple(list(range(k)) for k in stops)
    window = w or lockstep.DEFAULT_WINDOWS[bounded_engine]
    # islice(it, k) asks for k items; the last consumer stops after max(stops).
    assert max(stops) <= src.pulled <= max(stops) + window - 1
    assert not src.closed


def test_all_consumers_return_at_once_reads_nothing(bounded_engine):
    src = Counting()
    assert lockstep.run(src, lambda it: 1, lambda it: 2, engine=bounded_engine) == (1, 2)
    assert src.pulled == 0


def test_source_not_closed_on_early_exit(bounded_engine, window):
    def gen():
        try:
            yield from itertools.count()
        finally:
            state.append("closed")
    state = []
    g = gen()
    assert lockstep.run(g, lambda it: next(it), window=window, engine=bounded_engine) == (0,)
    assert state == []
    assert next(g) >= 1  # still usable where the run left it
    g.close()
    assert state == ["closed"]


def test_source_left_where_it_was(bounded_engine):
    src = iter(range(100))
    lockstep.run(src, take(10), window=1, engine=bounded_engine)
    assert next(src) == 10


def test_stream_live_drops_to_zero(engine):
    with lockstep.Stream(take(3), take(5), window=1, engine=engine) as st:
        lives = [st.push(i) for i in range(10)]
    assert st.results == ([0, 1, 2], [0, 1, 2, 3, 4])
    assert st.live == 0
    assert lives == sorted(lives, reverse=True)
    if engine == "greenlet":  # consumers have run when push returns
        assert lives == [2, 2, 1, 1, 0, 0, 0, 0, 0, 0]
    elif engine == "buffer":  # consumers run only at close
        assert lives == [2] * 10
