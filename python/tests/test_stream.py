"""test_stream.py: the push side, lockstep.Stream, beyond plain results.

Failures inside and outside the with block, fail(), the outcome rules
(the earliest failure wins, as in run()), and a stream dropped unclosed.
"""
import gc
import warnings

import pytest

import lockstep
from conftest import Boom, fail_at


def summing_logged(log):
    """A consumer that sums, and logs "finally" however it ends."""
    def careful(it):
        try:
            return sum(it)
        finally:
            log.append("finally")
    return careful


def test_consumer_failure_raised_at_exit(engine, window):
    with pytest.raises(Boom, match="consumer"):
        with lockstep.Stream(sum, fail_at(5, "consumer"), window=window, engine=engine) as st:
            st.extend(range(100))
    assert st.closed
    with pytest.raises(RuntimeError):
        st.results


def test_body_exception_propagates_and_cancels(engine, window):
    log = []

    with pytest.raises(KeyError):
        with lockstep.Stream(summing_logged(log), window=window, engine=engine) as st:
            st.extend(range(10))
            raise KeyError("body")
    assert log == ["finally"]


def test_earlier_consumer_failure_beats_body_exception(engine):
    with pytest.raises(Boom) as info:
        with lockstep.Stream(fail_at(3, "consumer"), window=1, engine=engine) as st:
            st.extend(range(10))
            raise KeyError("body")
    assert isinstance(info.value.__context__, KeyError) or info.value.__context__ is None


def test_fail_method(engine):
    st = lockstep.Stream(sum, list, engine=engine)
    st.extend(range(5))
    st.fail(Boom("producer"))
    assert st.live == 0
    with pytest.raises(RuntimeError):
        st.fail(Boom("again"))
    with pytest.raises(Boom, match="producer"):
        st.close()
    with pytest.raises(TypeError):
        lockstep.Stream(sum, engine=engine).fail("not an exception")


def test_extend_error_propagates_and_stream_stays_open(engine):
    def bad():
        yield 1
        raise Boom("iterable")

    st = lockstep.Stream(sum, engine=engine)
    with pytest.raises(Boom):
        st.extend(bad())
    st.push(2)
    assert st.close() == (3,)


def test_unclosed_stream_is_cancelled_on_drop(engine):
    log = []

    st = lockstep.Stream(summing_logged(log), engine=engine)
    st.extend(range(10))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        del st
        gc.collect()
    assert log == ["finally"]
    assert any(issubclass(x.category, ResourceWarning) for x in w)


def test_repr(engine):
    st = lockstep.Stream(sum, engine=engine, window=4)
    assert f"engine={engine}" in repr(st) and "window=4" in repr(st)
    st.close()
    assert "closed" in repr(st)
