"""test_async_leaks.py: 10**4 lockstep.arun runs leave nothing behind.

Runs that succeed, fail in a consumer or in the source, are cancelled from
outside, are closed half-way (dropped while suspended), nest, and mix sync
and async consumers, all on one asyncio loop: object counts, the refcounts
of items and results, and traced memory stay flat (test_leaks.assert_flat).
"""
import asyncio

import pytest

import lockstep

from conftest import HAVE_GREENLET, Boom
from test_leaks import ITEM, RESULT, RUNS, assert_flat


async def agen(n, fail=None, sleepy=False):
    for i in range(n):
        if i == fail:
            raise Boom("src")
        if sleepy:
            await asyncio.sleep(0)
        yield ITEM


async def alist(it):
    return [x async for x in it]


async def fails_at_3(it):
    i = 0
    async for _ in it:
        i += 1
        if i == 3:
            raise Boom()


async def sleepy(it):
    try:
        async for _ in it:
            await asyncio.sleep(0)
    finally:
        pass
    return RESULT


async def nested(it):
    return await lockstep.arun(it, alist, window=2)


async def one_async(kind):
    sync = list if HAVE_GREENLET else alist
    try:
        if kind == 0:
            await lockstep.arun(agen(20), alist, lambda it: RESULT, sync, window=3)
        elif kind == 1:
            await lockstep.arun(agen(20), alist, fails_at_3, sync, window=1)
        elif kind == 2:
            await lockstep.arun(agen(20, fail=7, sleepy=True), alist, sleepy, window=4)
        elif kind == 3:
            task = asyncio.ensure_future(lockstep.arun(agen(50, sleepy=True), sleepy, alist,
                                                       sync, window=2))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        elif kind == 4:
            aw = lockstep.arun(iter([ITEM] * 30), sleepy, sync, alist, window=2)
            aw.send(None)  # suspended on a consumer's sleep(0) ...
            aw.close()     # ... and closed there
        elif kind == 5:
            await lockstep.arun(agen(20), nested, alist, engine="buffer")
        else:
            await lockstep.arun(iter([ITEM] * 20), sleepy, alist, sync, window=5)
    except Boom:
        pass


@pytest.mark.parametrize("runs", [RUNS])
def test_no_leaks_arun(runs):
    loop = asyncio.new_event_loop()
    try:
        assert_flat(lambda engine, k: loop.run_until_complete(one_async(k % 7)), None, 200, runs)
    finally:
        loop.close()
