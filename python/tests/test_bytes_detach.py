"""test_bytes_detach.py: closing a run_bytes Reader detaches its consumer at once.

A consumer that closes its reader and goes on computing no longer holds
the window: the other consumers and the source go on without it (on the
thread engine it waits here until another consumer has read the whole
stream, which would never happen if it still held the window).  Reads
after closing see the end, a failure raised after closing ranks at the
byte where the reader was closed (as if the consumer had returned there),
and the detach path leaks nothing.
"""
import hashlib
import threading

import pytest

import lockstep
from conftest import Boom
from test_leaks import assert_flat

DATA = bytes(range(256)) * 512  # 128 KiB: many windows of 4096 bytes


def chunked(data, size=1000):
    return [data[i:i + size] for i in range(0, len(data), size)]


def closer(stop, engine, other_done, exc=None, seen=None):
    """Reads stop bytes, closes its reader, then (thread engine) waits for
    the other consumer to finish before returning or raising exc."""
    def consumer(f):
        got = f.read(stop)
        handle = f._h
        f.close()
        if seen is not None:
            seen.append((handle.take(5), handle.peek(), handle.detach()))
        if engine == "thread":
            assert other_done.wait(60), "the closed reader still held the window"
        if exc is not None:
            raise exc
        return len(got)
    return consumer


def reader_then(other_done, exc=None, stop=-1):
    def consumer(f):
        data = f.read(stop)
        other_done.set()
        if exc is not None:
            raise exc
        return hashlib.sha256(data).hexdigest()
    return consumer


@pytest.mark.parametrize("window", [1, 4096, None], ids=lambda w: f"w{w}")
def test_closed_reader_no_longer_holds_the_window(engine, window):
    data = DATA if window != 1 else DATA[:5000]
    done = threading.Event()
    seen = []
    assert lockstep.run_bytes(chunked(data), closer(10, engine, done, seen=seen),
                              reader_then(done), window=window, engine=engine) == (
        10, hashlib.sha256(data).hexdigest())
    # After close: the end (b''), not cancellation, and detach is idempotent.
    assert seen == [(b"", b"", True)]


@pytest.mark.parametrize("closed_at, winner", [(10, "closed at 10"), (2000, "at 1000")])
@pytest.mark.parametrize("window", [1, 4096, None], ids=lambda w: f"w{w}")
def test_failure_after_close_ranks_where_it_closed(engine, window, closed_at, winner):
    """It raises after the other consumer failed at byte 1000: it still
    wins when it closed before byte 1000, as a consumer returning there."""
    done = threading.Event()
    with pytest.raises(Boom) as e:
        lockstep.run_bytes(chunked(DATA), closer(closed_at, engine, done, Boom(f"closed at {closed_at}")),
                           reader_then(done, Boom("at 1000"), stop=1000),
                           window=window, engine=engine)
    assert e.value.args == (winner,)


def test_detach_outside_its_consumer_is_a_noop(engine):
    kept = []
    lockstep.run_bytes([b"abc"], lambda f: kept.append(f), engine=engine)
    reader = kept[0]
    assert reader.closed  # closed when its consumer returned
    assert reader._h.detach() is False
    reader.close()  # again, after the run: nothing happens


def close_round(engine, _k):
    done = threading.Event()
    done.set()  # nothing to wait for: leaks only
    try:
        lockstep.run_bytes([b"x" * 300] * 3, closer(7, "-", done, Boom("c")),
                           lambda f: f.read(), window=64, engine=engine)
    except Boom:
        pass
    lockstep.run_bytes([b"y" * 300], closer(3, "-", done), lambda f: f.read(5),
                       window=16, engine=engine)


def test_no_leaks_when_closing(engine):
    assert_flat(close_round, engine, 200, 10_000 if engine != "thread" else 2_000)


# --- Review of run_bytes' edges (not about detaching) --------------------

class NonBlocking:
    """A non-blocking source with no data yet: readinto returns None."""

    def readinto(self, b):
        return None


def test_non_blocking_source_is_refused(engine):
    with pytest.raises(BlockingIOError, match="returned None"):
        lockstep.run_bytes(NonBlocking(), lambda f: f.read(), engine=engine)


@pytest.mark.parametrize("window", [0, -1, 1 << 62])
def test_bad_windows(engine, window):
    with pytest.raises(ValueError, match="window"):
        lockstep.run_bytes([b"abc"], lambda f: f.read(), window=window, engine=engine)


def test_nested_run_bytes_in_a_consumer(engine):
    def nested(f):
        head = f.read(3)
        return lockstep.run_bytes([b"xyz"], lambda g: head + g.read(), engine=engine)

    def pipeline(f):  # the inner run's source is the outer consumer's reader
        return lockstep.run_bytes(f, lambda g: g.read(), lambda g: g.read(2), engine=engine)

    data = b"abcdef" * 1000
    assert lockstep.run_bytes(chunked(data), nested, pipeline, lambda f: f.read(),
                              window=64, engine=engine) == (
        (b"abcxyz",), (data, b"ab"), data)
